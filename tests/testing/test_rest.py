"""The REST side: GET /v1/entries/ with its token check, filters and pagination."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from neuroio.exceptions import ConfigurationError
from neuroio.testing import Emulator

from .conftest import TOKEN, rest

# ---------------------------------------------------------------- REST


async def test_rest_needs_a_valid_token(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """No header or a wrong token is 401 with {"detail": ...}."""
    assert "detail" in await rest(session, emu, token=None, status=401)
    assert "detail" in await rest(session, emu, token="nope", status=401)
    async with session.get(
        f"{emu.api_url}/v1/entries/", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert resp.status == 401


async def test_rest_pagination_newest_first(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """Results come newest first; count, next and previous follow limit/offset."""
    await emu.burst(45)
    page = await rest(session, emu)
    assert page["count"] == 45 and page["previous"] is None
    assert [e["id"] for e in page["results"]] == list(range(45, 25, -1))
    seen = [e["id"] for e in page["results"]]
    async with session.get(page["next"], headers={"Authorization": f"Token {TOKEN}"}) as resp:
        second = await resp.json()
    assert second["previous"] is not None and second["next"] is not None
    assert "offset" not in second["previous"]  # back to the first page
    seen += [e["id"] for e in second["results"]]
    last = await rest(session, emu, limit=20, offset=40)
    assert last["next"] is None
    seen += [e["id"] for e in last["results"]]
    assert seen == list(range(45, 0, -1))
    full = await rest(session, emu, limit=10_000)
    assert len(full["results"]) == 45
    assert full["results"][0] == json.loads(json.dumps(full["results"][0]))


async def test_rest_results_are_the_emitted_entries(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A REST item is byte-for-byte the data of the event that was pushed."""
    sent = await emu.burst(3)
    page = await rest(session, emu)
    assert page["results"] == sent[::-1]


async def test_rest_limit_is_capped(session: aiohttp.ClientSession) -> None:
    """limit is capped at 1000; a non-positive limit means the default 20."""
    async with Emulator(tokens={TOKEN}) as emu:
        await emu.burst(1100)
        assert len((await rest(session, emu, limit=5000))["results"]) == 1000
        assert len((await rest(session, emu, limit=0))["results"]) == 20


