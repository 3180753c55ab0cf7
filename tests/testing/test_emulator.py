"""The emulator as a whole: its options and lifecycle."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest

from neuroio._times import iso, parse_time
from neuroio.exceptions import ConfigurationError
from neuroio.testing import BOGUS_ID, Emulator

from .conftest import OTHER, TOKEN, connected, recv_json, rest

# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"rate": 0},
        {"auth_timeout": 0},
        {"history_size": 0},
        {"replay_speed": -1},
        {"tokens": [""]},
        {"close_timeout": 0},
    ],
)
def test_invalid_options(kwargs: dict[str, Any]) -> None:
    """Invalid options raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        Emulator(**kwargs)


def test_url_needs_start() -> None:
    """url, api_url and port exist only once started."""
    with pytest.raises(RuntimeError):
        _ = Emulator().url


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rest_order": "random"},
        {"rest_shape": "dict"},
        {"clock_offset": math.nan},
        {"clock_offset": math.inf},
    ],
)
def test_invalid_new_options(kwargs: dict[str, Any]) -> None:
    """rest_order, rest_shape and clock_offset are checked at construction too."""
    with pytest.raises(ConfigurationError):
        Emulator(**kwargs)


def test_the_old_import_path_gives_the_same_objects() -> None:
    """neuroio.emulator re-exports neuroio.testing: one class, whichever path imports it."""
    import neuroio.emulator as old
    import neuroio.testing as new

    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name
    assert {"Emulator", "EntryFactory", "ClientRecord", "HOSTILE_KINDS", "OMIT"} <= set(old.__all__)


# ---------------------------------------------------------------- the server's clock


def _seconds(created: str) -> float:
    moment = parse_time(created)
    assert moment is not None, created
    return moment.timestamp()


async def test_clock_offset_shifts_created_and_the_date_filters(
    session: aiohttp.ClientSession,
) -> None:
    """A server ten minutes behind writes created ten minutes in the past; a date_from taken
    from the client's clock then finds nothing, one taken from the server's clock finds it."""
    async with Emulator(tokens={TOKEN}, clock_offset=-600.0) as emu:
        entry = await emu.emit()
        lag = time.time() - _seconds(entry["created"])
        assert 540 < lag < 660  # ten minutes, give or take a slow machine
        assert abs(emu.now().timestamp() - (time.time() - 600)) < 60
        client_clock = iso(datetime.now(timezone.utc) - timedelta(seconds=60))
        server_clock = iso(emu.now() - timedelta(seconds=60))
        assert (await rest(session, emu, date_from=client_clock))["count"] == 0
        assert (await rest(session, emu, date_from=server_clock))["count"] == 1
        assert (await rest(session, emu, date_to=client_clock))["count"] == 1


async def test_clock_offset_can_step_at_run_time(emu: Emulator) -> None:
    """Setting clock_offset steps the server's clock at once, backwards too; ids still grow."""
    assert emu.clock_offset == 0.0
    first = await emu.emit()
    emu.clock_offset = -3600.0
    second = await emu.emit()
    emu.clock_offset = 0.0
    third = await emu.emit()
    assert first["id"] < second["id"] < third["id"]
    assert _seconds(first["created"]) - _seconds(second["created"]) > 3000
    assert _seconds(third["created"]) - _seconds(second["created"]) > 3000


# ---------------------------------------------------------------- unlisted events


async def test_push_unlisted_reaches_the_socket_but_not_rest(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """push_unlisted() sends a bogus id (2**62 by default) that REST never lists, the
    backlog never holds, and later generated ids do not jump past."""
    async with connected(session, emu) as ws:
        await emu.emit()
        pushed = await emu.push_unlisted(result="exact")
        await emu.emit()
        ids = [(await recv_json(ws))["id"] for _ in range(3)]
    assert pushed["id"] == BOGUS_ID == 2**62 and pushed["result"] == "exact"
    assert ids == [1, BOGUS_ID, 2]
    assert emu.emitted == 2
    page = await rest(session, emu, limit=100)
    assert [e["id"] for e in page["results"]] == [2, 1]
    assert (await emu.push_unlisted(id=10**12))["id"] == 10**12
    assert (await emu.push_unlisted({"id": 77, "result": "new"}))["id"] == 77
    assert (await emu.emit())["id"] == 3
    async with connected(session, emu, token=OTHER) as other:
        # The backlog for a new token holds the listed events only.
        assert [(await recv_json(other))["id"] for _ in range(3)] == [1, 2, 3]


# ---------------------------------------------------------------- counting REST requests


async def test_rest_request_count_by_path_and_query(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """rest_request_count counts every request (failed ones too) by path, by parameters
    present, and by parameter values."""
    headers = {"Authorization": f"Token {TOKEN}"}
    await rest(session, emu, id_from=5, limit=1)
    await rest(session, emu, id_from=6)
    await rest(session, emu, date_from="2024-01-01T00:00:00Z")
    async with session.get(f"{emu.api_url}/v1/entries", headers=headers) as resp:
        assert resp.status == 200
    emu.fail_rest(503, count=1)
    await rest(session, emu, status=503, id_from=5)
    emu.rest_requests.clear()  # the counts do not depend on that list
    assert emu.rest_request_count() == 5
    assert emu.rest_request_count(path="/v1/entries/") == 4
    assert emu.rest_request_count(path="/v1/entries") == 1
    assert emu.rest_request_count(has=["id_from"]) == 3
    assert emu.rest_request_count(id_from="5") == 2
    assert emu.rest_request_count(id_from="5", limit="1") == 1
    assert emu.rest_request_count(has=["date_from", "id_from"]) == 0
