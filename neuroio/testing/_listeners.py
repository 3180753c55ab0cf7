"""Listeners pointed at an emulator, all closed together: the ``neuroio_listener`` fixture.

Kept apart from the pytest plugin so that it imports without pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..listener import EventListener
    from ..sync import EventStream

__all__ = ["LISTENER_DEFAULTS", "TOKEN", "ListenerFactory"]

TOKEN = "neuroio-test-token"
"""The one token the fixture's emulator accepts (``neuroio_listener.token``)."""

LISTENER_DEFAULTS: dict[str, Any] = {
    "ping_interval": 0.2,
    "ping_timeout": 1.0,
    "reconnect_delay": 0.05,
    "max_reconnect_delay": 0.5,
    "timeout": 5.0,
}
"""Short intervals for tests, used unless a listener is given others: losses are found in
about a second and reconnects take a fraction of one."""

# Seconds a listener running in another thread is given to close.
_CLOSE = 5.0


class ListenerFactory:
    """``neuroio_listener``: makes listeners pointed at the fixture's emulator.

    ``neuroio_listener(handler=None, **options)`` returns an
    :class:`~neuroio.EventListener` with the emulator's ``url``, ``api_url``, :data:`TOKEN`
    and :data:`LISTENER_DEFAULTS`; ``options`` override any of them. ``connect(**options)``
    returns a :mod:`neuroio.sync` stream instead (use it with ``with``), for plain tests.
    Every listener and stream it made is closed at the end of the test.
    """

    def __init__(self, url: str, api_url: str) -> None:
        self.url = url
        """The emulator's events URL."""
        self.api_url = api_url
        """The emulator's REST URL."""
        self.token = TOKEN
        """The token the emulator accepts."""
        self.listeners: list[EventListener] = []
        """Every listener made, in order."""
        self.streams: list[EventStream] = []
        """Every stream made by :meth:`connect`, in order."""

    def options(self, **overrides: Any) -> dict[str, Any]:
        """The listener options used: the emulator's URLs, the defaults, ``overrides``."""
        return {"url": self.url, "api_url": self.api_url, **LISTENER_DEFAULTS, **overrides}

    def __call__(self, event_handler_func: Any = None, **options: Any) -> EventListener:
        from ..listener import EventListener

        token = options.pop("api_token", self.token)
        listener = EventListener(token, event_handler_func, **self.options(**options))
        self.listeners.append(listener)
        return listener

    def connect(self, **options: Any) -> EventStream:
        """A :func:`neuroio.sync.connect` stream on the emulator (not started: ``with`` it)."""
        from ..sync import connect

        token = options.pop("api_token", self.token)
        stream = connect(token, **self.options(**options))
        self.streams.append(stream)
        return stream

    async def aclose(self) -> None:
        """Close every listener and stream (at the end of an async test, on its loop)."""
        for stream in self.streams:
            await asyncio.to_thread(stream.close)
        here = asyncio.get_running_loop()
        for listener in self.listeners:
            loop = _loop_of(listener)
            if loop is None:
                continue
            if loop is here:
                await listener.close()
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(listener.close(), loop))

    def close(self) -> None:
        """Close every listener and stream (at the end of a plain test)."""
        for stream in self.streams:
            stream.close()
        for listener in self.listeners:
            loop = _loop_of(listener)
            if loop is not None and loop.is_running():
                # A listener run() in another thread: close it on its loop, from here.
                future = asyncio.run_coroutine_threadsafe(listener.close(), loop)
                with contextlib.suppress(Exception):
                    future.result(_CLOSE)


def _loop_of(listener: EventListener) -> asyncio.AbstractEventLoop | None:
    """The loop ``listener`` is listening on, or ``None`` if it is not listening."""
    task = listener._listen_task
    if task is None or task.done():
        return None
    return task.get_loop()
