"""Gap recovery: events missed while disconnected come back from the REST API, once each."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest

from neuroio import EventListener
from neuroio._protocol.gaps import GapStart, RecentIds, parse_since
from neuroio.messages import Backfilled

from .helpers import until
from .independent_server import IndependentServer

TOKEN = "secret-token"


def test_recent_ids_drops_repeats_within_the_window() -> None:
    """An id seen within the window is a duplicate; the window forgets the oldest."""
    ids = RecentIds(3)
    assert [ids.add(i) for i in (1, 2, 1, 3, 4)] == [True, True, False, True, True]
    assert 1 not in ids and len(ids) == 3
    assert ids.add(1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (41, GapStart(last_id=41)),
        ("41", GapStart(last_id=41)),
        (
            "2024-05-01T10:00:00Z",
            GapStart(since_time=datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ),
        (
            "2024-05-01T10:00:00",
            GapStart(since_time=datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ),
    ],
)
def test_parse_since(value: object, expected: GapStart | None) -> None:
    """since= takes an event id or an ISO-8601 time (UTC when the zone is missing)."""
    assert parse_since(value) == expected  # type: ignore[arg-type]


def test_parse_since_rejects_garbage() -> None:
    """Anything else is a clear ValueError."""
    with pytest.raises(ValueError, match="since"):
        parse_since("yesterday")


async def test_events_emitted_while_disconnected_are_recovered_once_in_order() -> None:
    """2,000 events, three forced disconnects with events emitted during each: every id once.

    The server never pushes an event to a client that was away when it was emitted, so
    only gap recovery can deliver those.
    """
    got: list[int] = []
    recovered: list[int] = []

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            got.append(data["id"])
            if isinstance(message, Backfilled):
                recovered.append(data["id"])

    async with IndependentServer(TOKEN) as server:
        listener = EventListener(
            TOKEN,
            handler,
            url=server.url,
            api_url=server.api_url,
            backfill=True,
            reconnect_delay=0.01,
        )
        task = asyncio.create_task(listener.listen())
        await server.wait_live()
        sent: list[int] = []
        for n in range(3):
            sent += await server.emit(400)
            expected = len(sent)
            await until(lambda: len(got) >= expected)  # noqa: B023 (read at once)
            await server.drop_all()
            # No client is connected now: these go to the history only.
            sent += await server.emit(100 + n)
            await server.wait_live(n + 2)
        sent += await server.emit(2000 - len(sent))
        await until(lambda: len(set(got)) >= len(sent))
        await listener.close()
        await task
    assert len(sent) == 2000
    assert sorted(got) == sent
    assert len(got) == len(set(got)), "an event was delivered twice"
    assert len(recovered) == 100 + 101 + 102
    assert listener.stats.backfilled_events == len(recovered)


async def test_since_recovers_before_the_first_connection() -> None:
    """since=<id> delivers the entries after that id before live ones."""
    got: list[int] = []

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            got.append(data["id"])

    async with IndependentServer(TOKEN) as server:
        old = await server.emit(30)
        listener = EventListener(
            TOKEN, handler, url=server.url, api_url=server.api_url, since=old[9]
        )
        task = asyncio.create_task(listener.listen())
        await until(lambda: len(got) >= 20)
        await listener.close()
        await task
    assert got == old[10:]


async def test_refused_rest_token_is_a_clear_error_and_live_events_continue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """401 from the REST API stops recovery with a logged error; the live stream goes on."""
    got: list[int] = []

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            got.append(data["id"])

    async with IndependentServer(TOKEN) as server:
        listener = EventListener(TOKEN, handler, url=server.url, api_url=server.api_url, since=0)
        server.token_rest = "another-token"
        task = asyncio.create_task(listener.listen())
        await server.wait_live()
        await until(lambda: listener.backfill_error is not None)
        live = await server.emit(5)
        await until(lambda: len(got) >= 5)
        await listener.close()
        await task
    assert got == live
    assert "refused the token" in str(listener.backfill_error)
    assert any("gap recovery failed" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text
