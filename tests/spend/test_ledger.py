"""The local ledger: concurrent reservations never overshoot, windows follow the UTC calendar,
expiry charges in full and a late settle corrects it."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.spend import Budget, LocalLedger, Refusal, Reservation, window_of

RUN = Budget(1_000_000, "run", "p.yaml:3")
DAY = Budget(700_000, "day", "q.yaml:5")


def test_threads_hammering_one_budget_never_overshoot() -> None:
    ledger = LocalLedger()
    admitted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(400):
            amount = rng.randint(1, 5000)
            got = ledger.reserve([RUN, DAY], amount)
            if isinstance(got, Reservation):
                spent, held = ledger.spent(RUN)
                assert spent + held <= RUN.amount
                actual = rng.randint(0, amount)
                ledger.settle(got, actual)
                with lock:
                    admitted.append(actual)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, held = ledger.spent(DAY)
    assert held == 0 and spent == sum(admitted) <= DAY.amount
    assert ledger.spent(RUN) == (spent, 0)


@settings(max_examples=200)
@given(ops=st.lists(st.tuples(st.sampled_from(["reserve", "settle", "expire", "tick"]),
                              st.integers(0, 400_000)), max_size=60))
def test_any_sequence_keeps_reserved_plus_spent_within_budgets(ops: list[tuple[str, int]]) -> None:
    now = [0.0]
    ledger = LocalLedger(ttl=10, clock=lambda: now[0])
    live: list[Reservation] = []
    for op, n in ops:
        if op == "reserve":
            got = ledger.reserve([RUN, DAY], n)
            if isinstance(got, Reservation):
                live.append(got)
            else:
                assert got.spent + got.reserved + n > got.budget.amount
        elif op == "settle" and live:
            res = live.pop(n % len(live))
            ledger.settle(res, n % (res.amount + 1))
            ledger.settle(res, 0)  # idempotent
        elif op == "expire":
            ledger.expire()
        else:
            now[0] += n / 40_000
        for budget in (RUN, DAY):
            assert sum(ledger.spent(budget)) <= budget.amount


def test_refusal_names_the_budget_its_period_and_reset() -> None:
    fixed = datetime(2025, 3, 14, 15, 9, tzinfo=UTC)
    ledger = LocalLedger(now=lambda: fixed)
    assert isinstance(ledger.reserve([RUN, DAY], 600_000), Reservation)
    refusal = ledger.reserve([RUN, DAY], 200_000)
    assert isinstance(refusal, Refusal) and refusal.budget == DAY
    assert "$0.70 per day (q.yaml:5)" in refusal.message
    assert "resets at 2025-03-15T00:00:00Z" in refusal.message
    refusal = ledger.reserve([RUN], 500_000)
    assert isinstance(refusal, Refusal) and "lasts the whole run" in refusal.message


def test_windows_are_utc_calendar() -> None:
    t = datetime(2024, 12, 31, 23, 59, tzinfo=UTC)  # a Tuesday
    assert window_of("day", t) == (datetime(2024, 12, 31, tzinfo=UTC),
                                   datetime(2025, 1, 1, tzinfo=UTC))
    assert window_of("week", t) == (datetime(2024, 12, 30, tzinfo=UTC),
                                    datetime(2025, 1, 6, tzinfo=UTC))
    assert window_of("month", t) == (datetime(2024, 12, 1, tzinfo=UTC),
                                     datetime(2025, 1, 1, tzinfo=UTC))
    assert window_of("run", t) == (None, None)


def test_a_new_day_has_a_fresh_budget() -> None:
    now = [datetime(2025, 1, 1, 23, tzinfo=UTC)]
    ledger = LocalLedger(now=lambda: now[0])
    res = ledger.reserve([DAY], 700_000)
    assert isinstance(res, Reservation)
    ledger.settle(res, 700_000)
    assert isinstance(ledger.reserve([DAY], 1), Refusal)
    now[0] = datetime(2025, 1, 2, 0, 1, tzinfo=UTC)
    assert isinstance(ledger.reserve([DAY], 700_000), Reservation)


def test_expiry_charges_in_full_renewal_keeps_and_late_settle_corrects() -> None:
    now = [0.0]
    ledger = LocalLedger(ttl=10, clock=lambda: now[0])
    kept, lost = ledger.reserve([RUN], 300_000), ledger.reserve([RUN], 200_000)
    assert isinstance(kept, Reservation) and isinstance(lost, Reservation)
    now[0] = 8
    assert ledger.renew(kept)
    now[0] = 12
    assert ledger.expire() == 1
    assert ledger.spent(RUN) == (200_000, 300_000)
    assert not ledger.renew(lost)
    ledger.settle(lost, 50_000)
    ledger.settle(kept, 10)
    assert ledger.spent(RUN) == (50_010, 0)
