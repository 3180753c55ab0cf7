"""One connection's verdicts, with no I/O: accepted, rejected (never retried), or lost and why.

The connection feeds a :class:`Session` what happened on its socket (a frame, a close with its
code, a transport error, a timeout) and acts on the answer. Every rule about the AUTH answer is
here: which close codes mean "your token is refused", which say nothing about it, and
(:class:`SilentRejections`, spanning connections) a server that keeps dropping us before
``{"auth": "ok"}`` without saying why. :class:`LossReason` names why a connection ended; its
values are the keys of ``ListenerStats.reconnects``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from .frames import Kind, error_text

__all__ = [
    "AUTH_CLOSE_CODES",
    "NEUTRAL_CLOSE_CODES",
    "Accepted",
    "LossReason",
    "Lost",
    "Phase",
    "Rejected",
    "Session",
    "SilentRejections",
    "Ending",
    "Verdict",
]

# Close codes that mean "your credentials are refused" when they arrive before {"auth": "ok"}.
AUTH_CLOSE_CODES = frozenset({1008, 3000, 3003, 4001, 4003, 4401, 4403})
# Close codes that say nothing about the token: the server is going away or restarting.
NEUTRAL_CLOSE_CODES = frozenset({1001, 1012, 1013})
# The close code of a connection that ended without a close frame.
_ABNORMAL = 1006


class LossReason(enum.Enum):
    """Why a connection ended (or never became one); ``.value`` is the stats key."""

    CONNECT_FAILED = "connect_failed"
    """No WebSocket: refused, unreachable, TLS failure, handshake not an upgrade."""
    AUTH_TIMEOUT = "auth_timeout"
    """No answer to AUTH within ``timeout``."""
    CLOSED_BEFORE_AUTH = "closed_before_auth"
    """Closed before ``{"auth": "ok"}`` with a code that says nothing about the token."""
    CLOSED = "closed"
    """The server sent a close frame."""
    RESET = "reset"
    """The connection dropped without a close frame."""
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    """A PING went unanswered for ``ping_timeout`` while the connection was being read."""
    MESSAGE_TOO_BIG = "message_too_big"
    """A frame above ``max_message_size``."""
    PROTOCOL_ERROR = "protocol_error"
    """The server broke the WebSocket protocol."""
    CLOSING = "closing"
    """The listener was closed (never counted as a reconnect)."""


class Phase(enum.Enum):
    """Where one connection is."""

    AUTHENTICATING = "authenticating"
    LIVE = "live"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server answered ``{"auth": "ok"}``."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused the token: stop, do not retry.

    Attributes:
        message: the whole explanation, for :class:`~neuroio.AuthenticationError`.
        close_code: the close code that said so, if a close said so.
        server_message: the server's error text (tokens redacted), if it sent one.
    """

    message: str
    close_code: int | None = None
    server_message: str | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """The connection ended (or never was); retry after a backoff.

    Attributes:
        reason: why.
        close_code: the close code, when the socket was closed with one.
        authenticated: whether the server had accepted the token on this connection.
    """

    reason: LossReason
    close_code: int | None = None
    authenticated: bool = False


Ending: TypeAlias = "Rejected | Lost"
"""A verdict that ends the connection."""
Verdict: TypeAlias = "Accepted | Rejected | Lost"


def _refused(
    detail: str, *, close_code: int | None = None, server_message: str | None = None
) -> Rejected:
    message = (
        f"the NeuroIO events service rejected the API token ({detail}); "
        "check the token and that it belongs to this platform"
    )
    return Rejected(message, close_code, server_message)


class Session:
    """The verdicts of one connection, from the AUTH frame sent to the socket's end.

    Each ``*`` method takes one thing that happened and answers a verdict once one is known;
    :meth:`frame_received` answers ``None`` for frames that change nothing. After a
    :class:`Rejected` or :class:`Lost` the session is :attr:`Phase.ENDED`.
    """

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = Phase.AUTHENTICATING

    @property
    def live(self) -> bool:
        """Whether the server accepted the token and the connection has not ended."""
        return self.phase is Phase.LIVE

    def frame_received(self, kind: Kind, text: str | bytes) -> Verdict | None:
        """A frame arrived; only the answer to AUTH decides anything."""
        if self.phase is not Phase.AUTHENTICATING:
            # On a live connection an error message is only worth a warning: the token was
            # accepted, and the server goes on pushing events.
            return None
        if kind is Kind.AUTH_OK:
            self.phase = Phase.LIVE
            return Accepted()
        if kind is Kind.ERROR or kind is Kind.AUTH_REJECTED:
            said = error_text(text)
            return self._end(_refused(f"server said: {said}", server_message=said))
        return None

    def closed(self, code: int | None) -> Ending:
        """The socket was closed, with ``code`` (``None`` when no close frame came)."""
        if self.phase is Phase.AUTHENTICATING:
            if code in AUTH_CLOSE_CODES:
                return self._end(_refused(f"connection closed with code {code}", close_code=code))
            if code in NEUTRAL_CLOSE_CODES:
                return self._end(Lost(LossReason.CLOSED, code))
            return self._end(Lost(LossReason.CLOSED_BEFORE_AUTH, code))
        if code is not None and code != _ABNORMAL:
            return self._end(Lost(LossReason.CLOSED, code, self._authenticated()))
        return self._end(Lost(LossReason.RESET, code, self._authenticated()))

    def error(self, reason: LossReason, code: int | None = None) -> Ending:
        """The transport failed (``reason`` says how); ``code`` is its close code, if any."""
        if self.phase is Phase.AUTHENTICATING and code in AUTH_CLOSE_CODES:
            return self._end(_refused(f"connection closed with code {code}", close_code=code))
        return self._end(Lost(reason, code, self._authenticated()))

    def timeout(self) -> Ending:
        """No answer in time: to AUTH while authenticating, else to a PING."""
        if self.phase is Phase.AUTHENTICATING:
            return self._end(Lost(LossReason.AUTH_TIMEOUT))
        return self._end(Lost(LossReason.HEARTBEAT_TIMEOUT, authenticated=True))

    def closing(self) -> Ending:
        """The listener is being closed."""
        return self._end(Lost(LossReason.CLOSING, authenticated=self._authenticated()))

    def _authenticated(self) -> bool:
        return self.phase is Phase.LIVE

    def _end(self, verdict: Ending) -> Ending:
        self.phase = Phase.ENDED
        return verdict


class SilentRejections:
    """Connections in a row that the server closed before accepting the token, saying nothing.

    A server that accepts the handshake and then drops us, without answering AUTH, ``limit``
    times in a row is refusing the token without saying so.
    """

    __slots__ = ("limit", "count")

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.count = 0

    def observe(self, verdict: Lost) -> Rejected | None:
        """Count one ended connection; a :class:`Rejected` once ``limit`` is reached."""
        if verdict.authenticated or verdict.reason is not LossReason.CLOSED_BEFORE_AUTH:
            self.count = 0
            return None
        self.count += 1
        if self.count < self.limit:
            return None
        return Rejected(
            "the NeuroIO events service closed the connection before accepting the API "
            f"token {self.count} times in a row; check the token",
            close_code=verdict.close_code,
        )
