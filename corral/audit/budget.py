"""A sandbox's audit budget: repeated events counted, not repeated; floods bounded.

The proxy's events reach the store through ``corral.audit.relay`` (one relay per sandbox);
this module decides, for each of them, whether it is written as its own event, folded into a
counted event, or refused. Pure logic (the relay owns the clock, the store and the acks), so
the rule is tested on its own (``tests/audit/test_budget.py``).

Rules:
- Only refusals are folded or slowed: denied requests and DNS queries (``dns.query`` without
  a ``NOERROR`` answer), limit events and errors (``AGGREGATED``). They cost a looping or
  hostile agent nothing to produce (no upstream round trip), so they are the flood. Allowed
  requests, allowed DNS answers, injections and scrubs are always written as their own events
  at the next group commit, never held or slowed: a busy agent's real work is never delayed
  by the budget, and its disk use is bounded by the bytes budget below.
- Aggregation: events that are refusals are keyed by their type and their whole
  payload except the measurements (``VOLATILE``: durations, byte counts, client address).
  In each ``window`` (1 s) a key gets ``burst`` (4) events of its own; later ones with the same
  key are *held* and written once, when the window ends, as one event of that payload with
  ``count`` = how many it stands for (byte counts summed). Two events whose payloads differ in
  anything else (a name, a host, a path, a rule, a decision, an rcode, a binding) have
  different keys and are never folded together: every distinct allow, deny and injection
  still gets its own event. A held event is acknowledged only once its counted event is
  committed, so the audit guarantee holds for it too (the action waits up to one window).
- Rate: written events draw from a token bucket (``rate``/s, ``rate * 10`` deep). When it
  runs dry the sandbox is *flooding*: one ``audit.flood`` event is written, every repeat is
  held from its second occurrence on (``burst`` drops to 0), and the relay waits for tokens
  before it commits, which slows the flooding proxy (back-pressure) instead of the disk
  filling. The flood ends when the bucket is full again; the next one gets its own event.
- Bytes: past ``max_bytes`` written for the sandbox, one ``audit.flood`` event says so and
  every further event is refused: the proxy fails closed (the query is not answered, the
  request not made), as when the store is unavailable; a last ``audit.flood`` at the end
  counts the refusals.

Defaults are per sandbox: ``CORRAL_AUDIT_RATE`` (events/s, default 200) and
``CORRAL_AUDIT_BYTES`` (a size, default 256MiB).
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["AGGREGATED", "HOLD", "OWN", "REFUSE", "VOLATILE", "Budget", "Held", "from_env",
           "refusal"]

AGGREGATED = frozenset({"dns.query", "proxy.deny", "sandbox.limit", "error"})
VOLATILE = frozenset({"duration_ms", "bytes_in", "bytes_out", "client"})
_SUMMED = ("bytes_in", "bytes_out")
ROW_OVERHEAD = 320  # hash, prev, actor, ids and index entries around an event's payload
OWN, HOLD, REFUSE = "own", "hold", "refuse"


def refusal(type_: str, data: dict[str, Any]) -> bool:
    """Whether an event records a refusal (what the budget folds and slows)."""
    if type_ not in AGGREGATED:
        return False
    return type_ != "dns.query" or data.get("rcode") != "NOERROR"


class Held:
    """Events of one key waiting for their window's end: one counted event, many acks."""

    __slots__ = ("count", "data", "deadline", "tokens", "type")

    def __init__(self, type_: str, data: dict[str, Any], deadline: float) -> None:
        self.type, self.data, self.deadline = type_, dict(data), deadline
        self.data.pop("duration_ms", None)
        self.data.pop("client", None)
        self.count = 0
        self.tokens: list[Any] = []  # the relay's: whom to acknowledge

    def add(self, data: dict[str, Any], token: Any) -> None:
        if self.count:
            for key in _SUMMED:
                if isinstance(data.get(key), int):
                    self.data[key] = int(self.data.get(key) or 0) + data[key]
        self.count += 1
        self.tokens.append(token)

    def event(self) -> dict[str, Any]:
        return {**self.data, "count": self.count}


