"""One response scrubbed on its way to the agent: head, body, framing, encoding, audit.

Built by ``forward`` for a request that carried an injected credential (``plan`` is not None);
every other response takes the unscrubbed path in ``respond`` and pays nothing.

Invariants:
- The request such a response answers asked for ``Accept-Encoding: identity`` (``identity``,
  applied before an AWS request is signed). A response that is encoded anyway is decoded
  (``decode``: gzip, deflate) and relayed without Content-Encoding; any other coding is a 502
  before the head is relayed.
- Header names, values and the reason phrase of every head (interim ones included) are
  scrubbed; the body streams through ``scrub.BodyScrub`` (no whole-body buffering).
- Content-Length is dropped (the agent writer then chunks, or closes after, the body) whenever
  a replacement may change the body's length or the body is decoded; kept otherwise.
- Each head with replacements is audited as ``credential.scrub`` (binding, host, count,
  ``where=header``) before it is relayed; a body with replacements once, at its end, before
  the response is finished (``where=body``). Never the secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from corral.proxy.agent import AgentConnection
from corral.proxy.decode import DecodeError, Decoder, UnsupportedEncoding, codings
from corral.proxy.scrub import BodyScrub, Needles
from corral.proxy.upstream import UpstreamError

__all__ = ["ResponseScrub", "identity"]

Headers = Sequence[tuple[bytes, bytes]]
_DROP_ENCODED = frozenset({b"content-encoding", b"content-length"})


def identity(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` asking for an unencoded response body (the agent's Accept-Encoding out)."""
    out = [(n, v) for n, v in headers if n.lower() != b"accept-encoding"]
    out.append((b"accept-encoding", b"identity"))
    return out


class ResponseScrub:
    def __init__(self, needles: Needles, host: str) -> None:
        self.needles = needles
        self.host = host
        self.body: BodyScrub = needles.stream()
        self.decoder: Decoder | None = None

    async def _audit(self, agent: AgentConnection, count: int, where: str) -> None:
        await agent.ctx.audit.emit(
            "credential.scrub", binding=self.needles.binding, host=self.host, count=count,
            where=where,
        )

    async def interim(self, agent: AgentConnection, headers: Headers) -> list[tuple[bytes, bytes]]:
        out, _reason, count = self.needles.headers(headers, b"")
        if count:
            await self._audit(agent, count, "header")
        return out

    async def head(
        self, agent: AgentConnection, headers: Headers, reason: bytes
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The final head, scrubbed and re-framed; 502 for an encoding it cannot decode."""
        out, reason, count = self.needles.headers(headers, reason)
        applied = codings(out)
        if agent.response.method == b"HEAD":
            pass  # no body: nothing to decode or re-frame
        elif applied:
            try:
                self.decoder = Decoder(applied)
            except UnsupportedEncoding as err:
                raise UpstreamError(
                    502, f"upstream sent Content-Encoding {err} on a response that may carry an "
                    "injected credential (asked for identity); it cannot be scanned"
                ) from None
            out = [(n, v) for n, v in out if n.lower() not in _DROP_ENCODED]
        elif not self.needles.same_length:
            out = [(n, v) for n, v in out if n.lower() != b"content-length"]
        if count:
            await self._audit(agent, count, "header")
        return out, reason

    async def data(self, agent: AgentConnection, data: bytes) -> None:
        decoder = self.decoder
        if decoder is None:
            agent.response.data(self.body.feed(data))
            return
        try:
            for piece in decoder.feed(data):
                agent.response.data(self.body.feed(piece))
                await agent.client.drain()  # a small compressed body can decode to a large one
        except DecodeError as err:
            raise UpstreamError(502, str(err)) from None

    async def end(self, agent: AgentConnection) -> None:
        if self.decoder is not None:
            try:
                for piece in self.decoder.finish():
                    agent.response.data(self.body.feed(piece))
                    await agent.client.drain()
            except DecodeError as err:
                raise UpstreamError(502, str(err)) from None
        agent.response.data(self.body.flush())
        if self.body.count:
            await self._audit(agent, self.body.count, "body")
