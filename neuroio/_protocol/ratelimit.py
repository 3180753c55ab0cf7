"""How many connection attempts may start now: a rate shared by every stream of a bridge.

A bridge with a thousand streams must not open a thousand connections in the same second,
neither at start-up nor when a platform-wide outage ends (each stream's jittered backoff
spreads the attempts, but a thousand jittered delays of at most 30 s still make a storm of
dozens per second). :class:`RateLimit` keeps the attempts that actually start at least
``1 / rate`` seconds apart; it is pure: it is told the time and answers how long to wait.

The spacing is judged when an attempt *starts* (:meth:`RateLimit.started`), not when it was
booked: waiters woken late together (a busy event loop) still go one interval apart, so no
window of a second ever holds more than ``rate`` starts (plus the burst, when one is allowed).
"""

from __future__ import annotations

__all__ = ["RateLimit"]


class RateLimit:
    """Attempts at least ``1 / rate`` seconds apart; ``burst`` may start together after a
    quiet period.

    Args:
        rate: attempts per second (> 0).
        burst: attempts that may start together after a quiet period (>= 1).
    """

    __slots__ = ("interval", "burst", "_credit", "_last")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.interval = 1.0 / rate
        self.burst = burst
        self._last: float | None = None  # when the last attempt started
        self._credit = float(burst)  # attempts that may start now, earned by quiet time

    def _earned(self, now: float) -> float:
        if self._last is None:
            return float(self.burst)
        return min(float(self.burst), self._credit + (now - self._last) / self.interval)

    def delay(self, now: float) -> float:
        """Seconds until an attempt may start (0: now). Books nothing."""
        missing = 1.0 - self._earned(now)
        # A rounding error of the division is no reason to wait again.
        return missing * self.interval if missing > 1e-9 else 0.0

    def started(self, now: float) -> None:
        """An attempt starts now (after :meth:`delay` answered 0)."""
        self._credit = max(0.0, self._earned(now) - 1.0)
        self._last = now
