"""The listener for synchronous code: Django, Flask, scripts, anything without an event loop.

::

    from neuroio.sync import connect

    with connect(token) as events:
        for event in events:  # neuroio.Event, in arrival order
            print(event.id, event.entry.result)

:func:`connect` runs an :class:`~neuroio.EventListener` in iterator mode on an event loop of
its own, in a background thread, and hands its events over through a bounded queue: when the
caller falls behind, the thread waits (and the listener then stops reading the socket), so
memory stays bounded and nothing is dropped. Leaving the ``with`` block, or Ctrl-C while
iterating, closes the listener and joins the thread within about a second. A failure of the
listener (:class:`~neuroio.AuthenticationError` for a rejected token,
:class:`~neuroio.ConnectionFailedError` once ``max_retries`` is exhausted) is raised in the
caller's thread by the iteration. See ``docs/sync.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from ._token import TokenSource
from .exceptions import ConfigurationError
from .listener import EventListener
from .messages import Event

__all__ = ["EventStream", "connect"]

logger = logging.getLogger("neuroio.sync")

_DEFAULT_QUEUE = 1000
# How long a blocked get waits before looking again whether the thread ended: only a bound,
# the end normally arrives as a marker in the queue.
_POLL = 0.5
# How long leaving the block lets the listener close gracefully (code 1000: milliseconds on a
# healthy connection) before its tasks are cancelled: a connection attempt or an AUTH that
# hangs would otherwise hold the close for the listener's whole ``timeout``.
_GRACE = 0.6
# Then how long to wait for the cancelled tasks to end.
_JOIN = 5.0


class _End:
    """The marker after the last event."""


_END = _End()


class EventStream:
    """The events of a listener running in a background thread; iterate in one thread.

    Made by :func:`connect`; use it as a context manager. ``listener`` is the
    :class:`~neuroio.EventListener` (read ``listener.stats`` for its counters).
    """

    def __init__(self, listener: EventListener, queue_size: int = _DEFAULT_QUEUE) -> None:
        if queue_size < 1:
            raise ConfigurationError(f"queue_size must be at least 1, got {queue_size}")
        self.listener = listener
        """The listener behind the stream."""
        self._queue: queue.Queue[Event | _End] = queue.Queue(queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None
        self._producer_waiting = False
        self._failure: BaseException | None = None
        self._finished = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventStream {state} queued={self._queue.qsize()} {self.listener!r}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background thread and its listener (``with`` does it)."""
        if self._thread is not None:
            raise RuntimeError("this EventStream was already started")
        self._thread = threading.Thread(target=self._run, name="neuroio-sync", daemon=True)
        self._thread.start()
        self._started.wait()

    def close(self) -> None:
        """Close the listener and join the thread (within about a second); idempotent, from
        any thread.

        Events still queued are discarded; the iteration then ends.
        """
        self._closed = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not self._finished.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(_GRACE)
        if thread.is_alive() and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel_all, loop)
            thread.join(_JOIN)
            if thread.is_alive():
                logger.warning("the listener's thread did not end within %.0f s", _JOIN)

    def __enter__(self) -> EventStream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the caller's side

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        """The next event, waiting for it.

        Raises:
            AuthenticationError: the token was rejected.
            ConnectionFailedError: ``max_retries`` consecutive attempts failed.
            StopIteration: the stream was closed.
        """
        if self._thread is None:
            raise RuntimeError("iterate inside 'with connect(...)'")
        while True:
            if self._closed:
                raise StopIteration
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if self._finished.is_set():
                    return self._end()
                try:
                    item = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    continue
            if self._producer_waiting:
                self._wake_producer()
            if isinstance(item, _End):
                return self._end()
            return item

    def _end(self) -> Event:
        # Every event before the end was taken: now the failure, if there was one.
        if not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, _End):
                return item
        failure = self._failure
        if failure is not None:
            self._failure = None  # raised once; the next call ends the iteration
            raise failure
        raise StopIteration

    def _wake_producer(self) -> None:
        self._producer_waiting = False
        loop, room = self._loop, self._room
        if loop is not None and room is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(room.set)

    # ------------------------------------------------------------------ the thread's side

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            # As asyncio.run does: what a forced close left running ends before the loop.
            with contextlib.suppress(Exception):
                _cancel_all(loop)
                pending = asyncio.all_tasks(loop)
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._finished.set()
            self._started.set()
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_END)

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._room = asyncio.Event()
        self._task = asyncio.current_task()
        self._started.set()
        try:
            async with self.listener:
                async for event in self.listener:
                    await self._put(event)
        except asyncio.CancelledError:
            # close(): the listener was closed by leaving the block above, or, when that took
            # too long, its tasks were cancelled.
            pass
        except Exception as exc:
            self._failure = exc

    async def _put(self, event: Event) -> None:
        put, room = self._queue.put_nowait, self._room
        assert room is not None
        while True:
            try:
                put(event)
                return
            except queue.Full:
                pass
            room.clear()
            self._producer_waiting = True
            # The caller may have taken one between the failed put and the flag: look again.
            if not self._queue.full():
                continue
            await room.wait()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def connect(
    api_token: TokenSource, *, queue_size: int = _DEFAULT_QUEUE, **options: Any
) -> EventStream:
    """The events stream for synchronous code: use it as ``with connect(...) as events``.

    Args:
        api_token: the API token, or a callable returning it (e.g.
            :func:`~neuroio.token_file`); an async callable runs on the listener's loop.
        queue_size: events waiting for the caller at most; when full, the background thread
            waits and the listener stops reading the socket (TCP backpressure).
        options: the keyword options of :class:`~neuroio.EventListener` (``url``,
            ``backfill``, ``max_retries``, ``ping_interval``, ...), except
            ``event_handler_func``: the stream is the handler.

    Raises:
        ConfigurationError: an option is invalid (at once, in the caller's thread).
    """
    if "event_handler_func" in options:
        raise ConfigurationError("connect() iterates over events: give no event_handler_func")
    listener = EventListener(api_token, None, **options)
    return EventStream(listener, queue_size)
