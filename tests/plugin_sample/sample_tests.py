"""A project's tests of its NeuroIO event handling, using only the plugin's fixtures.

Copied as ``test_sample.py`` into a fresh directory and run by pytester, with the plugin
loaded from its ``pytest11`` entry point as in any project that installs neuroio-events.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from neuroio import EventListener, State
from neuroio.testing import Emulator, ListenerFactory, ThreadedEmulator

# The code under test: what a project does with each event.
SEEN: list[tuple[int, str | None]] = []


def remember(event_id: int, pid: str | None) -> None:
    SEEN.append((event_id, pid))


@pytest.mark.asyncio
async def test_async_iterator(
    neuroio_emulator: Emulator, neuroio_listener: ListenerFactory
) -> None:
    """An async test: the emulator runs on the test's loop; await its methods."""
    listener = neuroio_listener()
    async with listener:
        await neuroio_emulator.wait_for_clients(1)
        sent = await neuroio_emulator.emit(result="exact")
        event = await anext(aiter(listener))
    assert event.id == sent["id"] and event.entry.result == "exact"
    assert event.entry.face_image == sent["face_image"]
    assert sent["face_image"].startswith(neuroio_emulator.media_url)


LEFT_RUNNING: list[EventListener] = []


@pytest.mark.asyncio
async def test_async_handler_left_running(
    neuroio_emulator: Emulator, neuroio_listener: ListenerFactory
) -> None:
    """A listener task the test does not stop: the fixture closes it after the test."""
    got = asyncio.Event()

    async def handler(frame: str | bytes) -> None:
        if '"id"' in str(frame):
            got.set()

    listener = neuroio_listener(handler)
    LEFT_RUNNING.append(listener)
    asyncio.get_running_loop().create_task(listener.listen())
    await neuroio_emulator.emit()
    await asyncio.wait_for(got.wait(), 5)


def test_the_listener_left_running_was_closed() -> None:
    """(Runs after the test above.)"""
    assert [listener.state for listener in LEFT_RUNNING] == [State.CLOSED]


def test_sync_stream(neuroio_emulator: ThreadedEmulator, neuroio_listener: ListenerFactory) -> None:
    """A plain test: the emulator runs in a thread; its methods block; a sync stream."""
    with neuroio_listener.connect() as events:
        neuroio_emulator.wait_for_clients(1)
        sent = [neuroio_emulator.emit(result="new") for _ in range(3)]
        for entry in sent:
            event = next(events)
            remember(event.id, event.entry.pid)
            assert event.entry.pid == entry["pid"]
    assert SEEN == [(e["id"], e["pid"]) for e in sent]
    assert neuroio_emulator.emitted == 3


def test_sync_run_in_a_thread(
    neuroio_emulator: ThreadedEmulator, neuroio_listener: ListenerFactory
) -> None:
    """listener.run() in a thread of the test, left running: closed after the test."""
    frames: list[str | bytes] = []

    async def handler(frame: str | bytes) -> None:
        frames.append(frame)

    listener = neuroio_listener(handler)
    LEFT_RUNNING.append(listener)
    threading.Thread(target=listener.run, daemon=True).start()
    neuroio_emulator.wait_for_clients(1)
    neuroio_emulator.burst(2)
    neuroio_emulator.wait_until(lambda: neuroio_emulator.clients[0].events_sent == 2)


def test_that_one_was_closed_too() -> None:
    """(Runs after the test above.)"""
    assert [listener.state for listener in LEFT_RUNNING] == [State.CLOSED, State.CLOSED]


@pytest.mark.neuroio_emulator(push_while_disconnected=False, seed=4)
def test_emulator_options_from_the_marker(neuroio_emulator: ThreadedEmulator) -> None:
    """@pytest.mark.neuroio_emulator(...) passes options to the Emulator."""
    assert neuroio_emulator.push_while_disconnected is False
    assert neuroio_emulator.emulator is not None and neuroio_emulator.running


def test_a_wrong_token_is_refused(neuroio_listener: ListenerFactory) -> None:
    """The emulator accepts only neuroio_listener.token."""
    from neuroio import AuthenticationError

    with pytest.raises(AuthenticationError):
        with neuroio_listener.connect(api_token="wrong") as events:
            next(events)
