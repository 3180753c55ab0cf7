"""The shared connect-rate limit, with the time given."""

from __future__ import annotations

import pytest

from neuroio._protocol.ratelimit import RateLimit


def test_attempts_are_spaced_one_interval_apart() -> None:
    limit = RateLimit(20.0)
    waits = [limit.reserve(100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])


def test_no_window_of_one_second_holds_more_than_rate_plus_burst() -> None:
    limit = RateLimit(20.0, burst=3)
    starts = sorted(100.0 + limit.reserve(100.0) for _ in range(1000))
    most = max(sum(1 for s in starts if t <= s < t + 1.0) for t in starts)
    assert most <= 20 + 3
    assert starts[-1] - starts[0] == pytest.approx((1000 - 3) / 20.0)


def test_a_quiet_period_earns_at_most_the_burst() -> None:
    limit = RateLimit(10.0, burst=2)
    assert limit.reserve(0.0) == 0.0
    # A minute later: two at once, then spaced again.
    waits = [limit.reserve(60.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2])


def test_slots_follow_the_clock_when_callers_come_slowly() -> None:
    limit = RateLimit(2.0)
    assert [limit.reserve(t) for t in (0.0, 1.0, 2.0, 2.1)] == pytest.approx([0, 0, 0, 0.4])


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate, burst)
