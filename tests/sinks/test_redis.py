"""RedisSink against the real Redis: stream entries, exactly-once per id, trimming, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from neuroio.bridge import Pipeline
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.redis import RedisSink

from ..helpers import until

pytestmark = pytest.mark.redis


def events(*ids: int) -> list[SpooledEvent]:
    return [SpooledEvent(i, i, b'{"id":%d,"data":{"n":%d}}' % (i, i), 0.0) for i in ids]


@pytest.fixture
async def stream(redis_url: str) -> AsyncIterator[tuple[str, Any]]:
    """A fresh stream name in db 15, and a client to inspect it; both cleaned up after."""
    name = f"test:{uuid.uuid4().hex}"
    client = aioredis.Redis.from_url(redis_url)
    yield name, client
    keys = [k async for k in client.scan_iter(f"{name}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def started(uri: str) -> RedisSink:
    sink = from_uri(uri)
    assert isinstance(sink, RedisSink)
    await sink.start()
    return sink


async def entries(client: Any, name: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for _, fields in await client.xrange(name):
        out.append((int(fields[b"id"]), json.loads(fields[b"event"])))
    return out


async def test_events_become_stream_entries(redis_url: str, stream: tuple[str, Any]) -> None:
    """Each event is one entry with fields id and event (its JSON), in order."""
    name, client = stream
    sink = await started(f"{redis_url}?stream={name}")
    try:
        await sink.send(events(*range(1, 501)))
    finally:
        await sink.aclose()
    got = await entries(client, name)
    assert [i for i, _ in got] == list(range(1, 501))
    assert got[0][1] == {"id": 1, "data": {"n": 1}}
    assert sink.added == 500
    assert 0 < await client.ttl(f"{name}:seen:1") <= 86_400


async def test_retry_and_two_bridges_add_each_id_once(
    redis_url: str, stream: tuple[str, Any]
) -> None:
    """Two sinks (two bridges) sending overlapping batches concurrently, then a retry of a
    batch, leave exactly one entry per id."""
    name, client = stream
    a = await started(f"{redis_url}?stream={name}")
    b = await started(f"{redis_url}?stream={name}")
    try:
        await asyncio.gather(
            a.send(events(*range(1, 1001))),
            b.send(events(*range(500, 1501))),
        )
        await a.send(events(*range(1, 1001)))  # a retry after an unanswered send
    finally:
        await a.aclose()
        await b.aclose()
    ids = [i for i, _ in await entries(client, name)]
    assert sorted(ids) == list(range(1, 1501))
    assert a.added + b.added == 1500


async def test_maxlen_trims_the_stream(redis_url: str, stream: tuple[str, Any]) -> None:
    """?maxlen=N keeps the stream near N entries."""
    name, client = stream
    sink = await started(f"{redis_url}?stream={name}&maxlen=100")
    try:
        await sink.send(events(*range(1, 2001)))
    finally:
        await sink.aclose()
    assert 100 <= await client.xlen(name) < 300


async def test_dedupe_ttl_option(redis_url: str, stream: tuple[str, Any]) -> None:
    """?dedupe_ttl sets how long an id is remembered."""
    name, client = stream
    sink = await started(f"{redis_url}?stream={name}&dedupe_ttl=60")
    try:
        await sink.send(events(1))
    finally:
        await sink.aclose()
    assert 0 < await client.ttl(f"{name}:seen:1") <= 60


async def test_wrong_key_type_is_retryable(redis_url: str, stream: tuple[str, Any]) -> None:
    """A key that is not a stream makes send fail with SinkError (retried, never dropped)."""
    name, client = stream
    await client.set(name, "not a stream")
    sink = await started(f"{redis_url}?stream={name}")
    try:
        with pytest.raises(SinkError, match="WRONGTYPE"):
            await sink.send(events(1))
    finally:
        await sink.aclose()


async def test_unreachable_fails_at_start() -> None:
    """Nothing on the port: SinkError at start-up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = from_uri(f"redis://:pw-secret@127.0.0.1:{port}/0")
    with pytest.raises(SinkError, match="unreachable") as info:
        await sink.start()
    await sink.aclose()
    assert "pw-secret" not in str(info.value)


def test_bad_uris() -> None:
    """Invalid databases and options are ConfigurationErrors; passwords are redacted."""
    with pytest.raises(ConfigurationError, match="database"):
        from_uri("redis://:pw-secret@127.0.0.1:6379/abc")
    with pytest.raises(ConfigurationError, match="maxlen") as info:
        from_uri("redis://:pw-secret@127.0.0.1:6379/0?maxlen=-1")
    assert "pw-secret" not in str(info.value)
    sink = from_uri("redis://:pw-secret@127.0.0.1:6379/2?stream=s1")
    assert sink.name == "redis://:***@127.0.0.1:6379/2?stream=s1"
    assert "pw-secret" not in repr(sink)


