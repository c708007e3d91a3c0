"""Deferred records at the relay: the proxy's unawaited ``send`` (a response's record, after
its request's ``credential.inject`` is durable) rides with the next commit instead of costing
one of its own, and is still durable in order before any later event, within the relay's
``DEFER`` when nothing follows, and at close.

The clients are the proxy's own ``RelayAudit`` on an asyncio loop; the store is a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral.audit.relay as relay
from corral.audit import AuditRelay, AuditStore
from corral.audit.store import Ticket, Trail
from corral.audit.verify import verify
from corral.proxy.audit import RelayAudit

_names = itertools.count()


class _Counting:
    """A trail that counts the relay's group commits."""

    def __init__(self, trail: Trail) -> None:
        self.trail = trail
        self.commits = 0

    def emit_held(self, event_type: str, /, **fields: Any) -> Ticket:
        return self.trail.emit_held(event_type, **fields)

    def commit(self) -> None:
        self.commits += 1
        self.trail.commit()


@pytest.fixture
def reader(store: AuditStore) -> Iterator[sqlite3.Connection]:
    con = store.reader()
    yield con
    con.close()


def _paths(con: sqlite3.Connection, sandbox: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT json_extract(data, '$.path') FROM events WHERE sandbox=? ORDER BY seq",
        (sandbox,))]


def _relay(store: AuditStore, sandbox: str) -> tuple[_Counting, AuditRelay, socket.socket]:
    trail = _Counting(store.trail(sandbox))
    a, b = socket.socketpair()
    return trail, AuditRelay(trail, a), b


