"""The bridge's gap recovery against the emulator: ids trusted within reason, a floor that
never depends on a clock, the date_from fallback bounded by the gap, nothing lost across
restarts. The socket never replays (``push_while_disconnected=False``, as on the platform):
what it did not push comes only from the REST API."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from neuroio._protocol.gaps import GapStart
from neuroio._times import iso
from neuroio.bridge import RECOVER_AFTER, RESUME_POINT, Bridge
from neuroio.bridge._recovery import decode_start, encode_start
from neuroio.bridge.spool import Spool
from neuroio.exceptions import SinkError
from neuroio.sinks import MemorySink
from neuroio.testing import BOGUS_ID, Emulator

from ..helpers import until
from ._common import TOKEN


def options(server: Emulator, where: Path, **extra: object) -> dict[str, object]:
    """A bridge's options for tests: the emulator, millisecond intervals."""
    return {
        "url": server.url,
        "api_url": server.api_url,
        "spool": where / "spool.db",
        "ping_interval": 0.05,
        "ping_timeout": 0.3,
        "reconnect_delay": 0.01,
        "max_reconnect_delay": 0.05,
        "sink_retry_delay": 0.01,
        "sink_max_retry_delay": 0.05,
        **extra,
    }


def file_ids(out: Path) -> list[int]:
    if not out.exists():
        return []
    complete = out.read_bytes().rpartition(b"\n")[0]
    return [json.loads(line)["id"] for line in complete.splitlines()]


async def emit(server: Emulator, n: int, **overrides: Any) -> list[int]:
    """Emit ``n`` events back to back (no await suspends: none is pushed to a connection
    that is made meanwhile)."""
    return [(await server.emit(**overrides))["id"] for _ in range(n)]


async def half_open_gap(server: Emulator, bridge: Bridge, n: int) -> list[int]:
    """Freeze the connection (a dead network path), emit ``n`` events it never gets, and wait
    until the bridge noticed, reconnected and recovered them."""
    clients = len(server.clients)
    before = bridge.recovered
    server.freeze()
    ids = await emit(server, n)
    await server.wait_until(
        lambda: sum(1 for c in server.clients[clients:] if c.authenticated) >= 1,
        timeout=10,
        what="a new connection",
    )
    server.unfreeze()
    await until(lambda: bridge.recovered - before >= n, timeout=15)
    assert bridge.recovered - before == n
    return ids


@pytest.mark.parametrize("rest_slow", [False, True])
async def test_a_bogus_id_never_becomes_where_recovery_starts(
    tmp_path: Path, rest_slow: bool
) -> None:
    """After one frame with id 2**62 on the socket (delivered all the same), the next
    300-event gap recovers 300 of 300, and after a restart on the same spool a 200-event gap
    recovers 200 of 200: no REST request ever asks for ids after the bogus one. Also when
    the bogus id comes before the first connection could ask the REST API anything (the
    bound then is the one learnt at start-up)."""
    out = tmp_path / "events.jsonl"
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as server:
        await emit(server, 5)  # the history before the bridge: not recovered (new spool)
        opts = options(server, tmp_path)
        async with Bridge(TOKEN, [f"file:{out}"], **opts) as bridge:  # type: ignore[arg-type]
            if rest_slow:
                # The first connection's own look at the REST API comes after the bogus id.
                server.fail_rest(503, count=10**6)
            await server.wait_for_clients(1)
            live = await emit(server, 10)
            await server.push_unlisted()
            live += await emit(server, 3)
            assert bridge.pipeline is not None
            await until(lambda: bridge.pipeline is not None and bridge.pipeline.received == 14)
            server.heal_rest()
            gap = await half_open_gap(server, bridge, 300)
            await until(lambda: len(file_ids(out)) == 314, timeout=10)
        with Spool(tmp_path / "spool.db") as spool:
            assert spool.last_event_id == BOGUS_ID  # spooled and delivered, as pushed
            stored = decode_start(spool.get_state(RESUME_POINT))
            assert stored is not None and stored.last_id == gap[-1]
        missed = await emit(server, 200)
        async with Bridge(TOKEN, [f"file:{out}"], **opts) as bridge:  # type: ignore[arg-type]
            await until(lambda: bridge.recovered == 200, timeout=15)
            await until(lambda: len(file_ids(out)) == 514, timeout=10)
        assert server.rest_request_count(id_from=str(BOGUS_ID + 1)) == 0
    ids = file_ids(out)
    assert sorted(ids) == sorted([*live, BOGUS_ID, *gap, *missed])
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("history", [0, 5])
async def test_a_server_clock_behind_loses_nothing_for_an_empty_spool(
    tmp_path: Path, history: int
) -> None:
    """A bridge with an empty spool that has seen no event yet, the server's clock five
    minutes behind: a 50-event gap recovers 50 of 50 (the floor is an id from the REST API,
    not a time on either clock)."""
    out = tmp_path / "events.jsonl"
    async with Emulator(
        tokens=[TOKEN], push_while_disconnected=False, clock_offset=-300.0
    ) as server:
        await emit(server, history)
        async with Bridge(TOKEN, [f"file:{out}"], **options(server, tmp_path)) as bridge:  # type: ignore[arg-type]
            await server.wait_for_clients(1)
            gap = await half_open_gap(server, bridge, 50)
            await until(lambda: len(file_ids(out)) == 50, timeout=10)
    assert file_ids(out) == gap