class Budget:
    def __init__(self, *, rate: float = 200.0, max_bytes: int = 256 * 1024**2,
                 window: float = 1.0, burst: int = 4, now: float = 0.0) -> None:
        self.rate, self.max_bytes, self.window, self.burst = rate, max_bytes, window, burst
        self.depth = rate * 10
        self.tokens = self.depth
        self._filled_at = now
        self.written_bytes = 0
        self.written = 0
        self.flooding = False
        self.exhausted = False
        self.refused = 0
        self.summarised = 0  # events folded into counted ones
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [start, own count]
        self.held: dict[tuple[str, str], Held] = {}
        self.notices: list[dict[str, Any]] = []  # audit.flood events to write

    @staticmethod
    def key(type_: str, data: dict[str, Any]) -> tuple[str, str]:
        stable = {k: v for k, v in data.items() if k not in VOLATILE}
        return type_, json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.depth, self.tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self.flooding and self.tokens >= self.depth:
            self.flooding = False

    def offer(self, type_: str, data: dict[str, Any], now: float, token: Any = None) -> str:
        """``OWN`` (write it now), ``HOLD`` (folded into ``held[key]``) or ``REFUSE``."""
        self._refill(now)
        if self.exhausted:
            self.refused += 1
            return REFUSE
        if not refusal(type_, data):
            return OWN
        key = self.key(type_, data)
        win = self._windows.get(key)
        if win is None or now - win[0] >= self.window:
            if key not in self.held:  # else its counted event is still to be written
                self._windows[key] = [now, 1.0]
                return OWN
            win = self._windows[key]
        if win[1] < (0 if self.flooding else self.burst):
            win[1] += 1
            return OWN
        held = self.held.get(key)
        if held is None:
            held = self.held[key] = Held(type_, data, win[0] + self.window)
        held.add(data, token)
        self.summarised += 1
        return HOLD

    def due(self, now: float, *, all_: bool = False) -> list[Held]:
        """Counted events whose window has ended (every one with ``all_``: the end)."""
        out = [h for h in self.held.values() if all_ or h.deadline <= now]
        for h in out:
            key = self.key(h.type, h.data)
            self.held.pop(key, None)
            self._windows.pop(key, None)
        if len(self._windows) > 4096:  # forget ended windows: memory stays bounded
            self._windows = {k: w for k, w in self._windows.items()
                             if now - w[0] < self.window or k in self.held}
        return out

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self.held.values()), default=None)

    def wrote(self, type_: str, data: dict[str, Any], now: float, size: int | None = None
              ) -> None:
        """Account an event written (own or counted); may start a flood or exhaust.
        ``size``: the payload's encoded length, when the caller already has it."""
        self._refill(now)
        self.written += 1
        if size is None:
            size = len(json.dumps(data, default=str))
        self.written_bytes += size + len(type_) + ROW_OVERHEAD
        if not refusal(type_, data):
            return self._check_bytes()
        self.tokens -= 1
        if self.tokens <= 0 and not self.flooding:
            self.flooding = True
            self.notices.append({"reason": "rate", "events": self.written,
                                 "bytes": self.written_bytes,
                                 "detail": f"more than {self.rate:g} events/s: repeats are "
                                           "counted, the proxy is slowed"})
        self._check_bytes()

    def _check_bytes(self) -> None:
        if self.written_bytes >= self.max_bytes and not self.exhausted:
            self.exhausted = True
            self.notices.append({"reason": "bytes", "events": self.written,
                                 "bytes": self.written_bytes,
                                 "detail": f"audit budget of {self.max_bytes} bytes used: "
                                           "further proxy events are refused (fail closed)"})

    def wait(self) -> float:
        """Seconds to wait before the next commit while flooding (the back-pressure)."""
        return min(0.25, -self.tokens / self.rate) if self.tokens < 0 else 0.0

    def final(self) -> dict[str, Any] | None:
        """The closing ``audit.flood`` event, if anything was refused."""
        if not self.refused:
            return None
        return {"reason": "end", "events": self.written, "bytes": self.written_bytes,
                "refused": self.refused, "summarised": self.summarised}


def from_env(now: float) -> Budget:
    """A budget with ``CORRAL_AUDIT_RATE`` / ``CORRAL_AUDIT_BYTES`` applied (bad values are
    ignored in favour of the defaults: they only ever tighten or loosen a bound)."""
    from corral.policy.units import parse_size

    kw: dict[str, Any] = {}
    try:
        rate = float(os.environ.get("CORRAL_AUDIT_RATE", "") or 0)
        if rate > 0:
            kw["rate"] = rate
    except ValueError:
        pass
    try:
        size = parse_size(os.environ.get("CORRAL_AUDIT_BYTES", "") or "none")
        if size:
            kw["max_bytes"] = size
    except ValueError:
        pass
    return Budget(now=now, **kw)
