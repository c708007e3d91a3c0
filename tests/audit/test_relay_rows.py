"""The relay's row path (``Trail.append``, ``corral.audit.append``) keeps the store's rules.

The relay bound to a store's own trail commits rows on its own thread instead of tickets
through the writer; these tests hold it to the same chain, durability and fail-closed rules,
with the proxy's ``RelayAudit`` as the client and real stores on disk (a second store object
on the same file stands for another process writing it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from corral._frames import frame_json
from corral.audit import AuditRelay, AuditStore
from corral.audit.db import SCHEMA, connect
from corral.audit.query import iter_events, last_events
from corral.audit.store import AuditUnavailable
from corral.audit.verify import verify
from corral.proxy.audit import RelayAudit


def _relay(store: AuditStore, sandbox: str) -> tuple[AuditRelay, socket.socket]:
    a, b = socket.socketpair()
    return AuditRelay(store.trail(sandbox), a), b


def _types(store: AuditStore, sandbox: str) -> list[str]:
    with store.reader() as con:
        return [r[0] for r in con.execute(
            "SELECT type FROM events WHERE sandbox=? ORDER BY seq", (sandbox,))]


def test_other_writers_of_the_same_chain_between_relay_commits(tmp_path: Path) -> None:
    """Each commit reads the chain's head in its transaction: events another store object
    (another process) and the launcher's own emitters append between two relay commits are
    chained, not overwritten or forked."""
    path = tmp_path / "audit.db"
    store, other = AuditStore.open(path), AuditStore.open(path)
    relay, sock = _relay(store, "sb-mix")
    local, foreign = store.trail("sb-mix"), other.trail("sb-mix")
    stop = threading.Event()

    def launcher() -> None:  # the launcher's own emits, through the writer, meanwhile
        while not stop.is_set():
            local.emit("sandbox.limit", limit="pids", detail="x")

    thread = threading.Thread(target=launcher)
    thread.start()

    async def main() -> None:
        remote = RelayAudit(sock)
        await remote.open()
        for i in range(60):
            remote.send("proxy.inspect", host="h", rule="r:1", path=f"/{i}", status=200)
            await remote.emit("credential.inject", binding="b", host="h", rule="r:1")
            if i % 3 == 0:
                foreign.emit("sandbox.layer", layer="network", detail=str(i))

    asyncio.run(main())
    stop.set()
    thread.join()
    relay.close()
    types = _types(store, "sb-mix")
    assert types.count("credential.inject") == types.count("proxy.inspect") == 60
    assert types.count("sandbox.layer") == 20 and "sandbox.limit" in types
    with store.reader() as con:
        seqs = [r[0] for r in con.execute("SELECT seq FROM events WHERE sandbox='sb-mix'")]
        assert sorted(seqs) == list(range(1, len(types) + 1))
        assert verify(con).ok
    other.close()
    store.close()


def test_closed_chain_refuses_the_relay_and_the_store_goes_on(store: AuditStore) -> None:
    relay, sock = _relay(store, "sb-closed")

    async def main() -> str:
        remote = RelayAudit(sock)
        await remote.open()
        await remote.emit("credential.inject", binding="b", host="h", rule="r:1")
        store.trail("sb-closed").close("exit 0")
        with pytest.raises(ConnectionError) as err:
            await remote.emit("credential.inject", binding="b", host="h", rule="r:1")
        return str(err.value)

    assert "is closed" in asyncio.run(main())
    relay.close()
    assert store.failure is None  # a refusal of these events, not a failure of the store
    assert store.trail("sb-open").emit("sandbox.exit", status=0) == 1
    assert _types(store, "sb-closed") == ["credential.inject", "trail.close"]
    with store.reader() as con:
        assert verify(con).ok


def test_failed_commit_fails_the_proxy_closed(tmpfs: Any) -> None:
    """A relay commit the disk refuses is an error ack for every event it held, and every
    later event is refused too: no silent gap."""
    fs = tmpfs("2m")
    store = AuditStore.open(fs / "audit.db", min_free=0)
    relay, sock = _relay(store, "sb-full")
    with open(fs / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass

    async def main() -> tuple[int, str]:
        remote = RelayAudit(sock)
        await remote.open()
        done = 0
        try:
            for i in range(10_000):
                await remote.emit("proxy.inspect", host="h", rule="r:1", path="/" + "x" * 4000 +
                                  str(i))
                done += 1
        except ConnectionError as err:
            failure = str(err)
        with pytest.raises(ConnectionError):
            await remote.emit("credential.inject", binding="b", host="h")
        return done, failure

    done, failure = asyncio.run(main())
    assert "unavailable" in failure and done < 10_000
    assert store.failure is not None
    with pytest.raises(AuditUnavailable):
        store.trail("sb-after")
    relay.close()
    os.unlink(fs / "ballast")
    store.close()
    with connect(fs / "audit.db") as con:
        assert len(list(iter_events(con, sandbox="sb-full"))) == done  # every ack is there


def test_store_made_with_the_time_index_is_opened_without_it(tmp_path: Path) -> None:
    """Stores made before keep working: ``open`` drops ``events_ts``, their events still
    verify and chain on, time filters give the same answers."""
    path = tmp_path / "audit.db"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA + "CREATE INDEX IF NOT EXISTS events_ts ON events(ts_us);")
    con.close()
    store = AuditStore.open(path)
    with store.reader() as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "events_ts" not in names and "events_sandbox_seq" in names
    trail = store.trail("sb-old")
    for i in range(5):
        trail.emit("proxy.allow", host="h", rule="r:1", path=f"/{i}")
    relay, sock = _relay(store, "sb-old")

    async def main() -> None:
        remote = RelayAudit(sock)
        await remote.open()
        await remote.emit("credential.inject", binding="b", host="h", rule="r:1")

    asyncio.run(main())
    relay.close()
    with store.reader() as con:
        assert verify(con).ok
        events = list(iter_events(con, sandbox="sb-old"))
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        since = events[3].ts_us
        later = [e.seq for e in events if e.ts_us >= since]
        assert [e.seq for e in iter_events(con, since_us=since)] == later
        assert [e.seq for e in last_events(con, 2, since_us=since)] == later[-2:]
    store.close()


def test_the_proxys_cached_frames_are_the_encoded_ones() -> None:
    """``RelayAudit`` encodes an all-string awaited event once; every frame it then sends is
    byte for byte the fresh encoding, and values of other types are never taken from it."""
    a, b = socket.socketpair()
    remote = RelayAudit(a)
    events: list[tuple[str, dict[str, Any]]] = [
        ("credential.inject", {"binding": "b", "host": "h\u00e9", "rule": "r:1"}),
        ("credential.inject", {"binding": "b", "host": "h\u00e9", "rule": "r:1"}),
        ("proxy.inspect", {"host": "h", "rule": "r:1", "status": 1}),
        ("proxy.inspect", {"host": "h", "rule": "r:1", "status": True}),
        ("proxy.inspect", {"host": "h", "rule": "r:1", "status": 1.0}),
        ("proxy.inspect", {"host": "h", "rule": "r:1", "status": None}),
        ("credential.inject", {"binding": "b", "host": "h", "header": "X-\"k\""}),
    ]
    for round_ in range(2):
        for type_, fields in events:
            seq, got = remote._frame(type_, fields)
            data = {k: v for k, v in fields.items() if v is not None}
            assert got == frame_json({"id": seq, "type": type_, "data": data}), (round_, fields)
    assert len(remote.encoded) == 2  # the two all-string events
    a.close()
    b.close()
