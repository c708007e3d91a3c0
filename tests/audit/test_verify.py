from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.audit import AuditStore
from corral.audit.events import canonical_json, event_body, event_hash
from corral.audit.query import head, iter_events, prune
from corral.audit.store import connect
from corral.audit.verify import verify


def _populate(store: AuditStore, n: int = 8, close: bool = True) -> sqlite3.Connection:
    trail = store.trail("sb-t")
    for i in range(n):
        trail.emit("proxy.allow", host="api.example.com", rule="p.yaml:2", path=f"/{i}")
    if close:
        trail.close("exit 0")
    other = store.trail("sb-ok")
    other.emit("sandbox.exit", status=0)
    other.close("exit 0")
    store.close()
    return connect(store.path)


def _problem(con: sqlite3.Connection) -> str:
    res = verify(con)
    assert not res.ok
    assert not any("sb-ok" in p for p in res.problems), res.problems  # the damage is localised
    return res.problems[0]


def test_intact_store_verifies(store: AuditStore) -> None:
    con = _populate(store)
    res = verify(con)
    assert res.ok and res.events == 11 and res.ledger == 2
    assert res.head == head(con)[1]


def test_edited_event_is_named(store: AuditStore) -> None:
    con = _populate(store)
    con.execute(
        "UPDATE events SET data=? WHERE sandbox='sb-t' AND seq=4",
        (canonical_json({"host": "evil.example", "rule": "p.yaml:2", "path": "/3"}),),
    )
    msg = _problem(con)
    assert "seq 4" in msg and "edited" in msg


def test_deleted_event_is_named(store: AuditStore) -> None:
    con = _populate(store)
    con.execute("DELETE FROM events WHERE sandbox='sb-t' AND seq=5")
    msg = _problem(con)
    assert "seq 5..5" in msg and "deleted" in msg


def test_deleted_tail_of_a_closed_chain_is_caught(store: AuditStore) -> None:
    con = _populate(store)
    con.execute("DELETE FROM events WHERE sandbox='sb-t' AND seq>=8")
    assert "deleted" in _problem(con)


def test_inserted_event_is_named(store: AuditStore) -> None:
    """A forger with the hash function re-links an extra event and renumbers the rest."""
    con = _populate(store)
    prev, ts, actor = con.execute(
        "SELECT hash, ts_us, actor FROM events WHERE sandbox='sb-t' AND seq=3"
    ).fetchone()
    con.execute("UPDATE events SET seq = seq + 1 WHERE sandbox='sb-t' AND seq >= 4")
    data = canonical_json({"host": "forged.example", "rule": "p.yaml:2"})
    h = event_hash(
        event_body(
            actor=actor,
            data=data,
            prev=prev,
            sandbox="sb-t",
            seq=4,
            ts=ts,
            type_="proxy.allow",
            v=1,
        )
    )
    con.execute(
        "INSERT INTO events(sandbox, seq, ts_us, type, actor, data, prev, hash, v) "
        "VALUES('sb-t', 4, ?, 'proxy.allow', ?, ?, ?, ?, 1)",
        (ts, actor, data, prev, h),
    )
    msg = _problem(con)
    assert "inserted" in msg and "seq 4" in msg


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(
            "INSERT INTO events(sandbox, seq, ts_us, type, actor, data, prev, hash, v) "
            "SELECT sandbox, seq, ts_us, type, actor, data, prev, hash, v FROM events "
            "WHERE sandbox='sb-t' AND seq=2",
            ("inserted", "seq 2"),
            id="inserted-duplicate",
        ),
        pytest.param(
            "UPDATE events SET seq = CASE seq WHEN 3 THEN 6 ELSE 3 END "
            "WHERE sandbox='sb-t' AND seq IN (3, 6)",
            ("reordered", "written as seq 6"),
            id="reordered",
        ),
    ],
)
def test_tampering_is_named(store: AuditStore, tamper: str, expected: tuple[str, str]) -> None:
    """A duplicated row and two swapped sequence numbers are each named for what they are."""
    con = _populate(store)
    con.execute(tamper)
    msg = _problem(con)
    for part in expected:
        assert part in msg


def test_rows_swapped_in_storage_are_reordered(store: AuditStore) -> None:
    con = _populate(store)
    a, b = (
        con.execute("SELECT id FROM events WHERE sandbox='sb-t' AND seq=?", (s,)).fetchone()[0]
        for s in (2, 5)
    )
    con.execute("UPDATE events SET id = -1 WHERE id = ?", (a,))
    con.execute("UPDATE events SET id = ? WHERE id = ?", (a, b))
    con.execute("UPDATE events SET id = ? WHERE id = -1", (b,))
    assert "reordered" in _problem(con)


