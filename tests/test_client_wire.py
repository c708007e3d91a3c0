"""corral.client over its own wire (a socket and llhttp): against scripted servers on loopback.

Each server is a real listening socket answering with fixed bytes, so the cases a real server
rarely produces (a cut answer, a second response glued to the first, a dropped keep-alive
connection, an oversized body) are exercised exactly.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from corral.client import Client, ClientError, Refused, ServerUnavailable
from corral.client.http import MAX_RESPONSE

Handler = Callable[[socket.socket, bytes], "bool | None"]


def _ok(body: bytes = b'{"a": 1}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(body)) + body + extra


class Scripted:
    """A loopback server: each accepted connection is handed to ``handler`` per request."""

    def __init__(self, handler: Handler) -> None:
        self.handler, self.requests, self.connections = handler, [], 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                if self.handler(conn, head) is False:
                    return  # the handler ended this connection: read nothing more from it


@pytest.fixture
def scripted() -> Iterator[Callable[[Handler], Scripted]]:
    made: list[Scripted] = []

    def make(handler: Handler) -> Scripted:
        made.append(Scripted(handler))
        return made[-1]

    yield make
    for s in made:
        s.sock.close()


def test_json_round_trip_on_one_connection(scripted: Callable[[Handler], Scripted]) -> None:
    srv = scripted(lambda conn, _head: conn.sendall(_ok()))
    with Client(srv.url, "crl_token", timeout=5) as client:
        assert client.get("/x") == {"a": 1}
        assert client.post("/y", {"b": 2}) == {"a": 1}
    assert srv.connections == 1
    get, post = srv.requests
    assert get.startswith(b"GET /api/v1/x HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer crl_token\r\n" in get
    assert b"\r\nHost: 127.0.0.1:" in get and b"Content-Length" not in get
    assert post.endswith(b'\r\nContent-Length: 8\r\n\r\n{"b": 2}')


def test_chunked_and_error_answers(scripted: Callable[[Handler], Scripted]) -> None:
    def handler(conn: socket.socket, head: bytes) -> None:
        if head.startswith(b"GET /api/v1/chunked"):
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"4\r\n{\"a\"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n")
        else:
            body = b'{"error": {"code": "nope", "message": "no such thing"}}'
            conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))

    srv = scripted(handler)
    with Client(srv.url, "t", timeout=5) as client:
        assert client.get("/chunked") == {"a": 1}
        with pytest.raises(Refused, match="no such thing") as err:
            client.get("/missing")
    assert err.value.status == 404 and err.value.code == "nope"


def test_control_characters_are_never_sent(scripted: Callable[[Handler], Scripted]) -> None:
    srv = scripted(lambda conn, _head: conn.sendall(_ok()))
    for token in ("t\r\nX-Evil: 1", "t\nX-Evil: 1", "t\0"):
        with Client(srv.url, token, timeout=5) as client, \
                pytest.raises(ClientError, match="control characters") as err:
            client.get("/x")
        assert "Evil" not in str(err.value)  # the token never appears in an error
    with Client(srv.url, "t", timeout=5) as client, pytest.raises(ClientError):
        client.get("/x HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /y")
    assert srv.requests == []


def test_a_cut_answer_is_unavailable(scripted: Callable[[Handler], Scripted]) -> None:
    def handler(conn: socket.socket, _head: bytes) -> None:
        conn.sendall(_ok(b'{"a": 1, "b": 2}')[:-5])
        conn.shutdown(socket.SHUT_WR)

    srv = scripted(handler)
    with Client(srv.url, "t", timeout=5) as client, \
            pytest.raises(ServerUnavailable, match="mid-response"):
        client.get("/x")


def test_an_oversized_answer_is_refused(scripted: Callable[[Handler], Scripted],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("corral.client.http.MAX_RESPONSE", 1000)
    assert MAX_RESPONSE > 1000
    srv = scripted(lambda conn, _head: conn.sendall(_ok(b'"' + b"x" * 5000 + b'"')))
    with Client(srv.url, "t", timeout=5) as client, pytest.raises(ClientError, match="too large"):
        client.get("/x")


def test_a_dropped_keepalive_is_sent_again_once(scripted: Callable[[Handler], Scripted]
                                                 ) -> None:
    def handler(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(_ok())
        conn.shutdown(socket.SHUT_RDWR)  # the server drops the idle connection afterwards
        return False  # a request the client sent before it saw the drop is not read

    srv = scripted(handler)
    with Client(srv.url, "t", timeout=5) as client:
        assert client.get("/x") == {"a": 1}
        assert client.get("/x") == {"a": 1}  # a new connection, the request sent again
    assert srv.connections == 2 and len(srv.requests) == 2


def test_bytes_after_the_answer_end_the_connection(scripted: Callable[[Handler], Scripted]
                                                   ) -> None:
    smuggled = _ok(b'{"smuggled": true}')
    srv = scripted(lambda conn, _head: conn.sendall(_ok(extra=smuggled)))
    with Client(srv.url, "t", timeout=5) as client:
        assert client.get("/x") == {"a": 1}
        assert client.get("/x") == {"a": 1}  # never the response glued to the first one
    assert srv.connections == 2
