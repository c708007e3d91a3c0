"""Audit ingest on SQLite and PostgreSQL: a real local trail shipped in batches is stored
once (resends acknowledged, nothing duplicated), every hash is recomputed, a batch that breaks
the chain, skips or forges a seq, or rewrites an acknowledged event is refused and recorded
with the good trail untouched; ``audit/verify`` re-checks every chain and the ledger; and a
real server killed with SIGKILL mid-ingest keeps every acknowledged event exactly once."""

from __future__ import annotations

import copy
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from corral.client import Refused, ServerRun, ServerUnavailable
from tests.server.chains import local_chain, make_chain
from tests.server.conftest import Served

DIGEST = "cd" * 32


def _project(server: Served) -> str:
    owner = server.token()
    with server.client(owner) as c:
        assert c.post("/teams", json={"name": "web"}).status_code == 201
        assert c.post("/teams/web/projects", json={"name": "shop"}).status_code == 201
    return owner


def _run(server: Served, owner: str, sandbox: str = "sb-1") -> ServerRun:
    return ServerRun.register(server.url, owner, "shop", host="h", sandbox=sandbox,
                              policy_digest=DIGEST)


def _verify(server: Served, owner: str) -> dict[str, Any]:
    with server.client(owner) as c:
        return dict(c.get("/projects/shop/audit/verify").json())


def _stored(server: Served, run_id: str) -> list[tuple[int, str]]:
    from corral.server.db import Database
    from corral.server.models import AuditEvent

    db = Database(server.db_url)
    with db.session() as s:
        rows = [(e.seq, e.hash) for e in s.scalars(select(AuditEvent).where(
            AuditEvent.run_id == run_id).order_by(AuditEvent.seq))]
    db.dispose()
    return rows


def test_a_real_trail_ships_once_and_verifies(server: Served, tmp_path: Path) -> None:
    owner = _project(server)
    events = local_chain(tmp_path / "audit.db", "sb-1", 1200)
    run = _run(server, owner)
    assert run.cursor() == 0
    assert run.ship_events(events[:700]) == 700  # batches of 500 and 200
    assert run.ship_events(events[:700]) == 700  # resent: acknowledged, nothing added
    assert run.ship_events(events[650:]) == len(events)  # overlapping resend
    assert _stored(server, run.id) == [(e["seq"], e["hash"]) for e in events]
    run.end(0)
    report = _verify(server, owner)
    assert report["ok"] and report["problems"] == [], report
    assert report["events"] == len(events) and report["ledger"]["entries"] == 1
    assert report["heads"][run.id]["head"] == events[-1]["hash"]
    with server.client(owner) as c:
        listed = c.get("/projects/shop/audit?type=proxy.*&limit=5").json()["events"]
    assert [e["type"] for e in listed] == ["proxy.deny"] * 5
    assert listed[0]["data"]["path"] == "/é\u2028x" and listed[0]["human"] == "token:test-owner"


def _refusals(server: Served) -> list[dict[str, Any]]:
    from corral.server.db import Database
    from corral.server.models import AdminEvent

    db = Database(server.db_url)
    with db.session() as s:
        rows = [dict(e.detail) for e in s.scalars(select(AdminEvent).where(
            AdminEvent.action == "audit.refused").order_by(AdminEvent.id))]
    db.dispose()
    return rows


