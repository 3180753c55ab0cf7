"""Sinks unreachable at start-up: the bridge starts without them and starts them later.

A sink whose :meth:`~neuroio.sinks.Sink.start` raises :class:`~neuroio.exceptions.SinkError`
(unreachable) when the bridge starts does not stop it: the bridge receives and spools as
usual, and a :class:`LateStart` stands in for the sink in the pipeline. It starts the sink
again in the background, with the sink's backoff, until it answers; its
:meth:`~LateStart.send` waits until then, so the route's worker holds its first batch (the
events stay in the spool) instead of sending to a sink that is not connected. Each failed
``start()`` is followed by the sink's ``aclose()`` before the next attempt, so an attempt
leaves no connection behind.

The route's :class:`~neuroio.bridge.delivery.SinkStatus` says the sink fails from the first
attempt on (``last_error``: why), so ``/healthz`` names it. The first failure is one WARNING
line; a later attempt failing for the same reason is logged at DEBUG only (the backoff grows
to ``sink_max_retry_delay`` and the spool holds the events, so a long outage is one line, not
one per attempt); a new reason is logged again. A sink that comes up but refuses the
configuration (:class:`~neuroio.exceptions.ConfigurationError`, e.g. credentials rejected)
is an ERROR, and still retried: the bridge keeps spooling for when it is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .._protocol.backoff import Backoff
from .._retry import Retrying
from .._words import plural
from ..exceptions import ConfigurationError, SinkError
from ..sinks import Sink
from .delivery import SinkStatus
from .spool import SpooledEvent

__all__ = ["LateStart"]

log = logging.getLogger("neuroio.bridge")


class LateStart(Sink):
    """Stands in, in the pipeline, for a sink that was unreachable at start-up.

    Args:
        sink: the sink; its ``start()`` just failed with ``first_error`` and its
            ``aclose()`` was called.
        first_error: why it failed.
        opened: the bridge's list of sinks to close at shutdown; the sink is in it while an
            attempt to start it is in progress, and from the moment it started.
        stopping: set when delivery stops: a :meth:`send` still waiting gives up.
        retry_delay, max_retry_delay: the sink's backoff.
    """

    def __init__(
        self,
        sink: Sink,
        first_error: SinkError,
        *,
        opened: list[Sink],
        stopping: asyncio.Event,
        retry_delay: float,
        max_retry_delay: float,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.max_batch = sink.max_batch
        self.started = asyncio.Event()
        """Set once the sink started."""
        self.first_error = first_error
        self.attempts = 1
        """Start attempts so far (the failed one at start-up included)."""
        self.since = time.monotonic()
        self._opened = opened
        self._stopping = stopping
        self._retry = Retrying(Backoff(retry_delay, max_retry_delay), closing=stopping)
        self._reported: str | None = None
        self._traceback_shown = False

    def __repr__(self) -> str:
        return f"<LateStart {self.sink!r}>"

    def failed(self, status: SinkStatus, error: Exception) -> None:
        """Record a failed attempt in the route's status, logging a reason not logged yet."""
        reason = str(error) or type(error).__name__
        status._failed(reason)
        # The sinks' own messages name them ("sink NAME: ..."); continued with "; ..." below.
        reason = reason.rstrip(". ")
        if not reason.startswith(f"sink {self.name}"):
            reason = f"sink {self.name}: {reason}"
        if reason == self._reported:
            log.debug("%s (start attempt %d)", reason, self.attempts)
            return
        self._reported = reason
        if isinstance(error, ConfigurationError):
            log.error(
                "%s; its start is retried with backoff (start attempt %d; events are spooled "
                "meanwhile)",
                reason,
                self.attempts,
            )
        elif self.attempts == 1:
            log.warning(
                "%s; the bridge starts without it: events are spooled and delivered once it "
                "answers (its start is retried with backoff; --require-sinks stops instead)",
                reason,
            )
        else:
            log.warning(
                "%s (start attempt %d; events are spooled meanwhile)", reason, self.attempts
            )

    async def run(self, status: SinkStatus) -> None:
        """Start the sink with backoff until it starts, or until stopping (or cancelled:
        the attempt in progress is abandoned, and the bridge closes the sink). The failure
        at start-up is recorded first, with :meth:`failed`."""
        sink = self.sink
        while await self._retry.wait():
            self.attempts += 1
            self._opened.append(sink)
            try:
                await sink.start()
            except (SinkError, ConfigurationError) as exc:
                error: Exception = exc
            except Exception as exc:  # a bug in a user's sink must not end the retries
                if not self._traceback_shown:
                    self._traceback_shown = True
                    log.exception("sink %s raised an unexpected error when started", self.name)
                error = exc
            else:
                status.failing_since = None
                log.warning(
                    "sink %s started after %.1f s (%s): delivering what the spool holds",
                    self.name,
                    time.monotonic() - self.since,
                    plural(self.attempts, "attempt"),
                )
                self.started.set()
                return
            # Closed before the next attempt: a half-open connection must not pile up.
            self._opened.remove(sink)
            await close_quietly(sink)
            self.failed(status, error)

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Wait until the sink started, then send; cancelled when delivery stops first (the
        events stay in the spool)."""
        if not self.started.is_set():
            started = asyncio.ensure_future(self.started.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                started.cancel()
                stopping.cancel()
            if not self.started.is_set():
                raise asyncio.CancelledError
        await self.sink.send(events)

    async def aclose(self) -> None:
        """Nothing: the bridge closes the sink itself (see ``opened``)."""


async def close_quietly(sink: Sink) -> None:
    """``sink.aclose()``, logging (not raising) what it raises."""
    try:
        await sink.aclose()
    except Exception:
        log.exception("sink %s failed to close", sink.name)