def test_response_record_rides_with_the_next_commit(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per injected request: one commit (its inject and the previous response record), not
    two. The sleep lets the relay see each response record on its own first."""
    monkeypatch.setattr(relay, "DEFER", 30.0, raising=False)
    trail, served, sock = _relay(store, "sb-ride")

    async def main() -> None:
        remote = RelayAudit(sock)
        await remote.open()
        for i in range(20):
            await remote.emit("credential.inject", binding="b", host="h")
            remote.send("proxy.inspect", host="h", rule="r:1", status=200, path=f"/{i}")
            await asyncio.sleep(0.002)

    asyncio.run(main())
    assert trail.commits == 20  # the relay committed once per awaited event, never for a send
    served.close()
    con = store.reader()
    # in order; the last response record was committed when the relay closed
    assert _paths(con, "sb-ride") == [p for i in range(20) for p in (None, f"/{i}")]
    assert verify(con).ok


def test_deferred_record_is_committed_by_the_deadline_alone(
    store: AuditStore, reader: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "DEFER", 0.3, raising=False)
    _, served, sock = _relay(store, "sb-deadline")

    async def main() -> tuple[list[str], float, float]:
        remote = RelayAudit(sock)
        await remote.open()
        sent = time.monotonic()
        remote.send("proxy.inspect", host="h", rule="r:1", status=200, path="/a")
        await asyncio.sleep(0.05)
        early, looked = _paths(reader, "sb-deadline"), time.monotonic() - sent
        while not _paths(reader, "sb-deadline") and time.monotonic() - sent < 5:
            await asyncio.sleep(0.01)
        return early, looked, time.monotonic() - sent

    early, looked, took = asyncio.run(main())
    # deferred: nothing awaited it and its window had not ended (unless this process was
    # descheduled for the whole window: a loaded machine)
    assert early == [] or looked > 0.25, looked
    assert _paths(reader, "sb-deadline") == ["/a"]
    assert 0.25 < took < 5
    served.close()


def test_close_commits_deferred_records(
    store: AuditStore, reader: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "DEFER", 60.0, raising=False)
    _, served, sock = _relay(store, "sb-close")

    async def main() -> None:
        remote = RelayAudit(sock)
        await remote.open()
        await remote.emit("credential.inject", binding="b", host="h")
        for i in range(3):
            remote.send("proxy.inspect", host="h", rule="r:1", status=200, path=f"/{i}")
        await asyncio.sleep(0.1)  # the relay has read them (and holds them)

    asyncio.run(main())
    served.close()
    assert _paths(reader, "sb-close") == [None, "/0", "/1", "/2"]


# One step of a proxy task: an awaited event, an unawaited record, or a pause (µs).
_step = st.one_of(
    st.tuples(st.just("emit"), st.sampled_from(["credential.inject", "proxy.inspect"])),
    st.tuples(st.just("send"), st.just("proxy.inspect")),
    st.tuples(st.just("sleep"), st.integers(0, 3000)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=st.lists(st.lists(_step, max_size=12), min_size=1, max_size=6),
       defer=st.sampled_from([0.0005, 0.002, 30.0]))
def test_emit_returns_only_once_everything_sent_before_it_is_durable(
    store: AuditStore, tasks: list[list[tuple[str, Any]]], defer: float
) -> None:
    """Concurrent tasks emit, send and pause in any order: when an ``emit`` returns, every
    event written to the relay before it (by any task, awaited or not) is committed, and the
    trail holds the events in the order they were written."""
    sandbox = f"sb-prop-{next(_names)}"
    _, served, sock = _relay(store, sandbox)
    reader = store.reader()
    with contextlib.ExitStack() as stack:
        stack.callback(reader.close)
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(
            relay, "DEFER", defer, raising=False)
        written: list[str] = []
        checked = 0

        async def run(remote: RelayAudit, steps: list[tuple[str, Any]], task: int) -> None:
            nonlocal checked
            for n, (kind, arg) in enumerate(steps):
                path = f"/{task}/{n}"
                if kind == "sleep":
                    await asyncio.sleep(arg / 1e6)
                    continue
                fields: dict[str, Any] = (
                    {"binding": "b", "host": "h", "rule": path} if arg == "credential.inject"
                    else {"host": "h", "rule": "r:1", "status": 200, "path": path})
                written.append(path)
                if kind == "send":
                    remote.send(arg, **fields)
                    continue
                before = len(written)
                await remote.emit(arg, **fields)
                # no await since the ack: this is what the proxy acts on
                durable = reader.execute(
                    "SELECT count(*) FROM events WHERE sandbox=?", (sandbox,)).fetchone()[0]
                assert durable >= before
                checked += 1

        async def main() -> None:
            remote = RelayAudit(sock)
            await remote.open()
            await asyncio.gather(*(run(remote, steps, i) for i, steps in enumerate(tasks)))

        asyncio.run(main())
        served.close()
        rows = reader.execute(
            "SELECT coalesce(json_extract(data, '$.path'), json_extract(data, '$.rule')) "
            "FROM events WHERE sandbox=? ORDER BY seq", (sandbox,)).fetchall()
        assert [r[0] for r in rows] == written
        assert verify(reader).ok


@pytest.mark.parametrize("reply", [b"\x00\x00\x00\x02[]", b"\x01\x00\x00\x00",
                                   b"\x00\x00\x00\x01{"])
def test_a_malformed_ack_fails_the_client_closed(reply: bytes) -> None:
    """Not a relay's answer: the waiting emit fails and every later one too."""
    a, b = socket.socketpair()

    async def main() -> None:
        remote = RelayAudit(b)
        await remote.open()
        loop = asyncio.get_running_loop()
        task = loop.create_task(remote.emit("dns.query", name="x", rcode="NOERROR"))
        await loop.run_in_executor(None, a.recv, 4096)  # the event arrived; answer nonsense
        a.sendall(reply)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(task, 5)
        await asyncio.wait_for(remote.closed.wait(), 5)
        with pytest.raises(ConnectionError):
            remote.send("dns.query", name="y", rcode="NOERROR")

    asyncio.run(main())
    a.close()


def test_frames_larger_than_one_read_arrive_whole(store: AuditStore,
                                                   reader: sqlite3.Connection) -> None:
    """The relay reads at most 64 KiB at a time: a 200 KiB frame spans several reads."""
    _, served, sock = _relay(store, "sb-big")
    long_path = "/" + "p" * 200_000

    async def main() -> None:
        remote = RelayAudit(sock)
        await remote.open()
        remote.send("proxy.inspect", host="h", rule="r:1", status=200, path=long_path)
        await remote.emit("proxy.inspect", host="h", rule="r:1", status=200, path="/after")

    asyncio.run(main())
    assert _paths(reader, "sb-big") == [long_path, "/after"]
    served.close()
