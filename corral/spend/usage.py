"""The records the meter produces and the price table consumes.

Invariants: token counts are non-negative ``int`` (never ``bool``, never a float); ``input``
counts only input tokens billed at the plain input price (cached reads and cache writes are
their own kinds, so the four kinds never overlap); money is whole micro-dollars (``int``,
1 USD = 1,000,000) so sums never drift.
"""

from typing import NamedTuple

__all__ = ["MICRO", "Tokens", "Usage", "format_usd"]

MICRO = 1_000_000  # micro-dollars in a dollar


class Tokens(NamedTuple):
    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0


class Usage(NamedTuple):
    """What one response said it cost. ``complete`` is True only once the final usage was seen
    (Anthropic ``message_delta``, OpenAI's usage chunk, Responses ``response.completed``, or
    the top-level ``usage`` of a JSON body)."""

    tokens: Tokens
    complete: bool
    model: str | None = None
    request_id: str | None = None


def format_usd(micro: int) -> str:
    """``$1.23`` (cents, rounded up so a limit is never shown lower than it is), or more
    digits below a cent."""
    if 0 < micro < 10_000:
        return f"${micro / MICRO:.6f}".rstrip("0")
    cents = -(-micro // 10_000)
    return f"${cents // 100}.{cents % 100:02d}"
