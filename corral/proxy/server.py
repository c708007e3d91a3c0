"""The accept loop: one task per client connection, explicit or transparently captured.

Invariants:
- A connection whose conntrack original destination differs from the listener's own address
  was redirected by netfilter and is handled as transparent capture; all others speak the
  explicit proxy protocol.
- An unexpected exception in a handler closes that connection (fail closed) and is audited;
  it never takes the server down and never lets bytes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from corral.proxy.context import ProxyContext
from corral.proxy.http1 import Session
from corral.proxy.streams import RawStream
from corral.proxy.transparent import handle_transparent, original_destination
from corral.proxy.upstream import STREAM_LIMIT

__all__ = ["serve"]


async def _client(
    ctx: ProxyContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    stream = RawStream(reader, writer)
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        original = original_destination(sock) if sock is not None else None
        if original is not None:
            await handle_transparent(ctx, stream, *original)
        else:
            await Session(ctx, stream).run()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        pass
    except asyncio.CancelledError:
        return  # the proxy is stopping: the connection just ends
    except Exception as err:  # fail closed: drop the connection, keep serving others
        with contextlib.suppress(Exception):
            await ctx.audit.emit(
                "error", component="proxy", message=f"{type(err).__name__}: {err}"[:300]
            )
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(ctx: ProxyContext, listen_socks: list[socket.socket]) -> list[asyncio.Server]:
    servers = []
    for sock in listen_socks:
        sock.setblocking(False)
        server = await asyncio.start_server(
            lambda r, w: _client(ctx, r, w), sock=sock, limit=STREAM_LIMIT
        )
        servers.append(server)
    return servers
