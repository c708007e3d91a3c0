"""Several processes writing at once; a writer killed mid-stream loses nothing it confirmed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corral.audit import AuditStore
from corral.audit.store import connect
from corral.audit.verify import verify

WRITER = str(Path(__file__).with_name("_writer.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def _spawn(
    db: Path, sandbox: str, n: int, threads: int, shared: str | None = None
) -> subprocess.Popen[str]:
    args = [sys.executable, WRITER, str(db), sandbox, str(n), str(threads)]
    return subprocess.Popen(
        args + ([shared] if shared else []),
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


def test_ten_processes_writing_at_once_all_verify(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    AuditStore.open(db).close()
    procs = [_spawn(db, f"sb-{i}", 300, 3, shared="sb-shared") for i in range(10)]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        assert len(out.splitlines()) == 300
    con = connect(db)
    res = verify(con)
    assert res.ok, res.problems
    assert res.ledger == 10 and res.chains == 11
    # each chain is gapless; the shared chain interleaves all ten writers
    for sb, n in con.execute("SELECT sandbox, count(*) FROM events GROUP BY sandbox"):
        assert n == (3000 if sb == "sb-shared" else 301), sb
    shared = con.execute("SELECT seq FROM events WHERE sandbox='sb-shared' ORDER BY id").fetchall()
    assert [s for (s,) in shared] == list(range(1, 3001))


def test_sigkill_mid_stream_loses_no_confirmed_event(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    AuditStore.open(db).close()
    proc = _spawn(db, "sb-kill", 10_000_000, 4)
    assert proc.stdout is not None
    confirmed: list[int] = []
    deadline = time.monotonic() + 60
    while len(confirmed) < 2000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        confirmed.append(int(line.split()[1]))
    os.kill(proc.pid, signal.SIGKILL)
    # whatever the writer printed before dying was printed after its emit() returned
    confirmed += [int(line.split()[1]) for line in proc.stdout.read().splitlines()]
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(confirmed) >= 2000
    con = connect(db)
    stored = {s for (s,) in con.execute("SELECT seq FROM events WHERE sandbox='sb-kill'")}
    missing = set(confirmed) - stored
    assert not missing, f"{len(missing)} confirmed events lost"
    res = verify(con)
    assert res.ok, res.problems
    # the store is still usable by the next process: the open chain continues
    s = AuditStore.open(db)
    seq = s.trail("sb-kill").emit("sandbox.exit", status=137)
    assert seq == max(stored) + 1
    s.close()
