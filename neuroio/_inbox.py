"""The bounded queue between the socket reader and a consumer that pulls events.

``asyncio.Queue`` costs several method calls and a bookkeeping counter per item; at hundreds of
thousands of frames per second that is most of a listener's overhead. This queue is a deque
with one waiting consumer and waiting producers, and does nothing else per item.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """A bounded FIFO for one consumer task and any number of producers.

    Args:
        maxsize: items held at most; :meth:`put` waits for room beyond it (backpressure).

    After :meth:`close`, :meth:`get` returns what is left and then raises
    :class:`EOFError`; :meth:`put` raises :class:`EOFError` at once.
    """

    __slots__ = ("maxsize", "high_water", "_items", "_getter", "_putters", "_closed")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.high_water = 0
        """The largest number of items held at once."""
        self._items: deque[T] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def put_nowait(self, item: T) -> bool:
        """Add ``item`` if there is room; return whether it was added.

        Raises:
            EOFError: the inbox is closed.
        """
        if self._closed:
            raise EOFError("the inbox is closed")
        items = self._items
        if len(items) >= self.maxsize:
            return False
        items.append(item)
        if len(items) > self.high_water:
            self.high_water += 1
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)
        return True

    async def put(self, item: T) -> None:
        """Add ``item``, waiting while the inbox is full.

        Raises:
            EOFError: the inbox is closed (before or while waiting).
        """
        while not self.put_nowait(item):
            await self._taken()

    async def room(self) -> None:
        """Wait until an item would fit (or the inbox is closed)."""
        while not self._closed and len(self._items) >= self.maxsize:
            await self._taken()

    async def _taken(self) -> None:
        """Wait until an item is taken (or the inbox is closed)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._putters.append(waiter)
        try:
            await waiter
        finally:
            try:
                self._putters.remove(waiter)
            except ValueError:
                pass

    def get_nowait(self) -> T:
        """Take the oldest item; :class:`IndexError` if there is none."""
        item = self._items.popleft()
        if self._putters:
            self._wake_putter()
        return item

    async def get(self) -> T:
        """Take the oldest item, waiting for one; :class:`EOFError` once closed and empty."""
        while not self._items:
            if self._closed:
                raise EOFError("the inbox is closed")
            if self._getter is not None:
                raise RuntimeError("only one task may wait on an Inbox")
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getter = getter
            try:
                await getter
            finally:
                if self._getter is getter:
                    self._getter = None
        return self.get_nowait()

    def close(self) -> None:
        """No more items: wake everyone waiting."""
        self._closed = True
        self._wake_getter()
        for waiter in self._putters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def _wake_putter(self) -> bool:
        for waiter in self._putters:
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def __repr__(self) -> str:
        return f"<Inbox {len(self._items)}/{self.maxsize}{' closed' if self._closed else ''}>"
