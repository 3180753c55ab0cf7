"""An in-memory sink, for tests and for programs that consume events themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..exceptions import PermanentSinkError, SinkError
from ._uri import Int, parse_options
from .base import Sink, SpooledEvent

__all__ = ["MemorySink"]

_MAX_BATCH = Int("max_batch", 1000, minimum=1)


class MemorySink(Sink):
    """Keeps every event it is sent in :attr:`events`.

    It can be made to fail, to exercise the bridge: :meth:`fail` makes every send raise
    until :meth:`recover`, and :attr:`refuse` lists event ids refused for good.

    Args:
        name: the sink's name (its cursor in the spool).
        max_batch: the largest batch it is given.
    """

    def __init__(self, name: str = "memory", *, max_batch: int = 1000) -> None:
        self.name = name
        self.max_batch = max_batch
        self.events: list[SpooledEvent] = []
        self.refuse: set[int] = set()
        self.sends = 0
        self.started = False
        self.closed = False
        self._failure: SinkError | None = None
        self._changed = asyncio.Event()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> MemorySink:
        """The sink ``memory:[NAME][?max_batch=N]`` names (``NAME`` defaults to ``memory``).

        ``options`` are constructor arguments; they take precedence over the URI's.

        Raises:
            ConfigurationError: an unknown option or a bad value in the query.
        """
        name, _, query = uri[len("memory:") :].partition("?")
        parsed = parse_options(query, (_MAX_BATCH,), uri=uri, sink="memory")
        return cls(name or "memory", **{"max_batch": parsed[_MAX_BATCH], **options})

    @property
    def ids(self) -> list[int]:
        """Ids of the events received, in order (repeats included)."""
        return [e.id for e in self.events]

    def fail(self, error: SinkError | None = None) -> None:
        """Make every :meth:`send` raise ``error`` (a retryable ``SinkError`` by default)."""
        self._failure = error if error is not None else SinkError(f"{self.name} is down")

    def recover(self) -> None:
        """Stop failing."""
        self._failure = None

    async def start(self) -> None:
        """Mark the sink started."""
        self.started = True

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Append ``events``, or raise as configured by :meth:`fail` and :attr:`refuse`."""
        self.sends += 1
        if self._failure is not None:
            raise self._failure
        refused = [e.id for e in events if e.id in self.refuse]
        if refused:
            raise PermanentSinkError(f"{self.name} refuses events {refused}")
        self.events.extend(events)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[SpooledEvent]:
        """Wait until at least ``count`` events arrived; ``TimeoutError`` after ``timeout``."""

        async def _wait() -> None:
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)
        return self.events

    async def aclose(self) -> None:
        """Mark the sink closed (the events stay readable)."""
        self.closed = True