async def test_a_server_ignoring_id_from_costs_requests_by_the_gap_not_the_history(
    tmp_path: Path,
) -> None:
    """A server that ignores ``id_from``: the bridge asks by ``date_from`` from the last
    event's own ``created`` (the server's clock), so a 100-event gap in 60,000 entries takes
    a handful of requests (page size 100), not one per page of the whole history (602)."""
    out = tmp_path / "events.jsonl"
    async with Emulator(
        tokens=[TOKEN], push_while_disconnected=False, ignore_id_from=True
    ) as server:
        # 60,000 entries ten seconds apart, the newest a minute ago.
        start = server.now() - timedelta(seconds=60 + 10 * 60_000)
        for i in range(60_000):
            await server.emit(created=iso(start + timedelta(seconds=10 * i)))
        async with Bridge(TOKEN, [f"file:{out}"], **options(server, tmp_path)) as bridge:  # type: ignore[arg-type]
            await server.wait_for_clients(1)
            live = await emit(server, 10)
            await until(lambda: len(file_ids(out)) == 10, timeout=10)
            before = server.rest_request_count()
            gap = await half_open_gap(server, bridge, 100)
            requests = server.rest_request_count() - before
            await until(lambda: len(file_ids(out)) == 110, timeout=10)
    assert file_ids(out) == live + gap
    assert requests <= 20, requests


async def test_the_floor_is_stored_before_the_listener_starts(tmp_path: Path) -> None:
    """A new spool holds, once the bridge has started and before any event, the REST API's
    newest id as where recovery starts (with its ``created``, for the date_from fallback)."""
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as server:
        history = await emit(server, 3)
        async with Bridge(TOKEN, ["memory:"], **options(server, tmp_path)) as bridge:  # type: ignore[arg-type]
            assert bridge.spool is not None and bridge.spool.last_event_id is None
            for key in (RECOVER_AFTER, RESUME_POINT):
                start = decode_start(bridge.spool.get_state(key))
                assert start is not None and start.last_id == history[-1], key
                assert start.last_created is not None


def test_stored_starts_round_trip_and_older_forms_are_read() -> None:
    """A gap start is stored as its id and ``created`` (or a time); the bare id or ISO text
    older spools stored is still read; garbage is ignored."""
    start = GapStart(last_id=42, last_created=None)
    assert decode_start(encode_start(start)) == start
    [moment] = [GapStart(since_time=Emulator().now()).since_time]
    assert moment is not None
    since = GapStart(since_time=moment)
    decoded = decode_start(encode_start(since))
    assert decoded is not None and decoded.since_time is not None
    assert abs((decoded.since_time - moment).total_seconds()) < 1e-3
    assert decode_start("41") == GapStart(last_id=41)
    old = decode_start("2024-05-01T10:00:00+00:00")
    assert old is not None and old.since_time is not None
    assert decode_start("not a start") is None
    assert decode_start(None) is None


