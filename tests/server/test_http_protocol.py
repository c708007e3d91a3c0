"""``corral.server.HttpProtocol``: what one loop step writes leaves as one TCP segment, and
nothing is held back while the app waits.

Real uvicorn on loopback in a thread; the client counts the data segments its socket received
(the kernel's ``tcpi_data_segs_in``), so the test sees segments, not how ``recv`` merged them.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from corral.server import HttpProtocol

_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (Linux >= 4.6)
gate = threading.Event()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})  # chunked: 3 writes
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    if scope["path"] == "/wait":  # an SSE stream between events: what was sent is out
        await asyncio.to_thread(gate.wait, 20)
    await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})


def _serve(protocol: type[Any]) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def gathered() -> Iterator[int]:
    yield from _serve(HttpProtocol)


@pytest.fixture
def plain() -> Iterator[int]:
    yield from _serve(HttpToolsProtocol)


def _data_segments(conn: socket.socket) -> int:
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


def _get(port: int, path: str) -> tuple[bytes, int]:
    """The whole response to GET ``path`` and the data segments it came in."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        before = _data_segments(conn)
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        return got, _data_segments(conn) - before


def test_one_step_is_one_segment(gathered: int, plain: int) -> None:
    body = b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    got, segments = _get(gathered, "/")
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(body)
    assert segments == 1, got
    # the same app under uvicorn's own protocol: head, each piece, the terminator apart
    got, segments = _get(plain, "/")
    assert got.endswith(body) and segments >= 3, segments


def test_nothing_waits_for_the_next_write(gathered: int) -> None:
    gate.clear()
    with socket.create_connection(("127.0.0.1", gathered), timeout=20) as conn:
        conn.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while b"data: 1" not in got:  # arrives while the app still waits on the gate
            chunk = conn.recv(65536)
            assert chunk, got
            got += chunk
        assert b"data: 2" not in got
        gate.set()
        while chunk := conn.recv(65536):
            got += chunk
    assert got.endswith(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
