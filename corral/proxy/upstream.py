"""Dial the upstream: directly to a checked address, or through a corporate proxy.

Invariants:
- Direct dials go to the address ``resolve`` chose, never to a name.
- With an upstream proxy every connection is a CONNECT through it (h11 speaks that exchange);
  name resolution then happens at the corporate proxy, whose own policy applies there.
- TLS to the upstream verifies the certificate for the *policy* host name.
- Failures raise ``UpstreamError`` with the status to answer (502, or 504 on timeout).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from corral.proxy.streams import READ_SIZE, RawStream

__all__ = ["CONNECT_TIMEOUT", "UpstreamError", "UpstreamProxy", "dial"]

CONNECT_TIMEOUT = 15.0
STREAM_LIMIT = 1024 * 1024


class UpstreamError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> UpstreamProxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream proxy must be http://HOST:PORT, got {url!r}")
        return cls(parts.hostname, parts.port or 3128)


async def _connect_via(proxy: UpstreamProxy, host: str, port: int) -> RawStream:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port, limit=STREAM_LIMIT)
    conn = h11.Connection(h11.CLIENT)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer.write(
        conn.send(h11.Request(method="CONNECT", target=authority, headers=[("Host", authority)]))
        or b""
    )
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_SIZE))
            continue
        if isinstance(event, h11.Response):
            if event.status_code != 200:
                writer.close()
                raise UpstreamError(
                    502, f"upstream proxy refused CONNECT {authority}: {event.status_code}"
                )
            break
        if isinstance(event, h11.ConnectionClosed):
            raise UpstreamError(502, "upstream proxy closed the connection")
    return RawStream(reader, writer, bytes(conn.trailing_data[0]))


async def dial(
    address: str,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    proxy: UpstreamProxy | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> RawStream:
    try:
        async with asyncio.timeout(timeout):
            if proxy is not None:
                stream = await _connect_via(proxy, host, port)
                if tls is not None:
                    await stream.writer.start_tls(tls, server_hostname=host)
                return stream
            reader, writer = await asyncio.open_connection(
                address,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
                limit=STREAM_LIMIT,
            )
            return RawStream(reader, writer)
    except TimeoutError:
        raise UpstreamError(504, f"timed out connecting to {host}:{port}") from None
    except ssl.SSLCertVerificationError as err:
        raise UpstreamError(
            502,
            f"TLS verification of {host} failed: {err.verify_message}. If {host} uses a private "
            "CA, add `tls_ca: /path/to/ca.pem` to its rule.",
        ) from None
    except ssl.SSLError as err:
        raise UpstreamError(502, f"TLS with {host} failed: {err.reason or err}") from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise UpstreamError(502, f"cannot connect to {host}:{port}: {reason}") from None
