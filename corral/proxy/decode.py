"""Content-Encoding undone, for response bodies that must be scanned for an injected secret.

The proxy asks for ``Accept-Encoding: identity`` on requests that carry an injected credential
(``response_scrub.identity``); an upstream that compresses anyway has its body decoded here so
the scrubber sees the plain bytes, and the agent gets it decoded (without Content-Encoding).

Invariants:
- Only ``gzip`` (``x-gzip``, concatenated members included) and ``deflate`` (zlib-wrapped, or
  raw as some servers send it) are decoded, last-applied first; any other coding (``br``,
  ``zstd``, ``compress``, unknown) is refused with ``UnsupportedEncoding`` before a byte of the
  body is relayed: a body the proxy cannot read is not handed on.
- Decoded output comes in pieces of at most ``PIECE`` bytes as a generator, so a small
  compressed body never makes the proxy hold a large decoded one (the caller drains between
  pieces). Corrupt input or bytes after a deflate stream raise ``DecodeError``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

__all__ = ["PIECE", "DecodeError", "Decoder", "UnsupportedEncoding", "codings"]

PIECE = 256 * 1024
_GZIP = frozenset({"gzip", "x-gzip"})


class UnsupportedEncoding(Exception):
    """A Content-Encoding the proxy cannot decode."""


class DecodeError(Exception):
    """The compressed body is corrupt."""


def codings(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The Content-Encoding codings in the order applied, ``identity`` left out."""
    out: list[str] = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            out += [c for c in (i.strip().lower() for i in value.decode("latin-1").split(","))
                    if c and c != "identity"]
    return out


class _Zlib:
    def __init__(self, coding: str) -> None:
        self.gzip = coding in _GZIP
        self.obj: zlib._Decompress | None = None
        self.head = b""  # deflate: the first bytes, until its zlib header can be recognised

    def _start(self, data: bytes) -> zlib._Decompress:
        if self.gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        cmf, flg = data[0], data[1]
        wrapped = cmf & 0x0F == 8 and ((cmf << 8) | flg) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.obj is None:
            if not self.gzip and len(self.head) + len(data) < 2:
                self.head += data
                return
            data, self.head = self.head + data, b""
            self.obj = self._start(data)
        try:
            while data:
                obj = self.obj
                if obj.eof:
                    if not self.gzip:
                        raise DecodeError("data after the end of a deflate stream")
                    obj = self.obj = self._start(data)  # the next gzip member
                out = obj.decompress(data, PIECE)
                if out:
                    yield out
                data = obj.unconsumed_tail or (obj.unused_data if obj.eof else b"")
        except zlib.error as err:
            raise DecodeError(f"invalid compressed body: {err}") from None

    def finish(self) -> Iterator[bytes]:
        if self.obj is None:
            if self.head:
                raise DecodeError("truncated compressed body")
            return
        try:
            out = self.obj.flush()
        except zlib.error as err:
            raise DecodeError(f"invalid compressed body: {err}") from None
        if out:
            yield out


class Decoder:
    """Undoes ``codings`` (as listed in Content-Encoding, so the last is undone first)."""

    def __init__(self, applied: Sequence[str]) -> None:
        unknown = [c for c in applied if c not in _GZIP and c != "deflate"]
        if unknown:
            raise UnsupportedEncoding(", ".join(unknown))
        self.stages = [_Zlib(c) for c in reversed(applied)]

    def _through(self, i: int, data: bytes) -> Iterator[bytes]:
        if i == len(self.stages):
            yield data
            return
        for piece in self.stages[i].feed(data):
            yield from self._through(i + 1, piece)

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def finish(self) -> Iterator[bytes]:
        for i, stage in enumerate(self.stages):
            for piece in stage.finish():
                yield from self._through(i + 1, piece)
