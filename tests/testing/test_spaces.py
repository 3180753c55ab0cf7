"""``Emulator(spaces=N)``: one emulator, several spaces, each seen only with its own token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from neuroio import EventListener
from neuroio.exceptions import ConfigurationError
from neuroio.messages import Backfilled
from neuroio.testing import SPACE_ID_STRIDE, Emulator

from ..helpers import Frames

STRIDE = 10**9
assert SPACE_ID_STRIDE == STRIDE  # the documented range


def spaces_of(got: Frames) -> set[int]:
    """The ``space.id`` of every event frame received (AUTH answers and PONGs skipped)."""
    messages = [json.loads(f) for f in got.frames]
    return {m["data"]["space"]["id"] for m in messages if "data" in m}


@asynccontextmanager
async def listening(emu: Emulator, token: str) -> AsyncIterator[Frames]:
    """A running backfilling listener of ``token``'s space, closed on exit."""
    got = Frames()
    listener = EventListener(
        token,
        got,
        url=emu.url,
        api_url=emu.api_url,
        backfill=True,
        ping_interval=0.1,
        ping_timeout=0.3,
        reconnect_delay=0.01,
        max_reconnect_delay=0.05,
    )
    before = sum(1 for r in emu.clients if r.authenticated)
    task = asyncio.create_task(listener.listen())
    try:
        await emu.wait_for_clients(before + 1)
        yield got
    finally:
        await listener.close()
        await asyncio.wait_for(task, 10)


async def test_tokens_ids_and_names_per_space() -> None:
    """Deterministic tokens; space k's entries carry space k and ids from k * 10**9 + 1."""
    async with Emulator(spaces=3, seed=1) as emu:
        assert emu.space_tokens == ["space-1-token", "space-2-token", "space-3-token"]
        for k, token in enumerate(emu.space_tokens, start=1):
            entries = await emu.space(token).burst(2)
            assert [e["id"] for e in entries] == [k * STRIDE + 1, k * STRIDE + 2]
            assert {e["space"]["id"] for e in entries} == {k}
            assert entries[0]["space"]["name"] == f"Space {k}"
        assert emu.emitted == 6
        assert [emu.space(t).emitted for t in emu.space_tokens] == [2, 2, 2]
        with pytest.raises(ConfigurationError, match="space"):
            await emu.emit()
        with pytest.raises(KeyError):
            emu.space("nope")
    with pytest.raises(ConfigurationError, match="tokens"):
        Emulator(spaces=2, tokens=["x"])
    with pytest.raises(ConfigurationError, match="spaces"):
        Emulator(spaces=0)


async def test_two_listeners_get_only_their_own_space() -> None:
    """Two real listeners with different tokens: each gets its own space's events only,
    live and through the background stream (``rate`` per space)."""
    async with Emulator(spaces=2, seed=2, push_while_disconnected=False) as emu:
        one, two = emu.space_tokens
        async with listening(emu, one) as got1, listening(emu, two) as got2:
            sent1 = [e["id"] for e in await emu.space(one).burst(30)]
            sent2 = [e["id"] for e in await emu.space(two).burst(20)]
            await got1.wait(lambda: set(sent1) <= set(got1.ids))
            await got2.wait(lambda: set(sent2) <= set(got2.ids))
            emu.start_stream(200)
            await got1.wait(lambda: len(got1.ids) >= 40)
            await got2.wait(lambda: len(got2.ids) >= 30)
            await emu.stop_stream()
            await emu.flush()
            marker1 = (await emu.space(one).emit())["id"]
            marker2 = (await emu.space(two).emit())["id"]
            await got1.wait(lambda: marker1 in got1.ids)
            await got2.wait(lambda: marker2 in got2.ids)
        assert all(STRIDE < i < 2 * STRIDE for i in got1.ids)
        assert all(2 * STRIDE < i < 3 * STRIDE for i in got2.ids)
        assert spaces_of(got1) == {1} and spaces_of(got2) == {2}
        assert sorted(got1.ids) == [e.id for e in _stored(emu, one)]
        assert sorted(got2.ids) == [e.id for e in _stored(emu, two)]


