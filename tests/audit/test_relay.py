"""The relay lets an unprivileged process (the proxy after its uid drop) write one trail.

Its one client is the proxy's ``corral.proxy.audit.RelayAudit`` (asyncio), driven here as the
proxy drives it: concurrent awaited emits, batches with one ack, unawaited sends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root

from corral.audit import AuditRelay, AuditStore
from corral.audit.verify import verify
from corral.proxy.audit import RelayAudit

ROOT = str(Path(__file__).resolve().parents[2])

# Runs as root, imports what it needs, then really drops to nobody (as the proxy does after
# setup): the interpreter lives under /root, which nobody could not even exec.
CHILD = r"""
import asyncio, os, socket, sqlite3, sys
from corral.proxy.audit import RelayAudit
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
async def main():
    remote = RelayAudit(socket.socket(fileno=int(sys.argv[1])))
    await remote.open()
    await remote.emit("proxy.deny", host="evil.example", rule="default deny", method="GET")
    print("acked")
    try:
        await remote.emit("sandbox.exit", status=0)
    except ConnectionError as err:
        print("refused:", err)
asyncio.run(main())
"""


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A base dir others may traverse, so only the store's own modes stand in the way."""
    base = Path(tempfile.mkdtemp(prefix="corral-relay-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def _seqs(store: AuditStore, sandbox: str) -> list[int]:
    return [r[0] for r in store.reader().execute(
        "SELECT seq FROM events WHERE sandbox=? ORDER BY seq", (sandbox,))]


def test_round_trip_in_process(store: AuditStore) -> None:
    trail = store.trail("sb-r")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)

    async def main() -> list[str]:
        remote = RelayAudit(b)
        await remote.open()

        async def work(n: int) -> None:
            for i in range(100):
                await remote.emit("proxy.allow", host="h.example", rule="r:1", path=f"/{n}/{i}")

        await asyncio.gather(*(work(n) for n in range(4)))
        refused = []
        for event in [("credential.inject", {"binding": "gh", "host": "x", "secret": "s3cr3t"}),
                      ("dns.query", {"name": "x", "rcode": "NOERROR", "_lead": True}),
                      ("dns.query", {"name": "x", "rcode": "NOERROR", "type_": "sandbox.exit"}),
                      ("policy.resolved", {"digest": "x", "sources": []})]:
            with pytest.raises(ConnectionError) as err:
                await remote.emit(event[0], **event[1])
            refused.append(str(err.value))
        return refused

    refused = asyncio.run(main())
    assert "unknown field 'secret'" in refused[0]
    assert "unknown field '_lead'" in refused[1]
    assert "unknown field 'type_'" in refused[2]
    assert "not allowed" in refused[3]
    relay.close()
    assert _seqs(store, "sb-r") == list(range(1, 401))
    assert verify(store.reader()).ok


def test_batch_is_durable_at_once_and_in_order(store: AuditStore) -> None:
    """``emit(first=...)``: one write, one group, every event durable when it returns."""
    trail = store.trail("sb-batch")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)

    async def main() -> list[int]:
        remote = RelayAudit(b)
        await remote.open()
        seen = []
        for i in range(20):
            await remote.emit("proxy.inspect", host="h", rule="r:1", path=f"/{i}",
                              first=[("credential.inject", {"binding": "b", "host": "h"})])
            seen.append(len(_seqs(store, "sb-batch")))  # both committed before emit returned
        return seen

    assert asyncio.run(main()) == list(range(2, 41, 2))
    types = [r[0] for r in store.reader().execute(
        "SELECT type FROM events WHERE sandbox='sb-batch' ORDER BY seq")]
    assert types == ["credential.inject", "proxy.inspect"] * 20
    relay.close()


def test_refused_unawaited_send_fails_every_later_event(store: AuditStore) -> None:
    """``send`` does not wait, but a refusal of it fails the proxy closed from then on."""
    trail = store.trail("sb-send")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)

    async def main() -> str:
        remote = RelayAudit(b)
        await remote.open()
        remote.send("proxy.inspect", host="h", rule="r:1", status=200)
        await remote.emit("dns.query", name="x", rcode="NOERROR")  # the send is durable too
        assert len(_seqs(store, "sb-send")) == 2
        remote.send("sandbox.exit", status=0)  # not a proxy event: refused by the relay
        with pytest.raises(ConnectionError) as err:
            await remote.emit("dns.query", name="y", rcode="NOERROR")
        with pytest.raises(ConnectionError):
            remote.send("dns.query", name="z", rcode="NOERROR")
        return str(err.value)

    assert "not allowed" in asyncio.run(main())
    relay.close()


def test_dead_relay_means_audit_unavailable(store: AuditStore) -> None:
    trail = store.trail("sb-dead")
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)

    async def main() -> None:
        remote = RelayAudit(b)
        await remote.open()
        await remote.emit("dns.query", name="x", rcode="NXDOMAIN")
        relay.close()
        await asyncio.wait_for(remote.closed.wait(), 5)
        with pytest.raises(ConnectionError):
            await remote.emit("dns.query", name="y", rcode="NXDOMAIN")

    asyncio.run(main())
    assert _seqs(store, "sb-dead") == [1]


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
        assert lines[2] == "acked"
        assert lines[3].startswith("refused: audit: event type 'sandbox.exit' not allowed")
        # 2. the file modes hold on their own, even if the directory is opened up
        state.chmod(0o755)
        c, d = socket.socketpair()
        relay2 = AuditRelay(trail, c)
        lines = _run_child(d.fileno(), state / "audit.db")
        assert lines[:3] == ["denied: PermissionError", "denied: OperationalError", "acked"]
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