def test_bad_batches_are_refused_recorded_and_change_nothing(server: Served) -> None:
    owner = _project(server)
    run = _run(server, owner)
    chain = make_chain("sb-1", 20)
    assert run.ship_events(chain[:10]) == 10
    edited = copy.deepcopy(chain[10:15])
    edited[2]["data"] = edited[2]["data"].replace(".example", ".exampla")  # not its hash
    relinked = copy.deepcopy(chain[10:15])
    relinked[0]["prev"] = "f" * 64  # prev is hashed too: the content no longer matches
    unlinked = make_chain("sb-1", 5, start=11, prev="f" * 64)  # self-consistent, wrong link
    rewrite = copy.deepcopy(chain[5:12])
    rewrite[1] = make_chain("sb-1", 1, start=7, prev=chain[5]["hash"], payload="z")[0]
    forged = copy.deepcopy(chain[10:15])
    forged[3]["seq"] = 99
    other_sandbox = make_chain("sb-2", 15)[10:15]  # hashed for another sandbox's chain
    not_canonical = copy.deepcopy(chain[10:11])
    not_canonical[0]["data"] = '{"host": "x"}'
    # Decodable by json.loads but not encodable canonically (NaN, an out-of-range float), or
    # nested past the recursion limit: a refusal for the form, never a 500.
    unencodable = [copy.deepcopy(chain[10:11]) for _ in range(3)]
    for batch, data in zip(unencodable, ['{"a":NaN}', '{"a":1e400}',
                                         '{"a":' + "[" * 60000 + "]" * 60000 + "}"], strict=True):
        batch[0]["data"] = data
    cases = [(edited, 409, "hash"), (relinked, 409, "hash"), (unlinked, 409, "link"),
             (rewrite, 409, "rewrite"),
             (forged, 422, "seq"), (chain[12:15], 422, "gap"), (other_sandbox, 409, "hash"),
             (not_canonical, 422, "form")] + [(b, 422, "form") for b in unencodable]
    for batch, status, reason in cases:
        with pytest.raises(Refused) as err:
            run.ship_events(batch)
        assert err.value.status == status, (reason, err.value)
        assert _refusals(server)[-1]["reason"] == reason
        assert _stored(server, run.id) == [(e["seq"], e["hash"]) for e in chain[:10]]
    assert run.ship_events(chain[10:]) == 20  # the good continuation still goes in
    assert _verify(server, owner)["ok"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_ingest_accepts_exactly_the_true_continuations(server: Served, data: Any) -> None:
    """Differential: over generated mutations of a shipped batch (edit a field, drop, swap,
    duplicate, renumber, relink), the server accepts a batch iff a model of the chain says it
    is a true continuation (or a resend) of what is stored; a refusal stores nothing."""
    if not hasattr(server, "owner"):
        server.owner = _project(server)  # type: ignore[attr-defined]
    owner = server.owner  # type: ignore[attr-defined]
    run = _run(server, owner)
    chain = make_chain("sb-1", 12)
    stored = data.draw(st.integers(0, 8), "stored")
    if stored:
        run.ship_events(chain[:stored])
    lo = data.draw(st.integers(0, 11), "lo")
    hi = data.draw(st.integers(lo + 1, 12), "hi")
    batch = copy.deepcopy(chain[lo:hi])
    op = data.draw(st.sampled_from(["none", "edit", "drop", "swap", "dup", "seq", "prev",
                                    "ts", "type"]), "op")
    i = data.draw(st.integers(0, len(batch) - 1), "i")
    if op == "edit":
        batch[i]["data"] = batch[i]["data"].replace("rule", "rulf")
    elif op == "drop" and len(batch) > 1:
        del batch[i]
    elif op == "swap" and len(batch) > 1:
        j = (i + 1) % len(batch)
        batch[i], batch[j] = batch[j], batch[i]
    elif op == "dup":
        batch.insert(i, copy.deepcopy(batch[i]))
    elif op == "seq":
        batch[i]["seq"] += data.draw(st.sampled_from([-1, 1, 7]), "delta")
    elif op == "prev":
        batch[i]["prev"] = chain[(lo + i + 3) % 12]["hash"]
    elif op == "ts":
        batch[i]["ts"] += 1
    elif op == "type":
        batch[i]["type"] = "proxy.allow"
    truth = {e["seq"]: e for e in chain}
    genuine = all(truth.get(e["seq"]) == e for e in batch) and \
        [e["seq"] for e in batch] == list(range(batch[0]["seq"], batch[0]["seq"] + len(batch)))
    accepted_model = genuine and batch[0]["seq"] <= stored + 1
    try:
        acked = run.ship_events(batch)
        accepted = True
    except Refused:
        accepted = False
    assert accepted == accepted_model, (stored, lo, hi, op, i)
    want = max(stored, batch[-1]["seq"]) if accepted else stored
    if accepted:
        assert acked == want
    assert _stored(server, run.id) == [(e["seq"], e["hash"]) for e in chain[:want]]


def test_killed_mid_ingest_keeps_every_acknowledged_event_once(
        spawn_server: Any, db_url: str) -> None:
    from corral.server.db import Database
    from corral.server.models import AuditEvent

    url, proc = spawn_server(db_url)
    server = Served(url, db_url, Path())
    owner = _project(server)
    runs = [_run(server, owner, f"sb-{i}") for i in range(6)]
    chains = {r.id: make_chain(f"sb-{i}", 6000) for i, r in enumerate(runs)}
    acked = {r.id: 0 for r in runs}
    started = threading.Event()

    def ship(run: ServerRun) -> None:
        chain = chains[run.id]
        try:
            for lo in range(0, len(chain), 250):
                acked[run.id] = run.ship_events(chain[lo:lo + 250])
                started.set()
        except ServerUnavailable:
            return

    threads = [threading.Thread(target=ship, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    assert started.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join(60)
    assert any(0 < n < 6000 for n in acked.values()), acked  # killed mid-ingest
    url2, _ = spawn_server(db_url)
    for old in runs:
        old.close()
        run = ServerRun(url2, old.id, old.client.token or "")
        cursor = run.cursor()
        assert cursor >= acked[run.id]  # every acknowledged event survived
        stored = _stored(server, run.id)
        assert stored == [(e["seq"], e["hash"]) for e in chains[run.id][:cursor]]
        assert run.ship_events(chains[run.id][cursor:]) == 6000  # the rest, from the cursor
        run.end(0)
    db = Database(db_url)
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(AuditEvent))
    db.dispose()
    assert total == 6 * 6000
    report = Served(url2, db_url, Path())
    assert _verify(report, owner)["ok"]


def test_verify_names_tampering(server: Served) -> None:
    from corral.server.db import Database
    from corral.server.models import AuditEvent, LedgerEntry

    owner = _project(server)
    run = _run(server, owner)
    chain = make_chain("sb-1", 30)
    run.ship_events(chain)
    run.end(0)
    assert _verify(server, owner)["ok"]
    db = Database(server.db_url)
    with db.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.run_id == run.id, AuditEvent.seq == 7)
                  .values(data='{"host":"evil.example","rule":"p.yaml:3"}'))
    report = _verify(server, owner)
    assert not report["ok"]
    assert report["problems"] == [
        f"run {run.id}: event seq 7 (proxy.deny) edited: its content does not match its hash"]
    with db.session() as s:
        s.execute(update(LedgerEntry).values(head="e" * 64))
    db.dispose()
    assert any("ledger entry 1 edited" in p for p in _verify(server, owner)["problems"])
