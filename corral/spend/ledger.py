"""Budget arithmetic: reserve a request's worst case against every budget that applies, renew
the reservation while the response streams, settle it to the metered cost.

Periods are ``run`` (the ledger's lifetime: one ``corral run``), ``day``, ``week`` (Monday
00:00 UTC) and ``month``, on the UTC calendar. A reservation counts in the window it was made
in, and so does its settlement.

Invariants (``LocalLedger``; a server ledger keeps the same ones in one database transaction):
- ``reserve`` checks and books every budget under one lock: for each budget, settled spend plus
  live reservations plus the new amount never exceeds its amount, so concurrent requests can
  never overshoot what they reserved.
- A reservation not renewed within its ``ttl`` expires: it is charged in full (fail closed on
  money; the request may have been served) and stops holding the budget open; a late
  ``settle`` corrects that charge to the metered amount.
- ``settle`` is idempotent: a second settle of one reservation changes nothing.
- A ledger that cannot answer (a server ledger whose server is away) raises
  ``LedgerUnavailable`` from ``reserve``: the request is refused (fail closed on money).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, Protocol

from corral.spend.usage import format_usd

__all__ = ["PERIODS", "Budget", "Ledger", "LedgerUnavailable", "LocalLedger", "Period", "Refusal",
           "Reservation", "window_of"]

Period = Literal["run", "day", "week", "month"]
PERIODS: tuple[Period, ...] = ("run", "day", "week", "month")
DEFAULT_TTL = 120.0


class Budget(NamedTuple):
    amount: int  # micro-dollars
    period: Period
    label: str  # where it was set, e.g. "team.yaml:12"


class Reservation(NamedTuple):
    id: int
    amount: int
    windows: tuple[tuple[Budget, datetime | None], ...]


class Refusal(NamedTuple):
    budget: Budget
    spent: int
    reserved: int
    needed: int
    resets: datetime | None  # None: a run budget, which never resets

    @property
    def message(self) -> str:
        when = ("it lasts the whole run" if self.resets is None else
                f"it resets at {self.resets.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return (f"corral budget exhausted: {format_usd(self.budget.amount)} per "
                f"{self.budget.period} ({self.budget.label}); {format_usd(self.spent)} spent, "
                f"{format_usd(self.reserved)} held by requests in flight, this request needs "
                f"up to {format_usd(self.needed)}; {when}")


class LedgerUnavailable(Exception):
    """The ledger cannot decide (its message names why); the request is refused."""


class Ledger(Protocol):
    def reserve(self, budgets: Sequence[Budget], amount: int) -> Reservation | Refusal: ...

    def renew(self, reservation: Reservation) -> bool: ...

    def settle(self, reservation: Reservation, actual: int, usage: Any = None) -> None:
        """``usage``: the ``UsageRecord`` of what was charged, for ledgers that keep it."""

    def expire(self) -> int: ...


def window_of(period: Period, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(start, end) of the window holding ``now``; (None, None) for ``run``."""
    if period == "run":
        return None, None
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return start, end


class _Held(NamedTuple):
    reservation: Reservation
    deadline: float


class LocalLedger:
    """In-process budgets for a run without a server. Thread-safe; asyncio callers call it
    directly (every method is short and never blocks on I/O)."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._lock = threading.Lock()
        self._ttl, self._clock, self._now = ttl, clock, now
        self._ids = itertools.count(1)
        self._spent: dict[tuple[Budget, datetime | None], int] = {}
        self._reserved: dict[tuple[Budget, datetime | None], int] = {}
        self._live: dict[int, _Held] = {}
        self._expired: dict[int, Reservation] = {}  # charged in full, awaiting a late settle
        self._next_check = 0.0  # reserve() looks for stale reservations at most this often

    def reserve(self, budgets: Sequence[Budget], amount: int) -> Reservation | Refusal:
        if amount < 0:
            raise ValueError("a reservation is never negative")
        now = None  # the calendar is read only for a budget that has windows
        with self._lock:
            if self._clock() >= self._next_check:
                self._expire_locked()
            windows = []
            for budget in budgets:
                if budget.period == "run":
                    start = end = None
                else:
                    now = now or self._now()
                    start, end = window_of(budget.period, now)
                key = (budget, start)
                spent, held = self._spent.get(key, 0), self._reserved.get(key, 0)
                if spent + held + amount > budget.amount:
                    return Refusal(budget, spent, held, amount, end)
                windows.append(key)
            reservation = Reservation(next(self._ids), amount, tuple(dict.fromkeys(windows)))
            for key in reservation.windows:
                self._reserved[key] = self._reserved.get(key, 0) + amount
            self._live[reservation.id] = _Held(reservation, self._clock() + self._ttl)
            return reservation

    def renew(self, reservation: Reservation) -> bool:
        """False once the reservation has expired or settled (the caller stops renewing)."""
        with self._lock:
            if reservation.id not in self._live:
                return False
            self._live[reservation.id] = _Held(reservation, self._clock() + self._ttl)
            return True

    def settle(self, reservation: Reservation, actual: int, usage: Any = None) -> None:
        if actual < 0:
            raise ValueError("a charge is never negative")
        with self._lock:
            if self._live.pop(reservation.id, None) is not None:
                for key in reservation.windows:
                    self._reserved[key] -= reservation.amount
                    self._spent[key] = self._spent.get(key, 0) + actual
            elif self._expired.pop(reservation.id, None) is not None:
                for key in reservation.windows:
                    self._spent[key] += actual - reservation.amount

    def expire(self) -> int:
        """Charge and drop reservations past their deadline; how many there were."""
        with self._lock:
            return self._expire_locked()

    def _expire_locked(self) -> int:
        now = self._clock()
        # A reservation expires at most a quarter TTL (1 s at most) late: per request, the
        # scan over live reservations would cost more than the rest of the ledger.
        self._next_check = now + min(self._ttl / 4, 1.0)
        stale = [held.reservation for held in self._live.values() if held.deadline <= now]
        for reservation in stale:
            del self._live[reservation.id]
            self._expired[reservation.id] = reservation
            for key in reservation.windows:
                self._reserved[key] -= reservation.amount
                self._spent[key] = self._spent.get(key, 0) + reservation.amount
        return len(stale)

    def spent(self, budget: Budget) -> tuple[int, int]:
        """(settled, reserved) in the budget's current window."""
        start, _ = window_of(budget.period, self._now())
        with self._lock:
            return self._spent.get((budget, start), 0), self._reserved.get((budget, start), 0)
