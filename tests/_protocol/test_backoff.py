"""The reconnect backoff policy: exponential caps, full jitter, reset."""

from __future__ import annotations

import random

import pytest

from neuroio._protocol.backoff import Backoff


def test_caps_double_up_to_the_maximum() -> None:
    """The cap doubles per attempt from `initial` and stops at `maximum`."""
    b = Backoff(0.5, 30.0, rng=random.Random(1))
    caps = []
    for _ in range(10):
        caps.append(b.cap())
        b.next_delay()
    assert caps == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_delays_are_full_jitter_within_the_cap() -> None:
    """Each delay is uniform in [0, cap]: spread out, never above the cap."""
    b = Backoff(1.0, 8.0, rng=random.Random(7))
    for _ in range(200):
        cap = b.cap()
        assert 0.0 <= b.next_delay() <= cap
    delays = [Backoff(1.0, 1.0, rng=random.Random(i)).next_delay() for i in range(200)]
    assert min(delays) < 0.2 and max(delays) > 0.8


def test_reset_starts_over() -> None:
    """After reset the next cap is `initial` again."""
    b = Backoff(0.5, 30.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.cap() == 0.5 and b.attempts == 0


def test_long_outages_do_not_overflow() -> None:
    """Thousands of attempts keep a finite cap."""
    b = Backoff(0.5, 30.0)
    b.attempts = 10_000
    assert b.cap() == 30.0


def test_seeded_delays_repeat() -> None:
    """Two policies with the same seed give the same delays."""
    a = [Backoff(rng=random.Random(3)).next_delay() for _ in range(3)]
    b = [Backoff(rng=random.Random(3)).next_delay() for _ in range(3)]
    assert a == b


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(-1, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_rejects_bad_settings(initial: float, maximum: float, factor: float) -> None:
    """Negative, inverted or shrinking settings are refused."""
    with pytest.raises(ValueError):
        Backoff(initial, maximum, factor=factor)


def test_delays_restart_only_after_a_whole_healthy_interval() -> None:
    """An answer before a full ping interval of health keeps the delays growing; after, the
    next delay is the shortest again."""
    backoff = Backoff(1.0, 60.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.answered(live_for=4.9, ping_interval=5.0)
    assert backoff.cap() == 16.0
    backoff.answered(live_for=5.0, ping_interval=5.0)
    assert backoff.cap() == 1.0
