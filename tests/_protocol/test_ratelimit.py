"""The shared connect-rate limit, with the time given."""

from __future__ import annotations

import pytest

from neuroio._protocol.ratelimit import RateLimit


def run(limit: RateLimit, arrivals: list[float]) -> list[float]:
    """When each attempt starts if each waits, in arrival order, for :meth:`delay`."""
    starts = []
    now = 0.0
    for arrival in arrivals:
        now = max(now, arrival)
        now += limit.delay(now)
        assert limit.delay(now) == 0.0
        limit.started(now)
        starts.append(now)
    return starts


def test_attempts_arriving_together_start_one_interval_apart() -> None:
    starts = run(RateLimit(20.0), [100.0] * 5)
    assert starts == pytest.approx([100.0, 100.05, 100.10, 100.15, 100.20])


def test_no_window_of_one_second_holds_more_than_the_rate() -> None:
    # A thousand streams back from an outage at once, and late wake-ups in bunches.
    arrivals = [100.0 + (k // 7) * 0.3 for k in range(1000)]
    starts = run(RateLimit(20.0), arrivals)
    # (Less a nanosecond: starts exactly one interval apart must not be counted 21 by rounding.)
    most = max(sum(1 for s in starts if t <= s < t + 1.0 - 1e-9) for t in starts)
    assert most <= 20
    assert starts[-1] - starts[0] == pytest.approx(999 / 20.0)


def test_a_quiet_period_earns_at_most_the_burst() -> None:
    limit = RateLimit(10.0, burst=2)
    assert run(limit, [0.0]) == [0.0]
    # A minute later: two at once, then spaced again.
    assert run(limit, [60.0] * 4) == pytest.approx([60.0, 60.0, 60.1, 60.2])


def test_slots_follow_the_clock_when_attempts_come_slowly() -> None:
    assert run(RateLimit(2.0), [0.0, 1.0, 2.0, 2.1]) == pytest.approx([0, 1, 2, 2.5])


def test_delay_books_nothing() -> None:
    limit = RateLimit(4.0)
    limit.started(10.0)
    assert limit.delay(10.1) == pytest.approx(0.15)
    assert limit.delay(10.1) == pytest.approx(0.15)
    assert limit.delay(10.25) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate, burst)
