"""The bounded inbox between the reader and the iterator, alone."""

from __future__ import annotations

import asyncio

import pytest

from neuroio._inbox import Inbox


async def test_fifo_and_bounded() -> None:
    """Items come out in order; put_nowait refuses beyond maxsize; high water is kept."""
    inbox: Inbox[int] = Inbox(2)
    assert inbox.put_nowait(1) and inbox.put_nowait(2)
    assert not inbox.put_nowait(3)
    assert inbox.high_water == 2
    assert [inbox.get_nowait(), inbox.get_nowait()] == [1, 2]
    with pytest.raises(IndexError):
        inbox.get_nowait()


async def test_put_waits_for_room_and_get_waits_for_an_item() -> None:
    """A full inbox makes put wait until get makes room; an empty one makes get wait."""
    inbox: Inbox[int] = Inbox(1)
    await inbox.put(1)
    blocked = asyncio.create_task(inbox.put(2))
    await asyncio.sleep(0)  # let it reach its wait
    assert not blocked.done()
    assert await inbox.get() == 1
    await asyncio.wait_for(blocked, 1)
    assert await inbox.get() == 2
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(waiting, 1) == 3


async def test_close_drains_then_ends_and_releases_putters() -> None:
    """After close: what is left comes out, then EOFError; a waiting put gets EOFError."""
    inbox: Inbox[int] = Inbox(1)
    inbox.put_nowait(1)
    blocked = asyncio.create_task(inbox.put(2))
    await asyncio.sleep(0)
    inbox.close()
    with pytest.raises(EOFError):
        await asyncio.wait_for(blocked, 1)
    assert await inbox.get() == 1
    with pytest.raises(EOFError):
        await inbox.get()
    with pytest.raises(EOFError):
        inbox.put_nowait(5)


async def test_room_waits_until_an_item_fits() -> None:
    """``room()`` returns at once with space, waits while full, and ends when an item is taken
    (the reader waits for room before it marks an event as seen)."""
    inbox: Inbox[int] = Inbox(1)
    await asyncio.wait_for(inbox.room(), 1)
    assert inbox.put_nowait(1)
    waiter = asyncio.create_task(inbox.room())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert inbox.get_nowait() == 1
    await asyncio.wait_for(waiter, 1)
    assert inbox.put_nowait(2)