def test_open_chain_checked_against_its_head(store: AuditStore) -> None:
    con = _populate(store, close=False)
    con.execute("DELETE FROM events WHERE sandbox='sb-t' AND seq=8")
    assert "seq 8..8 deleted" in _problem(con)


def test_ledger_edit_and_expected_head(store: AuditStore) -> None:
    con = _populate(store)
    recorded = head(con)[1]
    assert verify(con, recorded).ok
    assert not verify(con, "f" * 64).ok
    con.execute("UPDATE ledger SET count = 99 WHERE seq = 1")
    res = verify(con, recorded)
    assert not res.ok and "ledger entry 1" in res.problems[0] and "edited" in res.problems[0]


def test_rewritten_ledger_fails_expected_head(store: AuditStore) -> None:
    con = _populate(store)
    recorded = head(con)[1]
    con.execute("DELETE FROM ledger")
    con.execute("DELETE FROM events")
    con.execute("DELETE FROM chains")
    res = verify(con, recorded)
    assert not res.ok and "not in the ledger" in res.problems[0]


def test_prune_keeps_the_ledger_verifiable(store: AuditStore) -> None:
    path = store.path
    trail = store.trail("sb-open")
    trail.emit("sandbox.exit", status=0)
    con = _populate(store)
    before = verify(con)
    pruned = prune(path, 2**62)
    assert pruned == (2, 11)  # both closed chains; the open one is kept
    after = verify(con, before.head)
    assert after.ok and after.events == 1 and after.ledger == 2
    # a pruned chain's closing hash is still bound to its ledger entry
    con.execute("UPDATE chains SET last_hash = ? WHERE sandbox='sb-t'", ("0" * 64,))
    assert not verify(con).ok


def test_corrupted_file_verify_names_event_and_list_reads_the_rest(tmp_path: Path) -> None:
    s = AuditStore.open(tmp_path / "audit.db")
    trail = s.trail("sb-c")
    tickets = [
        trail.emit_nowait("error", component="t", message=f"MARK{i:05d}" + "x" * 300)
        for i in range(3000)
    ]
    for t in tickets:
        t.wait()
    s.close()  # checkpoints the WAL into the main file
    raw = bytearray((tmp_path / "audit.db").read_bytes())
    page = 4096
    at = raw.index(b"MARK01500") // page * page
    raw[at : at + page] = b"\xa5" * page
    (tmp_path / "audit.db").write_bytes(bytes(raw))
    con = connect(tmp_path / "audit.db", readonly=True)
    res = verify(con)
    assert not res.ok and "corrupted after event id" in res.problems[0]
    got = list(iter_events(con))
    assert 2900 <= len(got) < 3000
    assert got[0].data["message"].startswith("MARK00000")
    assert got[-1].data["message"].startswith("MARK02999")


@pytest.mark.parametrize("n", [1, 2])
def test_small_chains(store: AuditStore, n: int) -> None:
    assert verify(_populate(store, n)).ok


_COLUMNS = ("seq", "ts_us", "type", "actor", "data", "prev", "hash")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    victim=st.integers(min_value=1, max_value=6),
    column=st.sampled_from(_COLUMNS),
    flip=st.integers(min_value=0, max_value=10_000),
)
def test_any_single_column_edit_is_detected(
    tmp_path: Path, victim: int, column: str, flip: int
) -> None:
    db = tmp_path / f"{victim}-{column}-{flip}.db"
    s = AuditStore.open(db)
    trail = s.trail("sb-h")
    for i in range(5):
        trail.emit("proxy.allow", host="h.example", rule="p.yaml:1", path=f"/{i}")
    trail.close("exit 0")  # seq 6
    s.close()
    con = connect(db)
    value = con.execute(f"SELECT {column} FROM events WHERE seq=?", (victim,)).fetchone()[0]
    if isinstance(value, int):
        new: object = value + 1 + flip % 7
    else:
        pos = flip % len(value)
        ch = "a" if value[pos] != "a" else "b"
        new = value[:pos] + ch + value[pos + 1 :]
    con.execute(f"UPDATE events SET {column}=? WHERE seq=?", (new, victim))
    res = verify(con)
    assert not res.ok, (column, victim, value, new)
    con.close()


def test_verify_sees_one_snapshot_while_writers_append(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    db = tmp_path / "audit.db"
    AuditStore.open(db).close()
    writer = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("_writer.py")),
            str(db),
            "sb-live",
            "10000000",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        con = connect(db)
        deadline = time.monotonic() + 1.0
        runs = 0
        while time.monotonic() < deadline or runs < 5:
            res = verify(con)
            assert res.ok, res.problems
            runs += 1
    finally:
        writer.kill()
        writer.wait()
