"""Loopback upstreams for the upgrade and method-override tests.

``Smuggler`` is the h2c-smuggling class of server: it answers *any* request that carries an
Upgrade header with ``101 Switching Protocols`` (echoing the first token asked for, with a
correct ``Sec-WebSocket-Accept`` when a key came) and then keeps serving HTTP/1.1 on the raw
socket, so a request written after the 101 reaches it without passing the proxy's policy.
Requests that arrive after a 101 are logged with ``after_upgrade=True``. It also honours
method-override headers (``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``X-Method-Override``,
any case): the method it acts on is logged as ``effective``.

Paths with behaviour of their own: ``/101-h2c`` answers 101 ``Upgrade: h2c`` to every request;
``/bad-accept`` answers 101 ``Upgrade: websocket`` with a wrong accept value.

``echo_server`` is a real WebSocket echo (the ``websockets`` package), plain or TLS.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import h11
from websockets.sync.server import ServerConnection, serve

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OVERRIDES = (b"x-http-method-override", b"x-http-method", b"x-method-override")


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


@dataclass
class Seen:
    method: str
    effective: str
    path: str
    headers: list[tuple[bytes, bytes]]
    after_upgrade: bool


@dataclass
class Smuggler:
    sock: socket.socket
    tls: ssl.SSLContext | None = None
    log: list[Seen] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def paths(self) -> list[str]:
        return [s.path for s in self.log]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, h11.ProtocolError):
            conn.settimeout(10)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._exchanges(conn)
        conn.close()

    def _exchanges(self, conn: socket.socket) -> None:
        parser = h11.Connection(h11.SERVER)
        upgraded = False
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = conn.recv(65536)
                parser.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                continue
            req = event
            while not isinstance(piece := parser.next_event(), h11.EndOfMessage):
                if piece is h11.NEED_DATA:  # the body itself is discarded
                    data = conn.recv(65536)
                    if not data:
                        return
                    parser.receive_data(data)
            headers = [(bytes(n), bytes(v)) for n, v in req.headers]
            method = req.method.decode()
            effective = method
            for name, value in headers:
                if name in OVERRIDES:
                    effective = value.decode().strip().upper()
            path = req.target.decode()
            self.log.append(Seen(method, effective, path, headers, upgraded))
            rest = parser.trailing_data[0]
            switch = self._switch(path, headers) if not upgraded else None
            if switch is not None:
                conn.sendall(switch)
                upgraded = True
            else:
                body = json.dumps(
                    {"method": method, "effective": effective, "path": path,
                     "after_upgrade": upgraded}
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            # A fresh parser per message: after a 101 it keeps reading HTTP/1.1 from the
            # raw socket, as an h2c-smuggling backend does.
            parser = h11.Connection(h11.SERVER)
            if rest:  # (an empty receive_data would mean end of stream to h11)
                parser.receive_data(rest)

    @staticmethod
    def _switch(path: str, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        asked = [v for n, v in headers if n == b"upgrade"]
        if "101-h2c" in path:
            asked = [b"h2c"]
        if not asked:
            return None
        token = asked[0].split(b",")[0].strip()
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n" % (
            b"websocket" if "bad-accept" in path else token
        )
        keys = [v for n, v in headers if n == b"sec-websocket-key"]
        if "bad-accept" in path:
            head += b"Sec-WebSocket-Accept: " + accept_for(b"not the key") + b"\r\n"
        elif keys:
            head += b"Sec-WebSocket-Accept: " + accept_for(keys[0]) + b"\r\n"
        return head + b"\r\n"


@contextlib.contextmanager
def smuggler(tls: ssl.SSLContext | None = None) -> Iterator[Smuggler]:
    sock = socket.create_server(("127.0.0.1", 0))
    server = Smuggler(sock, tls)
    threading.Thread(target=server._serve, daemon=True).start()
    try:
        yield server
    finally:
        sock.close()


def _echo(ws: ServerConnection) -> None:
    with contextlib.suppress(Exception):
        for message in ws:
            ws.send(message)


@contextlib.contextmanager
def echo_server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A WebSocket echo on loopback; yields its port."""
    with serve(_echo, "127.0.0.1", 0, ssl=tls) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.socket.getsockname()[1])
        finally:
            server.shutdown()
            thread.join(5)
