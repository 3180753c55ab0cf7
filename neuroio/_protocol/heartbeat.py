"""Heartbeat policy: when to PING, and when a silent connection is dead.

A pure state machine driven by the ``now`` it is given (seconds, any monotonic clock), so
timeouts are tested without sleeping. The platform answers each ``{"action": "PING"}`` with
``{"PING": "PONG"}`` and PONGs carry no id (``docs/protocol.md``), so a PONG answers
every PING still outstanding and the round-trip is measured from the oldest of them.
"""

from __future__ import annotations

__all__ = ["Heartbeat"]


class Heartbeat:
    """Decides when to send PING and when the connection is dead.

    Args:
        interval: seconds between PINGs.
        timeout: a PING unanswered for this long means the connection is dead.

    While :meth:`pause` is in effect (the listener stopped reading because the handler is
    behind) the connection cannot be judged: PONGs wait unread in the socket. PINGs still fall
    due on schedule, so the server and any middlebox keep seeing a live client; the clock of
    outstanding PINGs restarts on :meth:`resume`, so a slow handler never looks like a dead
    connection.
    """

    __slots__ = ("interval", "timeout", "_next_ping", "_outstanding_since", "_paused", "last_rtt")

    def __init__(self, interval: float, timeout: float) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
        self._next_ping = 0.0
        self._outstanding_since: float | None = None
        self._paused = False
        self.last_rtt: float | None = None
        """Round-trip of the last answered PING, in seconds."""

    def start(self, now: float) -> None:
        """A connection became live: the first PING is due at once."""
        self._next_ping = now
        self._outstanding_since = None
        self._paused = False

    def ping_due(self, now: float) -> bool:
        """Whether a PING should be sent now (paused or not: only judging is paused)."""
        return now >= self._next_ping

    def ping_sent(self, now: float) -> None:
        """Record that a PING went out."""
        if self._outstanding_since is None:
            self._outstanding_since = now
        self._next_ping = now + self.interval

    def pong_received(self, now: float) -> float | None:
        """Record a PONG; return the round-trip of the oldest outstanding PING, if any."""
        since = self._outstanding_since
        self._outstanding_since = None
        if since is None:
            return None
        self.last_rtt = max(0.0, now - since)
        return self.last_rtt

    def is_dead(self, now: float) -> bool:
        """Whether a PING has gone unanswered for longer than ``timeout``."""
        since = self._outstanding_since
        return not self._paused and since is not None and now - since >= self.timeout

    def pause(self) -> None:
        """Stop judging the connection: the listener is not reading it."""
        self._paused = True

    def resume(self, now: float) -> None:
        """Reading again: outstanding PINGs get a fresh ``timeout`` from ``now``."""
        self._paused = False
        if self._outstanding_since is not None:
            self._outstanding_since = now

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in effect."""
        return self._paused

    def next_wakeup(self, now: float) -> float:
        """Seconds until the next PING is due or the connection would be judged dead."""
        deadline = self._next_ping
        if self._outstanding_since is not None and not self._paused:
            deadline = min(deadline, self._outstanding_since + self.timeout)
        return max(0.0, deadline - now)