def _stored(emu: Emulator, token: str) -> list[Any]:
    return sorted(
        emu.space(token).history.candidates(None, descending=False)[0], key=lambda s: s.id
    )


async def test_gap_recovery_fetches_only_the_own_space() -> None:
    """A forced disconnect (TCP abort) while both spaces emit: each backfilling listener
    recovers exactly its own space's missed entries, no other space's."""
    async with Emulator(spaces=2, seed=3, push_while_disconnected=False) as emu:
        one, two = emu.space_tokens
        async with listening(emu, one) as got1, listening(emu, two) as got2:
            first1 = (await emu.space(one).emit())["id"]
            first2 = (await emu.space(two).emit())["id"]
            await got1.wait(lambda: first1 in got1.ids)
            await got2.wait(lambda: first2 in got2.ids)
            await emu.abort_clients()
            missed1 = [e["id"] for e in await emu.space(one).burst(25)]
            missed2 = [e["id"] for e in await emu.space(two).burst(15)]
            await got1.wait(lambda: set(missed1) <= set(got1.ids), timeout=10)
            await got2.wait(lambda: set(missed2) <= set(got2.ids), timeout=10)
            # A live event after the recovery: the listeners are connected again.
            last1 = (await emu.space(one).emit())["id"]
            await got1.wait(lambda: last1 in got1.ids)
        back1 = [json.loads(f)["id"] for f in got1.frames if isinstance(f, Backfilled)]
        back2 = [json.loads(f)["id"] for f in got2.frames if isinstance(f, Backfilled)]
        assert sorted(back1) == missed1
        assert sorted(back2) == missed2
        assert sorted(got1.ids) == [first1, *missed1, last1]
        assert sorted(got2.ids) == [first2, *missed2]
        assert spaces_of(got1) == {1} and spaces_of(got2) == {2}


async def test_rest_lists_only_the_tokens_space() -> None:
    """``GET /v1/entries/`` with each token lists that space alone; another token is 401."""
    async with Emulator(spaces=3, seed=4) as emu:
        for n, token in zip((3, 5, 2), emu.space_tokens, strict=True):
            await emu.space(token).burst(n)
        async with aiohttp.ClientSession() as session:
            for k, (n, token) in enumerate(zip((3, 5, 2), emu.space_tokens, strict=True), 1):
                headers = {"Authorization": f"Token {token}"}
                async with session.get(f"{emu.api_url}/v1/entries/", headers=headers) as resp:
                    assert resp.status == 200
                    page = await resp.json()
                assert page["count"] == n
                ids = [e["id"] for e in page["results"]]
                assert ids == [k * STRIDE + i for i in range(n, 0, -1)]  # newest first
                assert {e["space"]["id"] for e in page["results"]} == {k}
                assert len(emu.space(token).rest_requests) == 1
                # A picture link of the entry is served (found in its space's history).
                async with session.get(page["results"][0]["face_image"]) as resp:
                    assert resp.status == 200
            headers = {"Authorization": "Token not-a-space"}
            async with session.get(f"{emu.api_url}/v1/entries/", headers=headers) as resp:
                assert resp.status == 401
        assert emu.rest_request_count() == 4


async def test_backlog_before_connecting_is_the_own_space_only() -> None:
    """push_while_disconnected (default): events emitted before a space's first client
    connects are pushed to it on AUTH, those of the other spaces are not."""
    async with Emulator(spaces=2, seed=5) as emu:
        one, two = emu.space_tokens
        early1 = [e["id"] for e in await emu.space(one).burst(4)]
        await emu.space(two).burst(6)
        async with listening(emu, one) as got1:
            await got1.wait(lambda: set(early1) <= set(got1.ids))
            marker = (await emu.space(one).emit())["id"]
            await got1.wait(lambda: marker in got1.ids)
        assert sorted(got1.ids) == [*early1, marker]
        assert spaces_of(got1) == {1}
