"""Audit chains for the ingest tests: written by corral's real local store, or generated with
corral's own hash function (for volume and for property tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from corral.audit.events import GENESIS, canonical_json, event_body, event_hash

COLS = "seq, ts_us, type, actor, data, v, prev, hash"


def local_chain(path: Path, sandbox: str, n: int) -> list[dict[str, Any]]:
    """``n`` events (plus trail.close) written by the real ``AuditStore``, as shipped."""
    from corral.audit import Actor, AuditStore

    store = AuditStore.open(path)
    trail = store.trail(sandbox, actor=Actor.current(identity="alice@example.com"))
    for i in range(n):
        if i % 2:
            trail.emit("proxy.deny", host=f"h{i}.example", rule="p.yaml:3", method="GET",
                       path="/é\u2028x")
        else:
            trail.emit("credential.inject", binding="github", host="api.github.com")
    trail.close(status="exit 0")
    store.close()
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute(f"SELECT {COLS} FROM events WHERE sandbox=? "
                                         "ORDER BY seq", (sandbox,))]
    con.close()
    return [{**{k: r[k] for k in r if k != "ts_us"}, "ts": r["ts_us"]} for r in rows]


def make_chain(sandbox: str, n: int, *, start: int = 1, prev: str = GENESIS,
               payload: str = "x") -> list[dict[str, Any]]:
    out = []
    actor = canonical_json({"identity": "alice@example.com", "uid": 0, "user": "root"})
    for seq in range(start, start + n):
        data = canonical_json({"host": f"{payload}{seq}.example", "rule": "p.yaml:3"})
        ts = 1_700_000_000_000_000 + seq
        h = event_hash(event_body(actor=actor, data=data, prev=prev, sandbox=sandbox, seq=seq,
                                  ts=ts, type_="proxy.deny", v=1))
        out.append({"seq": seq, "ts": ts, "type": "proxy.deny", "actor": actor, "data": data,
                    "v": 1, "prev": prev, "hash": h})
        prev = h
    return out
