"""Streaming gap recovery against real HTTP servers on loopback: every missed entry once, in
ascending order, whatever the list's order or shape, with bounded memory and requests."""

from __future__ import annotations

import asyncio
import logging
import random
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neuroio._protocol.backoff import Backoff
from neuroio._protocol.gaps import GapStart, GapTracker, Newest
from neuroio._recovery import Recovery
from neuroio._times import parse_time
from neuroio.emulator import Emulator
from neuroio.exceptions import BackfillError

from .helpers import until

TOKEN = "recovery-secret-token"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class EntriesServer:
    """``GET /v1/entries/`` with the behaviours the emulator lacks: any order (shuffled within
    each page), bare lists, entries created while a client pages, a clock off by ``skew``."""

    def __init__(
        self,
        *,
        order: str = "desc",
        bare: bool = False,
        ignore_id_from: bool = False,
        skew: float = 0.0,
        spacing: float = 1.0,
    ) -> None:
        self.order = order
        self.bare = bare
        self.ignore_id_from = ignore_id_from
        self.skew = skew
        self.spacing = spacing
        self.entries: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        self.insert_per_request = 0
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.next_base: str | None = None
        self.before_answer: Callable[[], None] | None = None
        self._rng = random.Random(7)
        self._next_id = 5000
        self._clock = NOW - timedelta(seconds=skew + spacing * 60_000)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, n: int) -> list[int]:
        """Append ``n`` entries, ``spacing`` seconds apart on the server's clock, which is
        ``skew`` seconds behind ours (and never reaches our now); ids grow by 1 to 3."""
        ids = []
        for _ in range(n):
            self._next_id += self._rng.randint(1, 3)
            self._clock += timedelta(seconds=self.spacing)
            ids.append(self._next_id)
            self.entries.append({"id": self._next_id, "created": iso(self._clock)})
        return ids

    async def _entries(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(query)
        if self.before_answer is not None:
            before, self.before_answer = self.before_answer, None
            before()
        if self.failures:
            status, headers = self.failures.pop(0)
            return web.json_response({"detail": "failing"}, status=status, headers=headers)
        if request.headers.get("Authorization") != f"Token {TOKEN}":
            return web.json_response({"detail": "Invalid token."}, status=401)
        if self.insert_per_request:
            self.add(self.insert_per_request)
        rows = self.entries
        if "id_from" in query and not self.ignore_id_from:
            rows = [e for e in rows if e["id"] >= int(query["id_from"])]
        if "date_from" in query:
            since = datetime.fromisoformat(query["date_from"].replace("Z", "+00:00"))
            rows = [
                e
                for e in rows
                if datetime.fromisoformat(e["created"].replace("Z", "+00:00")) >= since
            ]
        if self.order in ("desc", "shuffled_desc"):
            rows = rows[::-1]
        limit = min(int(query.get("limit", 20)), 1000)
        offset = int(query.get("offset", 0))
        page = list(rows[offset : offset + limit])
        if self.order.startswith("shuffled"):
            self._rng.shuffle(page)
        if self.bare:
            return web.json_response(page)
        nxt = None
        if offset + limit < len(rows):
            base = self.next_base or self.api_url
            nxt = f"{base}/v1/entries/?limit={limit}&offset={offset + limit}"
        return web.json_response(
            {"count": len(rows), "next": nxt, "previous": None, "results": page}
        )

    async def __aenter__(self) -> EntriesServer:
        app = web.Application()
        app.router.add_get("/v1/entries/", self._entries)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class Collector:
    """A ``deliver`` that checks ascending order across pages and keeps the ids."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    async def __call__(self, batch: list[dict[str, Any]]) -> None:
        for entry in batch:
            assert not self.ids or entry["id"] > self.ids[-1], "delivered out of order"
            self.ids.append(entry["id"])


@asynccontextmanager
async def recovery(
    api_url: str, tracker: GapTracker | None = None, **options: Any
) -> AsyncIterator[tuple[Recovery, Collector]]:
    got = Collector()
    async with aiohttp.ClientSession() as session:
        rec = Recovery(
            session,
            api_url,
            TOKEN,
            tracker or GapTracker(max_events=None),
            got,
            backoff=Backoff(0.001, 0.01),
            **options,
        )
        yield rec, got


async def lose_and_recover(rec: Recovery, missed: Any) -> int:
    """Connect (floor), lose the connection, let ``missed()`` happen, reconnect, recover."""
    await rec.connected()
    rec.tracker.lost()
    missed()
    await rec.connected()
    return await rec.run()


ORDERS = ["asc", "desc", "shuffled_asc", "shuffled_desc"]


async def test_a_loss_during_the_newest_probe_keeps_the_gap_open() -> None:
    """The connection is lost again while the newest entry is being asked for, and entries
    are created after that loss: the answer does not close the gap (it predates them), the
    next connection's does, and every missed entry is recovered once, in order."""
    async with EntriesServer(order="desc") as server:
        server.add(200)
        missed: list[int] = []
        async with recovery(server.api_url, page_size=50) as (rec, got):
            await rec.connected()  # the first connection: the floor
            rec.tracker.lost()
            missed.extend(server.add(40))

            def lost_again() -> None:
                rec.tracker.lost()
                missed.extend(server.add(25))

            server.before_answer = lost_again
            assert await rec.connected() is None  # overtaken by the loss: not used
            missed.extend(server.add(10))
            gap = await rec.connected()
            assert gap is not None
            await rec.run()
        assert got.ids == missed and len(missed) == 75


@pytest.mark.parametrize("ignore_id_from", [False, True], ids=["id_from", "ignores_id_from"])
@pytest.mark.parametrize("bare", [False, True], ids=["paginated", "bare"])
@pytest.mark.parametrize("order", ORDERS)
async def test_every_order_and_shape_recovers_the_gap_once_ascending(
    order: str, bare: bool, ignore_id_from: bool
) -> None:
    """Ascending, descending or shuffled pages, paginated or a bare list, with or without
    id_from: exactly the 1,234 missed entries, in ascending order across pages."""
    async with EntriesServer(order=order, bare=bare, ignore_id_from=ignore_id_from) as server:
        server.add(3000)
        missed: list[int] = []
        async with recovery(server.api_url, page_size=50) as (rec, got):
            await lose_and_recover(rec, lambda: missed.extend(server.add(1234)))
        assert got.ids == missed
        assert rec.held_high_water <= 50 + 50 // 4


@pytest.mark.parametrize("inserts", [7, 25], ids=["within_slack", "beyond_slack"])
@pytest.mark.parametrize("bare", [False, True], ids=["paginated", "bare"])
@pytest.mark.parametrize("order", ORDERS)
async def test_entries_created_during_recovery_shift_nothing(
    order: str, bare: bool, inserts: int
) -> None:
    """Entries created before every answer (offsets move under a descending walk), fewer or
    more than the slack of a page: nothing of the gap is skipped or repeated, order kept."""
    async with EntriesServer(order=order, bare=bare) as server:
        server.add(500)
        missed: list[int] = []
        async with recovery(server.api_url, page_size=40) as (rec, got):
            await rec.connected()
            rec.tracker.lost()
            missed += server.add(800)
            server.insert_per_request = inserts
            await rec.connected()
            await rec.run()
        assert got.ids[: len(missed)] == missed
        assert len(got.ids) == len(set(got.ids))


async def test_a_server_ignoring_id_from_costs_requests_for_the_gap_not_the_history() -> None:
    """60,000 entries, a gap of 100, the server ignores id_from: recovery asks by date_from
    from the cursor entry's own time and needs a handful of requests, not 600."""
    async with Emulator(ignore_id_from=True, tokens=[TOKEN]) as emulator:
        start = NOW - timedelta(hours=20)
        for i in range(60_000):
            await emulator.emit(created=iso(start + timedelta(seconds=i)))
        tracker = GapTracker(max_events=None)
        async with recovery(emulator.api_url, tracker, page_size=100) as (rec, got):
            await rec.connected()
            tracker.lost()
            missed = [
                (await emulator.emit(created=iso(start + timedelta(seconds=60_000 + i))))["id"]
                for i in range(100)
            ]
            await rec.connected()
            emulator.rest_requests.clear()
            await rec.run()
        assert got.ids == missed
        assert rec.ignores_id_from
        # The 300 s margin before the cursor's time adds 300 entries: 400 in all.
        assert len(emulator.rest_requests) <= 12, emulator.rest_requests


async def test_a_server_honouring_id_from_needs_a_request_per_page() -> None:
    """The emulator (newest first, honours id_from): a 100-entry gap in 60,000 costs a
    few requests."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        await emulator.burst(60_000)
        async with recovery(emulator.api_url, page_size=100) as (rec, got):
            await rec.connected()
            rec.tracker.lost()
            missed = [e["id"] for e in await emulator.burst(100)]
            await rec.connected()
            emulator.rest_requests.clear()
            await rec.run()
        assert got.ids == missed
        assert len(emulator.rest_requests) <= 4, emulator.rest_requests
        assert all("id_from" in q for q in emulator.rest_requests)


async def test_a_bogus_pushed_id_does_not_poison_the_next_gap() -> None:
    """A frame with id 2**62 on the socket: the next gap of 300 recovers 300."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        await emulator.burst(50)
        reports: list[int] = []
        tracker = GapTracker(on_suspect=lambda i, why: reports.append(i))
        async with recovery(emulator.api_url, tracker) as (rec, got):
            await rec.connected()
            for e in await emulator.burst(5):
                assert tracker.seen(e["id"], e["created"])
            assert tracker.seen(2**62)
            tracker.lost()
            missed = [e["id"] for e in await emulator.burst(300)]
            await rec.connected()
            await rec.run()
        assert got.ids == missed
        assert reports == [2**62]


async def test_a_restored_bogus_cursor_is_replaced_by_the_floor() -> None:
    """A spool whose cursor is 2**62 is checked against the REST API at start-up: the
    entries after the newest id at that time are recovered, not none."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        await emulator.burst(20)
        tracker = GapTracker()
        tracker.restore(GapStart(last_id=2**62))
        async with recovery(emulator.api_url, tracker) as (rec, got):
            await rec.connected()
            await rec.run()
            assert got.ids == [] and tracker.floor is not None
            tracker.lost()
            missed = [e["id"] for e in await emulator.burst(200)]
            await rec.connected()
            await rec.run()
        assert got.ids == missed


async def test_no_event_seen_recovers_from_the_floor_not_the_clock() -> None:
    """A listener that has seen no event when its connection goes half-open: the 20 entries
    emitted meanwhile come back, asked by id from the floor."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        await emulator.burst(10)
        async with recovery(emulator.api_url) as (rec, got):
            await rec.connected()
            rec.tracker.lost(now=0.0)  # a clock that is all wrong does not matter
            missed = [e["id"] for e in await emulator.burst(20)]
            emulator.rest_requests.clear()
            await rec.connected()
            await rec.run()
        assert got.ids == missed
        assert not any("date_from" in q for q in emulator.rest_requests)


@pytest.mark.parametrize("skew", [300.0, 86_400.0 + 600.0], ids=["5min", "1day"])
async def test_a_server_clock_behind_drops_nothing(skew: float) -> None:
    """The server's clock 5 minutes or a day behind ours: with the default one-day max age,
    every entry of the gap is recovered (the age is measured against the newest entry)."""
    async with EntriesServer(skew=skew, spacing=0.5) as server:
        server.add(100)
        missed: list[int] = []
        async with recovery(server.api_url, GapTracker()) as (rec, got):
            await lose_and_recover(rec, lambda: missed.extend(server.add(50)))
        assert got.ids == missed


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_max_events_keeps_the_newest(order: str) -> None:
    """A gap of 500 with max_events=100: the newest 100, ascending; the rest counted."""
    async with EntriesServer(order=order) as server:
        server.add(50)
        missed: list[int] = []
        async with recovery(server.api_url, GapTracker(max_events=100), page_size=30) as (
            rec,
            got,
        ):
            await lose_and_recover(rec, lambda: missed.extend(server.add(500)))
        assert got.ids == missed[-100:]
        assert rec.skipped == 400


async def test_max_age_skips_the_old_part_of_a_long_gap() -> None:
    """Entries older than max_age before the newest entry are skipped, the rest delivered."""
    async with EntriesServer(spacing=60.0) as server:
        server.add(10)
        missed: list[int] = []
        async with recovery(server.api_url, GapTracker(max_age=600.0)) as (rec, got):
            await lose_and_recover(rec, lambda: missed.extend(server.add(100)))
        assert got.ids == missed[-11:]  # created 0, 60, ..., 600 s before the newest


async def test_a_50000_entry_gap_is_streamed_one_page_at_a_time() -> None:
    """Recovering 50,000 entries of 1 KiB holds one page at a time: the component's own
    high water is a page, and the Python heap peaks far below the 50 MB the gap weighs."""
    async with EntriesServer(order="shuffled_desc", spacing=0.01) as server:
        server.add(10)
        # The dedupe window (ids only, bounded by its own size) is kept small here so that
        # the peak shows what the walk itself holds.
        tracker = GapTracker(max_events=None, dedupe_window=1000)
        async with recovery(server.api_url, tracker, page_size=500) as (rec, got):
            await rec.connected()
            rec.tracker.lost()
            missed = server.add(50_000)
            for e in server.entries:
                e["face_image"] = "x" * 1024
            await rec.connected()
            tracemalloc.start()
            try:
                await rec.run()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert got.ids == missed
        assert rec.held_high_water <= 500 + 500 // 4
        assert len(server.requests) < 2 * 50_000 // 400
        # The server shares the process: its page (500 entries, ~0.5 MB) is counted too, and
        # so are the 50,000 ids the test keeps.
        assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("status", [500, 503, 408, 429])
async def test_transient_failures_are_retried(status: int) -> None:
    """5xx, 408 and 429 (with Retry-After) are retried until the answer comes."""
    async with EntriesServer() as server:
        server.add(20)
        missed: list[int] = []
        async with recovery(server.api_url) as (rec, got):
            await rec.connected()
            rec.tracker.lost()
            missed += server.add(30)
            server.failures = [(status, {"Retry-After": "0.01"})] * 3
            await rec.connected()
            await rec.run()
        assert got.ids == missed
        assert rec.retries == 3


async def test_a_refused_token_raises_once_and_stays_out_of_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """401 raises BackfillError after one request; the token is in no log line or error."""
    caplog.set_level(logging.DEBUG)
    async with EntriesServer() as server:
        server.add(5)
        server.failures = [(401, {})]
        async with recovery(server.api_url) as (rec, _):
            with pytest.raises(BackfillError, match="refused the token") as info:
                await rec.connected()
        assert len(server.requests) == 1
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text


async def test_connection_errors_are_retried_until_closing() -> None:
    """An API that is not there: retried with backoff; closing ends it without an error."""
    closing = asyncio.Event()
    async with EntriesServer() as server:
        url = server.api_url
    async with recovery(url, closing=closing) as (rec, _):
        task = asyncio.create_task(rec.connected())
        await until(lambda: rec.retries >= 3)
        closing.set()
        assert await asyncio.wait_for(task, 5) is None


async def test_next_links_to_another_host_are_never_followed() -> None:
    """Every URL is built from api_url: a ``next`` naming another server gets no request
    (the token goes nowhere else), and the gap is still recovered."""
    async with EntriesServer() as elsewhere, EntriesServer() as server:
        server.next_base = elsewhere.api_url
        server.add(100)
        missed: list[int] = []
        async with recovery(server.api_url, page_size=20) as (rec, got):
            await lose_and_recover(rec, lambda: missed.extend(server.add(300)))
        assert got.ids == missed
        assert elsewhere.requests == []


async def test_newest_reads_the_newest_entry_in_either_order() -> None:
    """newest() finds the newest id and its time whatever the order, in two requests for a
    paginated list."""
    for order in ORDERS:
        async with EntriesServer(order=order) as server:
            ids = server.add(40)
            async with recovery(server.api_url) as (rec, _):
                newest = await rec.newest()
            assert newest is not None and newest.id == ids[-1], order
            assert newest.created == parse_time(server.entries[-1]["created"])
            assert rec.descending is order.endswith("desc")
            assert len(server.requests) == 2


async def test_an_empty_list_has_no_newest() -> None:
    """No entries at all: no floor, nothing to recover, no error."""
    async with EntriesServer() as server:
        async with recovery(server.api_url) as (rec, got):
            assert await rec.newest() == Newest(None)
            await lose_and_recover(rec, lambda: None)
        assert got.ids == []


async def test_emulator_failures_are_retried_and_a_provided_token_is_kept_while_it_works() -> None:
    """The emulator's 429 with Retry-After, then 500, are retried; a token provider is asked
    once, its token kept while the API accepts it."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        await emulator.burst(10)
        calls: list[int] = []

        def token() -> str:
            calls.append(1)
            return TOKEN

        got = Collector()
        async with aiohttp.ClientSession() as session:
            rec = Recovery(
                session, emulator.api_url, token, GapTracker(), got, backoff=Backoff(0.001, 0.01)
            )
            await rec.connected()
            rec.tracker.lost()
            missed = [e["id"] for e in await emulator.burst(40)]
            emulator.fail_rest(429, count=2, retry_after=0.01)
            await rec.connected()
            emulator.fail_rest(500, count=2)
            await rec.run()
        assert got.ids == missed
        assert rec.retries == 4
        assert rec.requests == 10
        assert len(calls) == 1


async def test_a_token_refused_by_the_api_is_asked_for_again_once() -> None:
    """Revoked between requests: the 401 makes the provider give the new token, and the same
    request is repeated at once with it; a provider giving the refused token again is final."""
    old, new = "rest-old-token-1a2b", "rest-new-token-3c4d"
    current = [old]

    async def token() -> str:
        return current[0]

    async with Emulator(tokens=[old]) as emulator:
        await emulator.burst(5)
        got = Collector()
        async with aiohttp.ClientSession() as session:
            rec = Recovery(
                session, emulator.api_url, token, GapTracker(), got, backoff=Backoff(0.001, 0.01)
            )
            await rec.connected()
            rec.tracker.lost()
            missed = [e["id"] for e in await emulator.burst(30)]
            emulator.accept(new)
            current[0] = new
            await emulator.revoke(old)
            await rec.connected()
            await rec.run()
            assert got.ids == missed
            assert rec.retries == 0
            await emulator.revoke(new)
            rec.tracker.lost()
            await emulator.burst(3)
            with pytest.raises(BackfillError, match="refused the token"):
                await rec.connected()


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_since_a_time_recovers_the_entries_created_from_it(order: str) -> None:
    """since=<time> (before the first connection): the entries created from that time on
    the server's clock, ascending, nothing older."""
    async with EntriesServer(order=order) as server:
        server.add(300)
        since = parse_time(server.entries[199]["created"])
        assert since is not None
        tracker = GapTracker()
        tracker.restore(GapStart(since_time=since))
        async with recovery(server.api_url, tracker, page_size=30) as (rec, got):
            await rec.connected()
            await rec.run()
        assert got.ids == [e["id"] for e in server.entries[199:]]


async def test_serve_recovers_after_each_notified_connection() -> None:
    """The owner's loop only calls notify_connected() and tracker.lost(): serve() learns
    the floor at each connection and recovers each gap; a refused token goes to on_error
    and the next connection is served."""
    errors: list[BackfillError] = []
    async with EntriesServer() as server:
        server.add(10)
        async with recovery(server.api_url) as (rec, got):
            task = asyncio.create_task(rec.serve(errors.append))
            rec.notify_connected()
            await until(lambda: rec.tracker.floor is not None)
            rec.tracker.lost()
            first = server.add(30)
            rec.notify_connected()
            await until(lambda: len(got.ids) >= 30)
            rec.tracker.lost()
            server.failures = [(403, {})]
            rec.notify_connected()
            await until(lambda: bool(errors))
            rec.tracker.lost()
            second = server.add(20)
            rec.notify_connected()
            await until(lambda: len(got.ids) >= 50)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert got.ids == first + second
        assert len(errors) == 1 and "HTTP 403" in str(errors[0])
