"""Byte pipes between two streams (direct tunnels, upgraded WebSockets).

Invariant: each direction half-closes its destination when its source ends, and the pipe
returns only when both directions are done (or one failed, which tears both down).
"""

from __future__ import annotations

import asyncio
import contextlib

from corral.proxy.streams import Stream

__all__ = ["pipe"]


async def _one(src: Stream, dst: Stream) -> int:
    total = 0
    try:
        while data := await src.read():
            total += len(data)
            dst.write(data)
            await dst.drain()
    finally:
        with contextlib.suppress(Exception):
            dst.write_eof()
    return total


async def pipe(client: Stream, upstream: Stream) -> tuple[int, int]:
    """Copy both ways; returns (bytes client->upstream, bytes upstream->client)."""
    up = asyncio.ensure_future(_one(client, upstream))
    down = asyncio.ensure_future(_one(upstream, client))
    done, _pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
    if any(t.exception() is not None for t in done):
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        return 0, 0
    results = await asyncio.gather(up, down, return_exceptions=True)
    sent = results[0] if isinstance(results[0], int) else 0
    received = results[1] if isinstance(results[1], int) else 0
    return sent, received
