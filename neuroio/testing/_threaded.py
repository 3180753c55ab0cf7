"""The emulator for synchronous code: an :class:`Emulator` on a loop in a background thread.

A synchronous test (or script) cannot await ``emu.emit()``; :class:`ThreadedEmulator` runs the
emulator's loop in a thread of its own and turns each of its methods into a blocking call
that runs on that loop, so the same names work::

    with ThreadedEmulator(tokens={"t"}) as emu:
        emu.wait_for_clients(1)      # blocks until a client authenticated
        emu.emit(result="exact")     # runs on the emulator's loop, returns the entry
        emu.clients[0].events_sent   # attributes are read as they are
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ._emulator import Emulator

__all__ = ["ThreadedEmulator"]

T = TypeVar("T")

# Seconds allowed to start or stop the emulator's loop and server.
_LIFECYCLE = 10.0


class ThreadedEmulator:
    """An :class:`Emulator` whose loop runs in a background thread; blocking methods.

    Args:
        options: the keyword options of :class:`Emulator`.

    Every method of the emulator is available here under its name: a coroutine method
    (``emit``, ``burst``, ``wait_for_clients``, ``revoke``, ``restart``, ...) runs on the
    emulator's loop and blocks until it is done, returning its result or raising its
    exception; a plain one (``start_stream``, ``freeze``, ``accept``, ...) runs there too.
    Attributes and properties (``url``, ``api_url``, ``port``, ``clients``, ``emitted``,
    ``tokens``, ...) are read and set directly. :attr:`emulator` is the emulator itself,
    :attr:`loop` its loop.
    """

    __slots__ = ("emulator", "loop", "_options", "_thread")

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_thread", None)
        self.emulator: Emulator | None = None
        """The emulator (``None`` before :meth:`start`)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The emulator's loop (``None`` before :meth:`start`)."""

    def __repr__(self) -> str:
        return f"<ThreadedEmulator {self.emulator!r}>"

    def start(self) -> None:
        """Start the loop's thread, then the emulator on it (``with`` does it).

        Raises:
            ConfigurationError: an option of the emulator is invalid.
            OSError: the port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("this ThreadedEmulator was already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_serve, args=(loop,), name="neuroio-emulator", daemon=True)
        object.__setattr__(self, "_thread", thread)
        self.loop = loop
        thread.start()
        try:
            emulator = self._submit(self._make, timeout=_LIFECYCLE)
        except BaseException:
            self._end_loop()
            raise
        self.emulator = emulator

    async def _make(self) -> Emulator:
        # Made on its loop: everything it creates belongs there.
        emulator = Emulator(**self._options)
        await emulator.start()
        return emulator

    def stop(self) -> None:
        """Stop the emulator, then its loop and thread; idempotent."""
        emulator = self.emulator
        if emulator is not None and self._thread is not None and self._thread.is_alive():
            self._submit(emulator.stop, timeout=_LIFECYCLE)
        self._end_loop()

    def _end_loop(self) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_LIFECYCLE)

    def __enter__(self) -> ThreadedEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on the emulator's loop and return its result
        (awaited, if it is a coroutine function or returns an awaitable)."""

        async def run() -> Any:
            result = function(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return self._submit(run)

    def _submit(self, factory: Callable[[], Any], *, timeout: float | None = None) -> Any:
        loop = self.loop
        if loop is None:
            raise RuntimeError("the ThreadedEmulator has not been started")
        if threading.current_thread() is self._thread:
            # Waiting here for the loop this very thread runs would wait forever.
            raise RuntimeError("a ThreadedEmulator's blocking methods are for other threads")
        future = asyncio.run_coroutine_threadsafe(factory(), loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def __getattr__(self, name: str) -> Any:
        # Only for names not found on the proxy itself: the emulator's.
        emulator = object.__getattribute__(self, "emulator")
        if emulator is None:
            raise AttributeError(f"{name}: the ThreadedEmulator has not been started")
        value = getattr(emulator, name)
        if inspect.ismethod(value):
            return functools.partial(self.call, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ThreadedEmulator.__slots__:
            object.__setattr__(self, name, value)
        elif self.emulator is None:
            raise AttributeError(f"{name}: the ThreadedEmulator has not been started")
        else:
            setattr(self.emulator, name, value)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
