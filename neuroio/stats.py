"""Counters a listener keeps about its connection, for logs, status lines and metrics."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ListenerStats", "State"]


class State(str, enum.Enum):
    """Where the listener is in its connection cycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    LIVE = "live"
    BACKOFF = "backoff"
    CLOSED = "closed"


@dataclass(slots=True)
class ListenerStats:
    """What a listener has done since it was created.

    ``reconnects`` counts connection losses by reason, keyed by the ``.value`` of
    :class:`~neuroio.listener.LossReason`: ``connect_failed``, ``closed`` (the server sent a
    close frame), ``reset`` (the connection dropped without one), ``heartbeat_timeout``,
    ``auth_timeout``, ``closed_before_auth``, ``message_too_big``, ``protocol_error``.
    """

    state: State = State.IDLE
    connects: int = 0
    """Connections that completed the WebSocket handshake."""
    authenticated: int = 0
    """Connections on which the server accepted the token."""
    reconnects: Counter[str] = field(default_factory=Counter)
    control: int = 0
    """Frames received that are not events (auth replies, PONGs, errors, malformed)."""
    events: int = 0
    backfilled_events: int = 0
    duplicate_events: int = 0
    """Events dropped because the same id was already delivered (gap recovery)."""
    malformed: int = 0
    """Frames that are not a NeuroIO message (delivered to a raw handler anyway)."""
    handler_errors: int = 0
    pings_sent: int = 0
    pongs: int = 0
    last_rtt: float | None = None
    """Round-trip of the last answered PING, seconds."""
    queue_high_water: int = 0
    last_event_at: float | None = None
    """Wall-clock time (``time.time()``) of the last event received, to within a second."""
    last_event_id: int | None = None

    @property
    def messages(self) -> int:
        """Frames received, of every kind."""
        # Derived rather than counted: one counter less on the per-event path.
        return self.events + self.control

    @property
    def total_reconnects(self) -> int:
        """All connection losses, whatever the reason."""
        return sum(self.reconnects.values())