async def test_rest_id_from(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """id_from and entry_id_from keep ids >= the bound (both given: the larger)."""
    await emu.burst(30)
    page = await rest(session, emu, id_from=25, limit=100)
    assert [e["id"] for e in page["results"]] == [30, 29, 28, 27, 26, 25]
    page = await rest(session, emu, entry_id_from=28)
    assert page["count"] == 3
    page = await rest(session, emu, entry_id_from=28, id_from=29)
    assert page["count"] == 2


async def test_rest_ignore_id_from(session: aiohttp.ClientSession) -> None:
    """ignore_id_from=True simulates a platform without id_from support."""
    async with Emulator(tokens={TOKEN}, ignore_id_from=True) as emu:
        await emu.burst(5)
        assert (await rest(session, emu, id_from=4))["count"] == 5


async def test_rest_filters(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """Every documented filter narrows the list; list filters take comma-joined values."""
    await emu.emit(
        created="2024-01-01T10:00:00.000Z",
        result="exact",
        liveness="passed",
        mood="happiness",
        sex=1,
        age=30,
        source={"id": 1, "name": "A"},
        space={"id": 10, "name": "S"},
    )
    await emu.emit(
        created="2024-01-02T10:00:00.000Z",
        result="new",
        liveness="failed",
        mood="neutral",
        sex=0,
        age=50,
        source={"id": 2, "name": "B"},
        space={"id": 11, "name": "T"},
    )
    await emu.emit(
        created="2024-01-03T10:00:00",  # no zone: UTC
        result="ha",
        liveness="undetermined",
        mood="sadness",
        sex=1,
        age=70,
        source={"id": 3, "name": "C"},
        space={"id": 10, "name": "S"},
    )

    async def ids(**params: Any) -> list[int]:
        page = await rest(session, emu, **params)
        assert page["count"] == len(page["results"])
        return [e["id"] for e in page["results"]]

    assert await ids(date_from="2024-01-02T00:00:00Z") == [3, 2]
    assert await ids(date_to="2024-01-02T10:00:00.000Z") == [2, 1]
    assert await ids(date_from="2024-01-01T12:00:00+00:00", date_to="2024-01-02T12:00:00Z") == [2]
    assert await ids(result="exact") == [1]
    assert await ids(result="exact,ha") == [3, 1]
    assert await ids(liveness="failed") == [2]
    assert await ids(mood="sadness,happiness") == [3, 1]
    assert await ids(sex=1) == [3, 1]
    assert await ids(age_from=40) == [3, 2]
    assert await ids(age_to=50) == [2, 1]
    assert await ids(age_from=40, age_to=60) == [2]
    assert await ids(sources_ids="1,3") == [3, 1]
    assert await ids(spaces_ids="11") == [2]
    assert await ids(result="exact,ha", sources_ids="3", id_from=2) == [3]
    assert await ids(result="junk") == []


async def test_rest_filtered_pagination(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """count is the number of matches; offset/limit page through matches only."""
    for i in range(1, 31):
        await emu.emit(result="exact" if i % 3 == 0 else "new")
    page = await rest(session, emu, result="exact", limit=4, offset=4)
    assert page["count"] == 10
    assert [e["id"] for e in page["results"]] == [18, 15, 12, 9]
    assert "result=exact" in page["next"] and "offset=8" in page["next"]


@pytest.mark.parametrize(
    "params",
    [{"id_from": "x"}, {"age_from": "old"}, {"date_from": "yesterday"}, {"sources_ids": "1,a"}],
)
async def test_rest_bad_parameter_is_400(
    session: aiohttp.ClientSession, emu: Emulator, params: dict[str, str]
) -> None:
    """A malformed filter value is a 400 with a detail naming the parameter."""
    body = await rest(session, emu, status=400, **params)
    assert next(iter(params)) in body["detail"]


async def test_rest_unsorted_ids_still_served_newest_first(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Entries emitted out of id order are served by descending id."""
    for i in (10, 5, 7):
        await emu.emit(id=i)
    assert [e["id"] for e in (await rest(session, emu))["results"]] == [10, 7, 5]
    assert [e["id"] for e in (await rest(session, emu, id_from=6))["results"]] == [10, 7]


async def test_rest_history_size(session: aiohttp.ClientSession) -> None:
    """Only the newest history_size entries are kept."""
    async with Emulator(tokens={TOKEN}, history_size=3) as emu:
        await emu.burst(5)
        page = await rest(session, emu)
    assert [e["id"] for e in page["results"]] == [5, 4, 3]


async def test_fail_rest_count_and_heal(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """fail_rest(count=n) fails the next n requests; heal_rest ends an open-ended failure;
    rest_requests records each request's parameters."""
    await emu.emit()
    emu.fail_rest(503, count=2)
    await rest(session, emu, status=503, limit=5)
    await rest(session, emu, status=503)
    assert (await rest(session, emu))["count"] == 1
    emu.fail_rest()
    await rest(session, emu, status=500)
    await rest(session, emu, token=None, status=500)  # failure comes before auth
    emu.heal_rest()
    await rest(session, emu, id_from=1)
    assert emu.rest_requests == [{"limit": "5"}, {}, {}, {}, {}, {"id_from": "1"}]


async def test_fail_rest_429_retry_after(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """A 429 failure carries Retry-After when retry_after is given."""
    emu.fail_rest(429, count=1, retry_after=0.25)
    async with session.get(
        f"{emu.api_url}/v1/entries/", headers={"Authorization": f"Token {TOKEN}"}
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "0.25"
        assert "detail" in await resp.json()
    with pytest.raises(ConfigurationError):
        emu.fail_rest(200)


# ---------------------------------------------------------------- order and shape


async def ids_of(session: aiohttp.ClientSession, emu: Emulator, **params: Any) -> list[int]:
    body = await rest(session, emu, **params)
    items = body if isinstance(body, list) else body["results"]
    return [e["id"] for e in items]


async def test_rest_order_asc_serves_oldest_first(session: aiohttp.ClientSession) -> None:
    """rest_order="asc": oldest first, with id_from, filters, pagination and ids emitted out
    of order; the attribute can be switched back to "desc" at any time, and is checked."""
    async with Emulator(tokens={TOKEN}, rest_order="asc") as emu:
        await emu.burst(30)
        page = await rest(session, emu, limit=10, offset=10)
        assert [e["id"] for e in page["results"]] == list(range(11, 21))
        assert page["count"] == 30 and "offset=20" in page["next"]
        assert await ids_of(session, emu, id_from=27) == [27, 28, 29, 30]
        assert await ids_of(session, emu, id_from=27, limit=2, offset=1) == [28, 29]
        await emu.emit(id=5, result="exact")  # ids out of order from here on
        await emu.emit(id=3, result="exact")
        assert (await ids_of(session, emu, limit=3)) == [1, 2, 3]
        assert await ids_of(session, emu, id_from=29, limit=100) == [29, 30]
        exact = [e["id"] for e in (await rest(session, emu, result="exact", limit=100))["results"]]
        assert exact == sorted(exact) and {3, 5} <= set(exact)
        emu.rest_order = "desc"
        assert await ids_of(session, emu, limit=2) == [30, 29]
        with pytest.raises(ConfigurationError):
            emu.rest_order = "sideways"  # type: ignore[assignment]
        with pytest.raises(ConfigurationError):
            emu.rest_shape = "dict"  # type: ignore[assignment]
        assert (emu.rest_order, emu.rest_shape) == ("desc", "page")


async def test_rest_shape_list_is_a_bare_list(session: aiohttp.ClientSession) -> None:
    """rest_shape="list": a JSON list of entries, honouring limit, offset, filters and order."""
    async with Emulator(tokens={TOKEN}, rest_shape="list") as emu:
        sent = await emu.burst(30)
        body = await rest(session, emu)
        assert isinstance(body, list)
        assert body == sent[::-1][:20]  # the default limit, newest first
        assert await ids_of(session, emu, limit=5, offset=5) == [25, 24, 23, 22, 21]
        assert await ids_of(session, emu, id_from=29) == [30, 29]
        assert await ids_of(session, emu, offset=100) == []
        emu.rest_order = "asc"
        assert await ids_of(session, emu, limit=3) == [1, 2, 3]
        emu.rest_shape = "page"
        assert (await rest(session, emu, limit=1))["count"] == 30
        emu.rest_shape = "list"
        assert "detail" in await rest(session, emu, status=400, id_from="x")
        assert "detail" in await rest(session, emu, token="nope", status=401)
