"""Exceptions raised by neuroio.

Every exception derives from :class:`NeuroIOError`::

    NeuroIOError
    ├── ConfigurationError        an option, URL or URI is wrong; fix the call or the flag
    │   └── MissingExtraError     an optional dependency is not installed; pip install it
    ├── MessageError              a frame is not a NeuroIO message (the server's fault)
    ├── AuthenticationError       the platform rejected the API token; never retried
    ├── ConnectionFailedError     no connection after ``max_retries`` attempts
    ├── BackfillError             the REST API refused or failed a gap-recovery request
    ├── SpoolError                the bridge's spool is corrupt, unwritable or full
    │   └── SpoolFullError        a commit failed because the disk is full; retry once there is room
    └── SinkError                 a sink failed to take events
        └── PermanentSinkError    the sink refused events for good (dead-lettered, not retried)

Messages never contain the API token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._protocol.session import LossReason

__all__ = [
    "AuthenticationError",
    "BackfillError",
    "ConfigurationError",
    "ConnectionFailedError",
    "MessageError",
    "MissingExtraError",
    "NeuroIOError",
    "PermanentSinkError",
    "SinkError",
    "SpoolError",
    "SpoolFullError",
]


class NeuroIOError(Exception):
    """Base class of every error raised by neuroio."""


class ConfigurationError(NeuroIOError, ValueError):
    """An option, URL or sink URI is invalid. Correct it; retrying will not help."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is missing.

    Args:
        extra: the name of the ``neuroio-events`` extra that provides it.
        feature: what needs it, for the message.
    """

    def __init__(self, extra: str, feature: str) -> None:
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional dependencies of the '{extra}' extra: "
            f"run  pip install 'neuroio-events[{extra}]'"
        )


class MessageError(NeuroIOError, ValueError):
    """A frame could not be understood as a NeuroIO message.

    The listener logs and skips such frames; :func:`neuroio.parse_message` raises it.
    """


class AuthenticationError(NeuroIOError):
    """The platform rejected the API token.

    The listener stops instead of reconnecting: check the token (it is never shown here).

    Args:
        message: the explanation.
        close_code: the WebSocket close code that refused the token; ``None`` when the
            refusal came as a message, or when it is not known.
        server_message: the server's error text (tokens redacted); ``None`` when it sent none.
    """

    def __init__(
        self,
        message: str = "",
        *,
        close_code: int | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.server_message = server_message


class ConnectionFailedError(NeuroIOError, ConnectionError):
    """No connection could be made within the allowed number of attempts.

    Raised only when ``max_retries`` is set; by default the listener retries forever.

    Args:
        message: the explanation.
        attempts: the consecutive attempts that failed; ``None`` when not known.
        last_reason: why the last of them failed; ``None`` when not known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        attempts: int | None = None,
        last_reason: LossReason | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_reason = last_reason


class BackfillError(NeuroIOError):
    """The REST API failed a request for missed entries (after retries, or refused it).

    Args:
        message: the explanation; for an answer that is not an entries list it names the
            HTTP status, the content type and the start of the body.
        status: the HTTP status of the answer that failed; ``None`` when none did (e.g. the
            entries changed faster than they could be paged).
        content_type: that answer's media type (``text/html``), without parameters.
        body_start: the first characters of its body, printable, the token replaced by
            ``***``, ``...`` appended when cut.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        content_type: str | None = None,
        body_start: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.content_type = content_type
        self.body_start = body_start


class SpoolError(NeuroIOError):
    """The spool database cannot be used: corrupt, unwritable, or locked by another bridge."""


class SpoolFullError(SpoolError):
    """A spool commit failed because its file system is full (``ENOSPC``, ``SQLITE_FULL``).

    Nothing of the failed call is stored and the spool stays usable: the same call succeeds
    once there is room again.
    """


class SinkError(NeuroIOError):
    """A sink could not take events now; the bridge retries with backoff.

    Args:
        message: what failed, one line (never a secret).
        retry_after: the least delay, in seconds, before the next attempt, when the
            destination asked for one (an HTTP ``Retry-After``); ``None`` leaves the delay to
            the bridge's backoff.

    Attributes:
        retry_after: as given.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """A sink refused events for good; they go to the dead-letter table, not retried."""
