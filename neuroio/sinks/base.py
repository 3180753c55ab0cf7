"""The sink contract: :class:`Sink`, the interface every destination implements, and
:class:`SpooledEvent`, the event it is given. Also the start-up reachability probe the
network sinks share (:func:`check_reachable`)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec

from ..exceptions import SinkError
from ._uri import redact_uri

__all__ = [
    "ConsumerGoneError",
    "Sink",
    "SpooledEvent",
    "check_reachable",
    "redact_uri",
    "retry_after_of",
    "sink_error",
]

_decoder = msgspec.json.Decoder()


class ConsumerGoneError(SinkError):
    """The reader the sink writes for has gone for good: ``file:-`` piped into ``head -1``
    finds the pipe closed. Retrying cannot help, and, as for any Unix tool whose output is
    closed, the bridge then stops as on SIGTERM (exit status 0): the batch not written stays
    in the spool, the other sinks finish the batch they are sending."""


class SpooledEvent(msgspec.Struct, frozen=True):
    """One event as stored in the spool, and as a sink is given it.

    Attributes:
        seq: position in the spool; increases by one per stored event.
        id: the event id the platform gave it.
        payload: the event exactly as the server sent it (``{"id": ..., "data": {...}}``,
            every field kept), as compact JSON.
        received_at: when the bridge received it (``time.time()``).
        stream: the number of the stream it came from in a bridge with several streams
            (see :meth:`~neuroio.bridge.spool.Spool.stream_number`); ``0`` for the single
            stream.
    """

    seq: int
    id: int
    payload: bytes
    received_at: float
    stream: int = 0

    def json(self) -> Any:
        """The event decoded from JSON."""
        return _decoder.decode(self.payload)


class Sink(abc.ABC):
    """A destination for events.

    The bridge calls :meth:`start` (again, after :meth:`aclose`, while it raises
    :class:`~neuroio.exceptions.SinkError`), then :meth:`send` with batches of events in spool
    order, one batch at a time, and :meth:`aclose` at the end. Implement :meth:`send` for your
    own destination; it is all-or-raise:

    * return normally only once the destination holds every event of the batch;
    * raise :class:`~neuroio.exceptions.SinkError` when it could not take them now: the same
      batch is sent again after a backoff (``SinkError(message, retry_after=seconds)`` asks
      for a minimum delay). Events of a failed batch may already be stored, so a
      destination sees each event at least once;
    * raise :class:`~neuroio.exceptions.PermanentSinkError` when it refused them for good: the
      bridge splits the batch to find the events refused, keeps those in the spool's
      dead-letter table, and goes on;
    * raise :class:`ConsumerGoneError` when whoever reads the destination has gone for good
      (a closed standard output): the bridge stops, as on SIGTERM.

    A sink writing files may implement :meth:`reopen` (SIGHUP, for logrotate).

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
            SinkError: the destination is unreachable: the bridge starts without it and
                calls :meth:`start` again with backoff (after :meth:`aclose`) until it
                answers; with ``require_sinks`` the bridge does not start.
            ConfigurationError: the destination answered but cannot be used as configured
                (e.g. it rejected the credentials): the bridge does not start.
        """

    @abc.abstractmethod
    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Deliver ``events`` (in spool order); see the class documentation for errors."""

    async def reopen(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Reopen the destination's files, after logrotate renamed them (the bridge calls it
        on SIGHUP, between two sends or while one is in flight).

        A sink writing files closes them and opens them again at their configured paths,
        once any write in progress ended, so that no line is lost, split or written twice.
        Sinks without files have nothing to do. An error is logged by the bridge, and
        delivery goes on (a sink that could not reopen reports it from :meth:`send`).
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections. Called once after each :meth:`start`, even one that
        failed."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def retry_after_of(exc: BaseException) -> float:
    """The least retry delay a :class:`SinkError` asks for, in seconds (0 when none)."""
    return max(float(getattr(exc, "retry_after", None) or 0.0), 0.0)


def sink_error(message: str, *, retry_after: float | None = None) -> SinkError:
    """``SinkError(message, retry_after=retry_after)``; kept for callers of the old factory."""
    return SinkError(message, retry_after=retry_after)


async def check_reachable(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection, so an unreachable sink fails at start-up.

    Raises:
        OSError, asyncio.TimeoutError: nothing answers at ``host:port`` within ``timeout``.
    """
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
