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
    """


class ConnectionFailedError(NeuroIOError, ConnectionError):
    """No connection could be made within the allowed number of attempts.

    Raised only when ``max_retries`` is set; by default the listener retries forever.
    """


class BackfillError(NeuroIOError):
    """The REST API failed a request for missed entries (after retries, or refused it)."""


class SpoolError(NeuroIOError):
    """The spool database cannot be used: corrupt, unwritable, or locked by another bridge."""


class SpoolFullError(SpoolError):
    """A spool commit failed because its file system is full (``ENOSPC``, ``SQLITE_FULL``).

    Nothing of the failed call is stored and the spool stays usable: the same call succeeds
    once there is room again.
    """


class SinkError(NeuroIOError):
    """A sink could not take events now; the bridge retries with backoff."""


class PermanentSinkError(SinkError):
    """A sink refused events for good; they go to the dead-letter table, not retried."""
