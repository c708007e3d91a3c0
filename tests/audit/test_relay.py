"""The relay lets an unprivileged process (the proxy after its uid drop) write one trail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root

from corral.audit import AuditRelay, AuditStore, AuditUnavailable, EventError, RemoteTrail
from corral.audit.verify import verify

ROOT = str(Path(__file__).resolve().parents[2])

# Runs as root, imports what it needs, then really drops to nobody (as the proxy does after
# setup): the interpreter lives under /root, which nobody could not even exec.
CHILD = r"""
import os, sqlite3, sys
from corral.audit import RemoteTrail, EventError
db = sys.argv[2]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
assert os.getuid() == os.geteuid() == 65534 and os.getgroups() == []
attempts = (lambda: open(db, "rb"), lambda: sqlite3.connect(db).execute("SELECT 1 FROM events"))
for attempt in attempts:
    try:
        attempt()
    except (PermissionError, sqlite3.OperationalError) as err:
        print("denied:", type(err).__name__)
    else:
        print("OPENED THE STORE")
remote = RemoteTrail.from_fd(int(sys.argv[1]))
print("seq", remote.emit("proxy.deny", host="evil.example", rule="default deny", method="GET"))
try:
    remote.emit("sandbox.exit", status=0)
except EventError as err:
    print("refused:", err)
remote.close()
"""


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A base dir others may traverse, so only the store's own modes stand in the way."""
    base = Path(tempfile.mkdtemp(prefix="corral-relay-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_round_trip_in_process(store: AuditStore) -> None:
    trail = store.trail("sb-r")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)
    remote = RemoteTrail(b)
    seqs: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for i in range(100):
            s = remote.emit("proxy.allow", host="h.example", rule="r:1", path=f"/{i}")
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 401))
    with pytest.raises(EventError, match="unknown field"):
        remote.emit("credential.inject", binding="gh", host="x", secret="s3cr3t")
    with pytest.raises(EventError, match="unknown field '_lead'"):
        remote.emit("dns.query", name="x", rcode="NOERROR", _lead=True)
    with pytest.raises(EventError, match="unknown field 'type_'"):
        remote.emit("dns.query", name="x", rcode="NOERROR", type_="sandbox.exit")
    with pytest.raises(EventError, match="not allowed"):
        remote.emit("policy.resolved", digest="x", sources=[])
    remote.close()
    relay.close()
    assert verify(store.reader()).ok


def test_dead_relay_means_audit_unavailable(store: AuditStore) -> None:
    trail = store.trail("sb-dead")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)
    remote = RemoteTrail(b)
    assert remote.emit("dns.query", name="x", rcode="NXDOMAIN") == 1
    relay.close()
    with pytest.raises(AuditUnavailable):
        remote.emit("dns.query", name="y", rcode="NXDOMAIN")
    remote.close()


def _run_child(fd: int, db: Path) -> list[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {ROOT!r})\n" + CHILD,
            str(fd),
            str(db),
        ],
        pass_fds=[fd],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_unprivileged_process_writes_through_relay_but_cannot_open_store(open_base: Path) -> None:
    require_root()
    state = open_base / "state"
    store = AuditStore.open(state / "audit.db")
    trail = store.trail("sb-proxy")
    trail.emit("sandbox.create", uid=60001)
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)
    try:
        # 1. the default layout: 0700 state dir, 0600 files
        lines = _run_child(b.fileno(), state / "audit.db")
        assert lines[:2] == ["denied: PermissionError", "denied: OperationalError"], lines
        assert lines[2] == "seq 2"
        assert lines[3].startswith("refused: event type 'sandbox.exit' not allowed")
        # 2. the file modes hold on their own, even if the directory is opened up
        state.chmod(0o755)
        c, d = socket.socketpair()
        relay2 = AuditRelay(trail, c)
        lines = _run_child(d.fileno(), state / "audit.db")
        assert lines[:3] == ["denied: PermissionError", "denied: OperationalError", "seq 3"]
        relay2.close()
        d.close()
    finally:
        relay.close()
        b.close()
    con = store.reader()
    row = con.execute(
        "SELECT actor, data FROM events WHERE sandbox='sb-proxy' AND seq=2"
    ).fetchone()
    assert '"user":"root"' in row[0]  # the relay, not the client, decides who the actor is
    assert "evil.example" in row[1]
    assert verify(con).ok
    store.close()
    assert os.stat(state / "audit.db").st_uid == 0


@pytest.mark.parametrize(
    "frame",
    [
        (10 * 1024 * 1024).to_bytes(4, "big"),  # oversized: refused before reading it
        (5).to_bytes(4, "big") + b"nope!",  # not JSON
        (2).to_bytes(4, "big") + b"[]",  # not an object
    ],
)
def test_hostile_frames_close_the_connection_only(store: AuditStore, frame: bytes) -> None:
    trail = store.trail("sb-hostile")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)
    b.sendall(frame)
    b.settimeout(5)
    assert b.recv(1) == b""  # the relay hung up on the peer
    relay.close()
    b.close()
    # the store and the trail are unaffected
    assert trail.emit("dns.query", name="ok.example", rcode="NOERROR") == 1
