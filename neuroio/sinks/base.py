"""The interface every sink implements, and helpers for sink URIs."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..exceptions import ConfigurationError, SinkError
from ..spool import SpooledEvent

__all__ = ["Sink", "SpooledEvent", "redact_uri", "retry_after_of"]

# Query parameters whose values are credentials in common webhook URLs.
_SECRET_PARAM = re.compile(r"token|secret|key|pass|sig|auth|credential", re.IGNORECASE)


class Sink(abc.ABC):
    """A destination for events.

    The bridge calls :meth:`start` once, then :meth:`send` with batches of events in spool
    order, one batch at a time, and :meth:`aclose` at the end. Implement :meth:`send` for your
    own destination; it is all-or-raise:

    * return normally only once the destination holds every event of the batch;
    * raise :class:`~neuroio.exceptions.SinkError` when it could not take them now: the same
      batch is sent again after a backoff (set ``retry_after`` on the exception, in seconds,
      to ask for a minimum delay). Events of a failed batch may already be stored, so a
      destination sees each event at least once;
    * raise :class:`~neuroio.exceptions.PermanentSinkError` when it refused them for good: the
      bridge splits the batch to find the events refused, keeps those in the spool's
      dead-letter table, and goes on.

    Attributes:
        name: identifies the sink in the spool (its cursor), in logs and in metrics. Keep it
            stable across restarts, and free of secrets.
        max_batch: the largest batch :meth:`send` is given.
    """

    name: str = "sink"
    max_batch: int = 1000

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Connect and check the destination is usable.

        Raises:
            SinkError: the destination is unreachable (the bridge does not start).
            ConfigurationError: the destination exists but cannot be used as configured.
        """

    @abc.abstractmethod
    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Deliver ``events`` (in spool order); see the class documentation for errors."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections. Called once, even if :meth:`start` failed."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def redact_uri(uri: str) -> str:
    """``uri`` with its password and credential-like query values replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<invalid URI>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe=":/*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def retry_after_of(exc: BaseException) -> float:
    """The minimum retry delay a :class:`SinkError` asks for (0 when none)."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    return 0.0


def sink_error(message: str, *, retry_after: float | None = None) -> SinkError:
    """A :class:`SinkError` carrying an optional ``retry_after`` (seconds)."""
    exc = SinkError(message)
    if retry_after is not None:
        exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


def parse_int(value: str, *, option: str, uri: str, minimum: int = 0) -> int:
    """An integer query option, or :class:`ConfigurationError` naming the (redacted) URI."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(
            f"sink {redact_uri(uri)}: {option} must be an integer, got {value!r}"
        ) from None
    if number < minimum:
        raise ConfigurationError(f"sink {redact_uri(uri)}: {option} must be >= {minimum}")
    return number


def parse_float(value: str, *, option: str, uri: str) -> float:
    """A positive number query option, or :class:`ConfigurationError`."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(
            f"sink {redact_uri(uri)}: {option} must be a number, got {value!r}"
        ) from None
    if not number > 0:
        raise ConfigurationError(f"sink {redact_uri(uri)}: {option} must be > 0")
    return number


async def check_reachable(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection, so an unreachable sink fails at start-up.

    Raises:
        OSError, asyncio.TimeoutError: nothing answers at ``host:port`` within ``timeout``.
    """
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
