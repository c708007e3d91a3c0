"""Verify every sandbox chain and the ledger; name the first broken link.

The fast pass reads events once in insertion order (``id``) keeping each chain's last hash in
memory, recomputing every hash from the stored columns (no JSON parsing). Only a chain that
fails is read again, ordered by ``seq``, to say *how* it broke: an edited event (its content no
longer matches its hash), deleted events (a gap in seq), an inserted event (a duplicate seq, a
row that does not link, or later rows renumbered around it), or reordered events (a row whose
hash belongs to another position). Each chain's head is checked against the ``chains`` table and,
for closed chains, against the closing hash recorded in the ledger; the ledger is a chain of its
own, and ``expected_head`` (from ``corral audit head``, recorded elsewhere) must be in it.

A hash chain without a key cannot stop someone with write access from rewriting a whole chain
consistently; that is what recording the ledger head outside the machine is for.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from corral.audit.db import ledger_body
from corral.audit.events import GENESIS, event_body, event_hash

__all__ = ["VerifyResult", "verify"]


@dataclass
class VerifyResult:
    ok: bool = True
    events: int = 0
    chains: int = 0
    ledger: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.ok = False
        self.problems.append(message)


_Row = tuple[int, str, int, int, str, str, str, str, str, int]
_COLS = "id, sandbox, seq, ts_us, type, actor, data, prev, hash, v"


def _rehash(r: _Row, seq: int | None = None) -> str:
    return event_hash(
        event_body(
            actor=r[5],
            data=r[6],
            prev=r[7],
            sandbox=r[1],
            seq=r[2] if seq is None else seq,
            ts=r[3],
            type_=r[4],
            v=r[9],
        )
    )


def verify(con: sqlite3.Connection, expected_head: str | None = None) -> VerifyResult:
    """Check everything in one read transaction: one consistent snapshot while others write."""
    own = not con.in_transaction
    if own:
        con.execute("BEGIN")
    try:
        return _verify(con, expected_head)
    finally:
        if own and con.in_transaction:
            con.execute("ROLLBACK")


def _verify(con: sqlite3.Connection, expected_head: str | None) -> VerifyResult:
    res = VerifyResult()
    state: dict[str, list[object]] = {}  # sandbox -> [last hash, last seq]
    bad: dict[str, None] = {}
    sha = hashlib.sha256
    last_id = 0
    try:
        for r in con.execute(f"SELECT {_COLS} FROM events ORDER BY id"):
            last_id = r[0]
            res.events += 1
            sb = r[1]
            st = state.get(sb)
            if st is None:
                st = state[sb] = [GENESIS, 0]
            elif sb in bad:
                continue
            body = (
                f'{{"actor":{r[5]},"data":{r[6]},"prev":"{r[7]}","sandbox":"{sb}",'
                f'"seq":{r[2]},"ts":{r[3]},"type":"{r[4]}","v":{r[9]}}}'
            )
            if r[2] != st[1] + 1 or r[7] != st[0] or sha(body.encode()).hexdigest() != r[8]:  # type: ignore[operator]
                bad[sb] = None
                continue
            st[0], st[1] = r[8], r[2]
    except sqlite3.DatabaseError as err:
        res.fail(f"database corrupted after event id {last_id}: {err}")
    for sb in bad:
        res.fail(_diagnose(con, sb))

    chains = _verify_chains(con, res, state, bad)
    _verify_ledger(con, res, {c[0]: c for c in chains}, state, expected_head)
    return res


def _verify_chains(
    con: sqlite3.Connection,
    res: VerifyResult,
    state: dict[str, list[object]],
    bad: dict[str, None],
) -> list[Any]:
    """Each recorded chain head against where its events ended; the chains rows."""
    try:
        chains = con.execute(
            "SELECT sandbox, last_seq, last_hash, closed_us, ledger_seq, pruned FROM chains"
        ).fetchall()
    except sqlite3.DatabaseError as err:
        res.fail(f"chains table unreadable: {err}")
        chains = []
    res.chains = len(chains)
    known = set()
    for sb, last_seq, last_hash, _closed, _lseq, pruned in chains:
        known.add(sb)
        if sb in bad or pruned:
            continue
        got_hash, got_seq = state.get(sb, [GENESIS, 0])
        if got_seq < last_seq:
            res.fail(
                f"sandbox {sb}: events seq {got_seq + 1}..{last_seq} deleted "  # type: ignore[operator]
                f"(the chain head records seq {last_seq})"
            )
        elif got_seq > last_seq:
            res.fail(
                f"sandbox {sb}: events seq {last_seq + 1}..{got_seq} inserted after the "
                f"recorded chain head (seq {last_seq})"
            )
        elif got_hash != last_hash:
            res.fail(f"sandbox {sb}: chain head hash does not match its last event")
    for sb in state:
        if sb not in known:
            res.fail(f"sandbox {sb}: events inserted for a chain that was never opened")
    return chains


def _verify_ledger(
    con: sqlite3.Connection,
    res: VerifyResult,
    chains: dict[str, tuple[object, ...]],
    state: dict[str, list[object]],
    expected_head: str | None,
) -> None:
    prev, want_seq = GENESIS, 1
    hashes = {GENESIS}
    try:
        rows = con.execute(
            "SELECT seq, ts_us, sandbox, count, chain_hash, prev, hash FROM ledger ORDER BY seq"
        ).fetchall()
    except sqlite3.DatabaseError as err:
        res.fail(f"ledger unreadable: {err}")
        rows = []
    for seq, ts, sb, count, chain_hash, lprev, lhash in rows:
        res.ledger += 1
        if seq != want_seq or lprev != prev:
            res.fail(
                f"ledger entry {seq} (sandbox {sb}): does not link to entry {want_seq - 1} "
                "(ledger entries deleted, inserted or reordered)"
            )
            break
        if event_hash(ledger_body(seq, ts, sb, count, chain_hash, lprev)) != lhash:
            res.fail(
                f"ledger entry {seq} (sandbox {sb}) edited: its content does not match its hash"
            )
            break
        chain = chains.get(sb)
        if chain is None:
            res.fail(f"ledger entry {seq}: sandbox {sb} has no chain (chain deleted)")
        elif not chain[5] and state.get(sb, [GENESIS, 0])[0] != chain_hash:
            if state.get(sb, [GENESIS, 0])[1] == count:
                res.fail(f"sandbox {sb}: closing hash differs from ledger entry {seq}")
            elif not any(sb in p for p in res.problems):
                res.fail(
                    f"sandbox {sb}: chain does not end where ledger entry {seq} closed it "
                    f"(seq {count})"
                )
        elif chain[5] and chain[2] != chain_hash:
            res.fail(
                f"sandbox {sb} (pruned): recorded closing hash differs from ledger entry {seq}"
            )
        prev, want_seq = lhash, seq + 1
        hashes.add(lhash)
    res.head = prev
    if expected_head is not None and expected_head not in hashes:
        res.fail(
            f"expected ledger head {expected_head} is not in the ledger "
            "(the ledger was rewritten or truncated)"
        )


def _diagnose(con: sqlite3.Connection, sb: str) -> str:
    """Say how the chain of ``sb`` broke, naming the first broken event."""
    rows: list[_Row] = con.execute(
        f"SELECT {_COLS} FROM events WHERE sandbox=? ORDER BY seq, id", (sb,)
    ).fetchall()
    prev, seq, last_id = GENESIS, 0, 0
    accepted: list[_Row] = []
    for r in rows:
        name = f"sandbox {sb}: event id {r[0]} (seq {r[2]}, {r[4]})"
        self_ok = _rehash(r) == r[8]
        if r[2] <= seq:
            return f"{name} inserted: seq {r[2]} appears twice"
        if not self_ok:
            for s in range(1, len(rows) + 2):
                if s != r[2] and _rehash(r, s) == r[8]:
                    if s == r[2] - 1 and len(accepted) >= 2 and r[7] == accepted[-2][8]:
                        ins = accepted[-1]
                        return (
                            f"sandbox {sb}: event id {ins[0]} (seq {ins[2]}, {ins[4]}) "
                            "inserted: the events after it were renumbered"
                        )
                    return f"{name} reordered: it was written as seq {s}"
            return f"{name} edited: its content does not match its hash"
        if r[2] > seq + 1:
            return (
                f"sandbox {sb}: event(s) seq {seq + 1}..{r[2] - 1} deleted "
                f"(the chain jumps to event id {r[0]})"
            )
        if r[7] != prev:
            return f"{name} inserted or rewritten: it does not link to seq {seq}"
        if r[0] < last_id:
            return f"{name} reordered: stored before the event that precedes it"
        prev, seq, last_id = r[8], r[2], r[0]
        accepted.append(r)
    return f"sandbox {sb}: events stored out of order (reordered)"
