"""Length-prefixed frames: the one framing of corral's private socketpairs.

A frame is a 4-byte big-endian length and that many bytes of body. Used by the audit relay
(``corral.audit.relay``, JSON objects both ways), the proxy's end of it
(``corral.proxy.audit``) and the launcher's control socket to the proxy child
(``corral.runtime.proxyproc``).

Invariants:
- A reader never trusts a length: a frame over its ``limit`` raises ``ValueError`` before any
  of its body is read or buffered, so a hostile peer cannot make the other side allocate.
- A peer that closes mid-frame is an ``EOFError`` (or ``None`` from ``split``'s caller
  keeping the partial frame), never a short body taken as whole.
- JSON frames carry one object; anything else is ``ValueError``.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the launcher imports this module: asyncio (and ssl) cost it ~20 ms
    import asyncio

__all__ = ["ENCODER", "HEADER", "frame", "frame_json", "load_object", "read_frame", "recv_exact",
           "recv_frame", "send_frame", "split"]

HEADER = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


# One encoder: json.dumps with any non-default option builds a new encoder on every call, and
# the proxy frames an audit event on the path of every audited request.
ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def frame_json(obj: dict[str, Any]) -> bytes:
    """``obj`` as one compact JSON frame (``default=str``: dates and paths become text)."""
    return frame(ENCODER.encode(obj).encode())


def load_object(body: bytes) -> dict[str, Any]:
    """A frame's JSON object; the body must be UTF-8 (``ValueError`` otherwise)."""
    # decoded first: json.loads of bytes guesses the encoding, several times the parse's cost
    obj = json.loads(body.decode())
    if not isinstance(obj, dict):
        raise ValueError("frame is not a JSON object")
    return obj


def _check(n: int, limit: int | None) -> int:
    if limit is not None and n > limit:
        raise ValueError(f"frame of {n} bytes exceeds {limit}")
    return n


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket; ``EOFError`` if it closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("socket closed mid-frame")
        data += chunk
    return data


def send_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(frame(body))


def recv_frame(sock: socket.socket, limit: int | None = None) -> bytes:
    (n,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    return recv_exact(sock, _check(n, limit))


async def read_frame(reader: asyncio.StreamReader, limit: int | None = None) -> bytes:
    """One frame from an asyncio stream (``IncompleteReadError`` if it ends first)."""
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return await reader.readexactly(_check(n, limit))


def split(buf: bytearray, limit: int | None = None) -> list[bytes]:
    """The bodies of the complete frames at the start of ``buf``, removed from it; a partial
    frame stays for the next call."""
    out: list[bytes] = []
    pos = 0
    size = HEADER.size
    while len(buf) - pos >= size:
        (n,) = HEADER.unpack_from(buf, pos)
        _check(n, limit)
        if len(buf) - pos - size < n:
            break
        out.append(bytes(buf[pos + size : pos + size + n]))
        pos += size + n
    del buf[:pos]
    return out
