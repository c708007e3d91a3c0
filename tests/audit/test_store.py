from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from corral.audit import AuditStore, AuditUnavailable, EventError
from corral.audit.store import connect
from corral.audit.verify import verify
from corral.errors import CorralError


def test_emit_returns_seq_after_commit(store: AuditStore) -> None:
    trail = store.trail("sb-1")
    assert trail.emit("sandbox.create", uid=60001, command=["true"]) == 1
    # emit() returned: the event is visible to an independent connection (it is committed)
    other = store.reader()
    assert other.execute("SELECT count(*) FROM events WHERE sandbox='sb-1'").fetchone()[0] == 1
    tickets = [trail.emit_nowait("dns.query", name=f"n{i}", rcode="NXDOMAIN") for i in range(50)]
    assert [t.wait() for t in tickets] == list(range(2, 52))
    assert verify(other).ok


def test_group_commit_shares_transactions(store: AuditStore) -> None:
    trail = store.trail("sb-g")
    threads = [
        threading.Thread(
            target=lambda: [trail.emit("dns.query", name="a", rcode="NOERROR") for _ in range(200)]
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    con = store.reader()
    seqs = [r[0] for r in con.execute("SELECT seq FROM events WHERE sandbox='sb-g' ORDER BY id")]
    assert seqs == list(range(1, 1601))
    assert verify(con).ok


def test_close_appends_to_ledger_and_refuses_more(store: AuditStore) -> None:
    a, b = store.trail("sb-a"), store.trail("sb-b")
    a.emit("sandbox.exit", status=0)
    b.emit("sandbox.exit", status=3)
    ha = a.close("exit 0")
    b.close("exit 3")
    con = store.reader()
    rows = con.execute("SELECT seq, sandbox, chain_hash FROM ledger ORDER BY seq").fetchall()
    assert rows[0] == (1, "sb-a", ha) and rows[1][1] == "sb-b"
    with pytest.raises(AuditUnavailable, match="closed"):
        a.emit("sandbox.exit", status=0)
    with pytest.raises(AuditUnavailable, match="closed"):
        store.trail("sb-a")
    with pytest.raises(EventError):
        b.emit("trail.close", status="forged")
    assert verify(con).ok


def test_store_files_are_root_only(tmp_path: Path) -> None:
    s = AuditStore.open(tmp_path / "state" / "audit.db")
    s.trail("sb").emit("sandbox.exit", status=0)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600, name
    s.close()


def test_default_path_is_in_the_state_dir(corral_env: dict[str, str]) -> None:
    s = AuditStore.open()
    assert s.path == Path(corral_env["CORRAL_HOME"]) / "audit.db"
    assert stat.S_IMODE(Path(corral_env["CORRAL_HOME"]).stat().st_mode) == 0o700
    s.close()


def test_full_disk_is_refused_clearly(tmpfs: Any) -> None:
    small = tmpfs("1m")
    with pytest.raises(CorralError, match=r"KiB free.*will not start a sandbox"):
        AuditStore.open(small / "audit.db")


def test_unwritable_store_is_refused_clearly(tmpfs: Any) -> None:
    ro = tmpfs("8m", ro=True)
    with pytest.raises(CorralError, match=r"not writable.*will not start a sandbox"):
        AuditStore.open(ro / "state" / "audit.db", min_free=0)


def test_store_failing_mid_run_raises_audit_unavailable(tmpfs: Any) -> None:
    fs = tmpfs("2m")
    s = AuditStore.open(fs / "audit.db", min_free=0)
    trail = s.trail("sb-full")
    trail.emit("sandbox.exit", status=0)
    # Fill the filesystem: the next commits cannot grow the WAL.
    with open(fs / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with pytest.raises(AuditUnavailable, match="failed"):
        for i in range(10_000):
            trail.emit("error", component="test", message="x" * 2000 + str(i))
    # fail closed: every later emit is refused at once, no silent gap
    with pytest.raises(AuditUnavailable):
        trail.emit("error", component="test", message="after")
    os.unlink(fs / "ballast")
    s.close()


def test_store_refuses_use_after_fork(store: AuditStore) -> None:
    """The writer thread does not survive fork(): a child must not queue into a dead writer."""
    trail = store.trail("sb-fork")
    trail.emit("sandbox.exit", status=0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            trail.emit("sandbox.exit", status=1)
        except AuditUnavailable:
            os._exit(7)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    AuditStore.open(tmp_path / "audit.db").close()
    con = connect(tmp_path / "audit.db")
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.close()
    with pytest.raises(CorralError, match="schema version 99, newer"):
        AuditStore.open(tmp_path / "audit.db")


def test_unwaited_events_are_written_at_normal_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom corral.audit import AuditStore\n"
        "t = AuditStore.open(sys.argv[1]).trail('sb-exit')\n"
        "for i in range(3000): t.emit_nowait('dns.query', name='a', rcode='NOERROR')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "audit.db")], check=True, timeout=60)
    con = connect(tmp_path / "audit.db")
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 3000
    assert verify(con).ok


def test_blocking_and_queued_emitters_mixed(store: AuditStore) -> None:
    """Leading emitters (commit on their own thread) and the writer thread never overlap,
    lose or duplicate an event, whatever the interleaving."""
    trails = [store.trail(f"sb-mix{i}") for i in range(3)]
    seqs: dict[str, list[int]] = {t.sandbox_id: [] for t in trails}
    lock = threading.Lock()

    def blocking(k: int) -> None:
        trail = trails[k % 3]
        for _ in range(300):
            s = trail.emit("dns.query", name="b", rcode="NOERROR")
            with lock:
                seqs[trail.sandbox_id].append(s)

    def queued(k: int) -> None:
        trail = trails[k % 3]
        tickets = [trail.emit_nowait("dns.query", name="q", rcode="NOERROR") for _ in range(300)]
        got = [t.wait(timeout=60) for t in tickets]
        with lock:
            seqs[trail.sandbox_id].extend(got)

    workers = [threading.Thread(target=blocking if k % 2 else queued, args=(k,)) for k in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers)
    for got in seqs.values():
        assert sorted(got) == list(range(1, len(got) + 1))
    assert sum(len(v) for v in seqs.values()) == 8 * 300
    assert verify(store.reader()).ok
