"""How many connection attempts may start now: a rate shared by every stream of a bridge.

A bridge with a thousand streams must not open a thousand connections in the same second,
neither at start-up nor when a platform-wide outage ends (each stream's jittered backoff
spreads the attempts, but a thousand jittered delays of at most 30 s still make a storm of
dozens per second). :class:`RateLimit` spaces attempts at most ``rate`` per second, with a
burst of ``burst``; it is pure: it is told the time and answers how long to wait.
"""

from __future__ import annotations

__all__ = ["RateLimit"]


class RateLimit:
    """At most ``rate`` attempts per second on average, at most ``burst`` at once.

    Each :meth:`reserve` books the next free slot and answers how long the caller must wait
    for it; slots are handed out in call order, so no caller waits for ever.

    Args:
        rate: attempts per second (> 0).
        burst: attempts that may start together after a quiet period (>= 1).
    """

    __slots__ = ("interval", "burst", "_next")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.interval = 1.0 / rate
        self.burst = burst
        self._next: float | None = None  # the time of the next free slot

    def reserve(self, now: float) -> float:
        """Book a slot for an attempt; the seconds to wait before making it (0: at once)."""
        # A quiet period earns at most `burst` slots: the next slot never lies further back
        # than burst - 1 intervals before now.
        earliest = now - (self.burst - 1) * self.interval
        slot = earliest if self._next is None or self._next < earliest else self._next
        self._next = slot + self.interval
        return max(0.0, slot - now)