def damage_payload(path: Path, seq: int) -> int:
    """Flip a byte of the stored batch holding ``seq``, as a bad sector would; its first
    seq."""
    conn = sqlite3.connect(path)
    first, blob = conn.execute(
        "SELECT first_seq, payloads FROM segments WHERE first_seq <= ? "
        "ORDER BY first_seq DESC LIMIT 1",
        (seq,),
    ).fetchone()
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0x5A
    conn.execute("UPDATE segments SET payloads = ? WHERE first_seq = ?", (bytes(damaged), first))
    conn.commit()
    conn.close()
    return int(first)


async def test_a_damaged_batch_is_fetched_again_from_the_rest_api(tmp_path: Path) -> None:
    """A stored batch damaged on disk (its checksum fails when a sink reads it) is moved
    aside by the spool, never delivered as garbage; the bridge fetches its events again from
    the REST API, delivers them, and forgets the batch."""
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as server:
        opts = options(server, tmp_path)
        down = MemorySink("out")
        down.fail(SinkError("down while the batches are stored"))
        sent: list[int] = []
        async with Bridge(TOKEN, [down], **opts) as bridge:  # type: ignore[arg-type]
            await server.wait_for_clients(1)
            pipeline = bridge.pipeline
            assert pipeline is not None
            for n in (10, 20, 30):  # three commits, so three stored batches
                sent += await emit(server, 10)
                await until(lambda: pipeline.received == n)  # noqa: B023 (awaited here)
        first = damage_payload(tmp_path / "spool.db", 15)
        sink = MemorySink("out")
        async with Bridge(TOKEN, [sink], **opts) as bridge:  # type: ignore[arg-type]
            await until(lambda: sorted(sink.ids) == sent, timeout=10)
            assert bridge.spool is not None
            spool = bridge.spool
            await until(lambda: spool.damaged_count == 0, timeout=10)
    assert len(sink.ids) == len(set(sink.ids))
    assert first > 1


@pytest.mark.parametrize("rest_order", ["desc", "asc"])
async def test_a_burst_between_the_two_requests_of_the_newest_probe_is_recovered_whole(
    tmp_path: Path, rest_order: str
) -> None:
    """The first connection's look at the REST API is slow: between its two requests (the
    first entry, then the last), the connection dies silently and 300 events are created,
    more than the list held. A newest-first list then answers a new entry where the oldest
    was asked, as an oldest-first list would: the order must not be taken from that, or
    the walk recovers one page (100), moves the cursor past the other 200, and they are
    never recovered. All 300 are recovered, in both orders."""
    out = tmp_path / "events.jsonl"
    async with Emulator(
        tokens=[TOKEN],
        push_while_disconnected=False,
        rest_order=rest_order,  # type: ignore[arg-type]
    ) as server:
        await emit(server, 5)
        # Start-up's probe takes two requests (the list holds 5); the first connection's
        # first request is answered, its second waits.
        server.hold_rest(after=3)
        # The dead connection is noticed after 1.5 s: long after the probe ends.
        opts = options(server, tmp_path, ping_timeout=1.5)
        async with Bridge(TOKEN, [f"file:{out}"], **opts) as bridge:  # type: ignore[arg-type]
            assert bridge._single is not None and bridge._single.recovery is not None
            tracker = bridge._single.recovery.tracker
            await server.wait_for_clients(1)
            await server.wait_until(lambda: server.rest_held == 1, what="a held REST request")
            assert server.rest_request_count() == 4
            server.freeze()
            gap = await emit(server, 300)
            server.release_rest()
            # The probe ended while the connection still counts as live: its gap closed.
            await until(lambda: tracker.open_start is None)
            assert tracker.losses == 0
            await server.wait_until(
                lambda: sum(1 for c in server.clients if c.authenticated) >= 2,
                timeout=10,
                what="a new connection",
            )
            server.unfreeze()
            await until(lambda: bridge.recovered >= 300, timeout=15)
            await until(lambda: len(file_ids(out)) == 300, timeout=10)
            assert bridge.recovered == 300
    assert sorted(file_ids(out)) == gap