async def test_wrong_key_type_mid_stream_loses_no_event(
    redis_url: str, stream: tuple[str, Any]
) -> None:
    """The stream key turns into a string between two batches; the next batch fails on every
    retry while it stays so, and leaves no event marked as seen; once the key is a stream
    again the same batch goes through: every id in the stream exactly once."""
    name, client = stream
    sink = await started(f"{redis_url}?stream={name}")
    try:
        await sink.send(events(*range(1, 51)))
        # Set the stream aside and put a string in its place (WRONGTYPE for XADD).
        await client.rename(name, f"{name}:aside")
        await client.set(name, "not a stream")
        batch = events(*range(51, 451))  # two script calls of 200 events each
        for _ in range(5):  # the bridge retries the same batch while the key is wrong
            with pytest.raises(SinkError, match="WRONGTYPE"):
                await sink.send(batch)
        marked = [i for i in range(51, 451) if await client.exists(f"{name}:seen:{i}")]
        assert marked == []
        await client.delete(name)
        await client.rename(f"{name}:aside", name)
        await sink.send(batch)
    finally:
        await sink.aclose()
    ids = [i for i, _ in await entries(client, name)]
    assert ids == list(range(1, 451))
    assert sink.added == 450


async def test_a_failed_call_in_a_batch_keeps_the_others_counted(
    redis_url: str, stream: tuple[str, Any]
) -> None:
    """A batch whose events were all added before (dropped as repeats) and a batch refused
    leave the count of added entries exact: only entries really added are counted."""
    name, client = stream
    sink = await started(f"{redis_url}?stream={name}")
    try:
        await sink.send(events(*range(1, 301)))
        await sink.send(events(*range(1, 301)))  # a retry after an unanswered send
        assert sink.added == 300
        await client.rename(name, f"{name}:aside")
        await client.set(name, "not a stream")
        with pytest.raises(SinkError, match="WRONGTYPE"):
            await sink.send(events(*range(301, 401)))
        assert sink.added == 300
    finally:
        await sink.aclose()


async def test_bridge_through_a_wrong_type_key_delivers_every_event(
    redis_url: str, stream: tuple[str, Any], tmp_path: Path
) -> None:
    """Through the pipeline, as in a bridge: the stream key is a string while events keep
    coming, the sink fails and is retried; once the key is fixed, the count of delivered
    events matches the stream, which holds every id exactly once."""
    name, client = stream
    with Spool(tmp_path / "s.db") as spool:
        sink = await started(f"{redis_url}?stream={name}")
        pipeline = Pipeline(spool, [sink], retry_delay=0.005, max_retry_delay=0.01)
        await pipeline.start()
        status = pipeline.status[sink.name]
        try:
            for i in range(1, 101):
                await pipeline.put(i, events(i)[0].payload)
            await pipeline.wait_delivered(timeout=10)
            # Each swap in one MULTI/EXEC: the sink retries every few milliseconds, and an XADD
            # between two separate commands would land in a stream the next one overwrites.
            async with client.pipeline(transaction=True) as swap:
                await swap.rename(name, f"{name}:aside").set(name, "not a stream").execute()
            for i in range(101, 201):
                await pipeline.put(i, events(i)[0].payload)
            await until(lambda: status.failures >= 10, timeout=10)
            async with client.pipeline(transaction=True) as swap:
                await swap.delete(name).rename(f"{name}:aside", name).execute()
            await pipeline.wait_delivered(timeout=10)
        finally:
            await pipeline.close()
            await sink.aclose()
    ids = [i for i, _ in await entries(client, name)]
    assert sorted(ids) == list(range(1, 201)) and len(ids) == 200
    assert status.delivered == 200


def camera_events(*pairs: tuple[int, object]) -> list[SpooledEvent]:
    return [
        SpooledEvent(i, i, json.dumps({"id": i, "data": {"source": {"id": cam}}}).encode(), 0.0)
        for i, cam in pairs
    ]


async def test_a_templated_stream_name_groups_each_batch_per_stream(
    redis_url: str, stream: tuple[str, Any]
) -> None:
    """stream={source.id}: each event in its camera's stream, in order; a retried batch and a
    second sink add nothing twice (each stream has its own dedupe keys); an event without the
    field goes to the 'unknown' stream; a value's spaces and braces become '_'."""
    name, client = stream
    uri = f"{redis_url}?stream={name}:{{source.id}}"
    batch = camera_events((1, 7), (2, 8), (3, 7), (4, None), (5, "a {b}"))
    first, second = await started(uri), await started(uri)
    try:
        await first.send(batch)
        await first.send(batch)
        await second.send(batch[:3])
    finally:
        await first.aclose()
        await second.aclose()
    assert [i for i, _ in await entries(client, f"{name}:7")] == [1, 3]
    assert [i for i, _ in await entries(client, f"{name}:8")] == [2]
    assert [i for i, _ in await entries(client, f"{name}:unknown")] == [4]
    assert [i for i, _ in await entries(client, f"{name}:a__b_")] == [5]
    assert first.added == 5 and second.added == 0


def test_a_bad_stream_template_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"stream 'x:\{source': the placeholder"):
        from_uri("redis://127.0.0.1:6379/0?stream=x:{source")
