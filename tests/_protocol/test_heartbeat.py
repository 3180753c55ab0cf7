"""The heartbeat policy, driven by a fake clock: no sleeps."""

from __future__ import annotations

import pytest

from neuroio._protocol.heartbeat import Heartbeat


def test_first_ping_is_due_at_start_then_every_interval() -> None:
    """A PING is due at once, then one interval after each PING."""
    hb = Heartbeat(interval=5, timeout=10)
    hb.start(100.0)
    assert hb.ping_due(100.0)
    hb.ping_sent(100.0)
    assert not hb.ping_due(104.9)
    assert hb.ping_due(105.0)
    assert hb.next_wakeup(101.0) == pytest.approx(4.0)


def test_unanswered_ping_is_dead_after_timeout() -> None:
    """A PING with no PONG for `timeout` seconds means dead; a PONG clears it."""
    hb = Heartbeat(interval=0.2, timeout=0.5)
    hb.start(0.0)
    hb.ping_sent(0.0)
    hb.ping_sent(0.2)  # the clock runs from the oldest unanswered PING
    assert not hb.is_dead(0.49)
    assert hb.is_dead(0.5)
    assert hb.pong_received(0.3) == pytest.approx(0.3)
    assert not hb.is_dead(10.0)
    assert hb.last_rtt == pytest.approx(0.3)


def test_wakeup_comes_no_later_than_the_death_deadline() -> None:
    """The listener is woken by the earlier of next PING and death deadline."""
    hb = Heartbeat(interval=5, timeout=1)
    hb.start(0.0)
    hb.ping_sent(0.0)
    assert hb.next_wakeup(0.25) == pytest.approx(0.75)


def test_pong_without_ping_has_no_round_trip() -> None:
    """An unsolicited PONG is harmless."""
    hb = Heartbeat(interval=1, timeout=1)
    hb.start(0.0)
    assert hb.pong_received(0.5) is None


def test_pause_suspends_judgement_and_resume_restarts_the_clock() -> None:
    """While the listener is not reading, an old PING cannot make the connection dead, and
    PINGs still fall due on schedule (the server must keep seeing a live client)."""
    hb = Heartbeat(interval=0.2, timeout=0.5)
    hb.start(0.0)
    hb.ping_sent(0.0)
    hb.pause()
    assert hb.paused
    assert not hb.is_dead(100.0)
    assert hb.ping_due(100.0)
    assert hb.next_wakeup(0.1) == pytest.approx(0.1)  # the next PING, not the dead line
    hb.ping_sent(100.0)
    assert not hb.ping_due(100.1)
    hb.resume(100.0)
    assert not hb.is_dead(100.4)
    assert hb.is_dead(100.5)


@pytest.mark.parametrize(("interval", "timeout"), [(0, 1), (1, 0), (-1, 1)])
def test_rejects_non_positive_values(interval: float, timeout: float) -> None:
    """Zero or negative intervals are refused."""
    with pytest.raises(ValueError):
        Heartbeat(interval, timeout)
