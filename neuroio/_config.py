"""The listener's options and their defaults: the single home of every default that the
listener, the CLI and the bridge share.

:class:`ConnectionOptions` is how one connection is made and kept; :class:`RecoveryOptions` is
how gaps are recovered from the REST API. ``EventListener`` takes their fields as keyword
arguments, the CLI builds its options from them, and ``BridgeConfig`` embeds both. Both are
msgspec structs so that a config file can be converted into them with field names checked.
``None`` disables an optional limit.
"""

from __future__ import annotations

import msgspec
import yarl

from ._net import is_loopback
from ._redact import redact
from .exceptions import ConfigurationError

__all__ = [
    "ConnectionOptions",
    "RecoveryOptions",
    "check_api_url",
    "check_events_url",
    "default_api_url",
    "is_production_api",
]

DEFAULT_EVENTS_URL = "wss://events.neuroio.com"
DEFAULT_API_URL = "https://api.neuroio.com"

# The REST origin that goes with each events scheme when both come from one server.
_SAME_ORIGIN = {"ws": "http", "wss": "https"}


def _check_url(url: str, what: str, schemes: tuple[str, ...]) -> yarl.URL:
    """``url`` parsed, or :class:`ConfigurationError` naming ``what`` and what is wrong.

    The one check of the URLs the listener, the bridge and the doctor are given, so that a
    URL that can never connect is refused before anything connects instead of retried.
    """
    shown = redact(url)
    wanted = " or ".join(f"{s}://" for s in schemes)
    try:
        parsed = yarl.URL(url)
        port = parsed.explicit_port
    except (ValueError, TypeError) as exc:
        if "port" in str(exc).lower():
            raise ConfigurationError(f"{what} {shown!r}: port out of range 1-65535") from None
        raise ConfigurationError(f"{what} {shown!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in schemes:
        got = f"{parsed.scheme}://" if parsed.scheme else "no scheme"
        raise ConfigurationError(f"{what} must start with {wanted}, got {got} in {shown!r}")
    host = parsed.raw_host or ""
    if not host or any(c.isspace() for c in host):
        raise ConfigurationError(f"{what} {shown!r} names no host")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(f"{what} {shown!r}: port out of range 1-65535")
    return parsed


def check_events_url(url: str, what: str = "events URL") -> yarl.URL:
    """Check an events URL (``ws://`` or ``wss://``, a host, a port in range).

    Raises:
        ConfigurationError: naming ``what`` and what is wrong.
    """
    return _check_url(url, what, ("ws", "wss"))


def check_api_url(url: str, what: str = "api_url") -> yarl.URL:
    """Check a REST API URL (``http://`` or ``https://``, a host, a port in range).

    Raises:
        ConfigurationError: naming ``what`` and what is wrong.
    """
    return _check_url(url, what, ("http", "https"))


def default_api_url(events_url: str) -> str:
    """The REST API to use when none is given: the events URL's own origin when it is a
    loopback address (a local emulator serves both), else production.

    Gap recovery against production with a local events URL could only ever fail.
    """
    try:
        parsed = yarl.URL(events_url)
    except (ValueError, TypeError):
        return DEFAULT_API_URL
    scheme = _SAME_ORIGIN.get(parsed.scheme)
    if scheme is None or parsed.host is None or not is_loopback(parsed.host):
        return DEFAULT_API_URL
    return str(parsed.with_scheme(scheme).origin())


def is_production_api(api_url: str) -> bool:
    """Whether ``api_url`` is the production REST API."""
    try:
        return yarl.URL(api_url).origin() == yarl.URL(DEFAULT_API_URL).origin()
    except (ValueError, TypeError):
        return False


class ConnectionOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the events connection is made and kept alive.

    Attributes:
        url: the events service; ``None``: ``$NEUROIO_EVENTS_URL``, else production.
        timeout: seconds to open a connection and receive the AUTH reply.
        ping_interval: seconds between PINGs.
        ping_timeout: a PING unanswered this long means the connection is dead.
        reconnect_delay: cap of the first reconnect delay (full jitter, doubling per attempt).
        max_reconnect_delay: largest reconnect delay cap.
        max_message_size: largest frame accepted, bytes.
        max_queue: frames received but not yet handled.
        max_retries: consecutive failed attempts before giving up; ``None``: forever.
        drain_timeout: on close, seconds the handler call in progress may take.
    """

    url: str | None = None
    timeout: float = 4.0
    ping_interval: float = 5.0
    ping_timeout: float = 10.0
    reconnect_delay: float = 0.5
    max_reconnect_delay: float = 30.0
    max_message_size: int = 8 * 2**20
    max_queue: int = 1024
    max_retries: int | None = None
    drain_timeout: float = 5.0

    def validate(self) -> None:
        """Raise :class:`~neuroio.ConfigurationError` naming the first option out of range."""
        if self.url is not None:
            check_events_url(self.url)
        for name in ("timeout", "ping_interval", "ping_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.reconnect_delay <= self.max_reconnect_delay:
            raise ConfigurationError("need 0 <= reconnect_delay <= max_reconnect_delay")
        if self.max_queue < 1 or self.max_message_size < 1:
            raise ConfigurationError("max_queue and max_message_size must be at least 1")
        if self.max_retries is not None and self.max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0 or None")
        if self.drain_timeout < 0:
            raise ConfigurationError("drain_timeout must be >= 0")


class RecoveryOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the entries missed while disconnected are recovered from the REST API.

    Attributes:
        backfill: recover gaps at all.
        api_url: the REST API; ``None``: ``$NEUROIO_API_URL``, else the events URL's origin
            when it is a loopback address, else production (see :func:`default_api_url`).
        since: before the first connection, also recover the entries after this event id
            or from this ISO-8601 time.
        backfill_max_events: recover at most this many entries per gap (the newest).
        backfill_max_age: skip entries older than this many seconds, measured on the
            server's clock (against the newest entry), never on this machine's.
        dedupe_window: recent event ids remembered so that none is delivered twice.
    """

    backfill: bool = False
    api_url: str | None = None
    since: int | str | None = None
    backfill_max_events: int | None = 10_000
    backfill_max_age: float | None = 24 * 3600.0
    dedupe_window: int = 100_000

    def validate(self) -> None:
        """Raise :class:`~neuroio.ConfigurationError` naming the first option out of range."""
        if self.api_url is not None:
            check_api_url(self.api_url)
        if self.backfill_max_events is not None and self.backfill_max_events < 1:
            raise ConfigurationError("backfill_max_events must be >= 1 or None")
        if self.backfill_max_age is not None and not self.backfill_max_age > 0:
            raise ConfigurationError("backfill_max_age must be positive or None")
        if self.dedupe_window < 1:
            raise ConfigurationError("dedupe_window must be at least 1")
