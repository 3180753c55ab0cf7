"""Reconnect backoff policy: exponential growth with full jitter.

Pure and seedable. The listener asks :meth:`Backoff.next_delay` before each reconnect and
calls :meth:`Backoff.reset` only once a connection proved healthy (authenticated and answered
a heartbeat after a full ``ping_interval``), never because a handshake merely succeeded, so a
server that accepts and then drops every connection still sees growing delays.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``uniform(0, min(maximum, initial * factor ** attempt))`` (full jitter).

    Args:
        initial: the cap of the first delay, in seconds.
        maximum: the largest cap, in seconds.
        factor: growth of the cap per attempt.
        rng: a ``random.Random`` for reproducible delays in tests.
    """

    __slots__ = ("initial", "maximum", "factor", "attempts", "_rng")

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        *,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial < 0 or maximum < initial or factor < 1:
            raise ValueError("backoff needs 0 <= initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0
        self._rng = rng if rng is not None else random.Random()

    def cap(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow for long outages.
        exponent = min(self.attempts, 64)
        return min(self.maximum, self.initial * self.factor**exponent)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more attempt."""
        delay = self._rng.uniform(0.0, self.cap())
        self.attempts += 1
        return delay

    def answered(self, live_for: float, ping_interval: float) -> None:
        """A PONG came on a connection live for ``live_for`` seconds: once it has been healthy
        for a whole ``ping_interval``, the next loss starts from the shortest delay again. A
        handshake alone never resets, so a server that accepts and drops every connection
        still sees growing delays."""
        if live_for >= ping_interval:
            self.attempts = 0

    def reset(self) -> None:
        """Start again from ``initial`` (after a connection proved healthy)."""
        self.attempts = 0
