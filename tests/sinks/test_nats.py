"""NatsSink against the real NATS JetStream: publish with acks, duplicates dropped, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.nats import NatsSink, subject_matches

pytestmark = pytest.mark.nats


def events(*ids: int) -> list[SpooledEvent]:
    return [SpooledEvent(i, i, b'{"id":%d,"data":{"n":%d}}' % (i, i), 0.0) for i in ids]


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[tuple[str, Any]]:
    """A unique stream name, and a JetStream context to inspect it; the stream is deleted."""
    name = f"T{uuid.uuid4().hex[:12].upper()}"
    nc = await nats.connect(nats_url)
    ctx = nc.jetstream()
    yield name, ctx
    try:
        await ctx.delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    await nc.close()


async def started(uri: str) -> NatsSink:
    sink = from_uri(uri)
    assert isinstance(sink, NatsSink)
    await sink.start()
    return sink


async def stored_ids(ctx: Any, stream: str) -> list[int]:
    info = await ctx.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await ctx.get_msg(stream, seq)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == str(
            json.loads(msg.data)["id"]
        )
        ids.append(json.loads(msg.data)["id"])
    return ids


async def test_publishes_each_event_with_msg_id(nats_url: str, js: tuple[str, Any]) -> None:
    """The stream is created with a long duplicate window; events are stored in order."""
    stream, ctx = js
    sink = await started(f"{nats_url}?subject={stream.lower()}.events&stream={stream}")
    try:
        await sink.send(events(*range(1, 301)))
    finally:
        await sink.aclose()
    assert await stored_ids(ctx, stream) == list(range(1, 301))
    info = await ctx.stream_info(stream)
    assert info.config.duplicate_window == 86_400
    assert info.config.subjects == [f"{stream.lower()}.events"]


async def test_duplicates_from_retries_and_two_bridges_are_dropped(
    nats_url: str, js: tuple[str, Any]
) -> None:
    """Two sinks publishing overlapping ids concurrently, then a retry: each id stored once."""
    stream, ctx = js
    uri = f"{nats_url}?subject={stream.lower()}.events&stream={stream}"
    a = await started(uri)
    b = await started(uri)
    try:
        await asyncio.gather(a.send(events(*range(1, 1001))), b.send(events(*range(500, 1501))))
        await a.send(events(*range(1, 1001)))
    finally:
        await a.aclose()
        await b.aclose()
    assert sorted(await stored_ids(ctx, stream)) == list(range(1, 1501))
    assert a.duplicates + b.duplicates == 1000 + 501


async def test_existing_stream_is_used_and_checked(nats_url: str, js: tuple[str, Any]) -> None:
    """An existing stream taking the subject (by wildcard) is used; one that does not take
    it is a ConfigurationError."""
    stream, ctx = js
    await ctx.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    sink = await started(f"{nats_url}?subject={stream.lower()}.a.b&stream={stream}")
    try:
        await sink.send(events(1))
    finally:
        await sink.aclose()
    assert await stored_ids(ctx, stream) == [1]
    other = from_uri(f"{nats_url}?subject=elsewhere.x&stream={stream}")
    with pytest.raises(ConfigurationError, match="does not take subject"):
        await other.start()
    await other.aclose()


async def test_unreachable_fails_at_start() -> None:
    """Nothing on the port: SinkError at start-up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = from_uri(f"nats://tok-secret@127.0.0.1:{port}")
    with pytest.raises(SinkError, match="unreachable"):
        await sink.start()
    await sink.aclose()
    assert "tok-secret" not in sink.name


def test_bad_uris_and_subject_matching() -> None:
    """Bad subjects, streams and options are ConfigurationErrors; wildcards match like NATS."""
    for bad in ("subject=a.*", "stream=a.b", "dedupe_window=0", "colour=red"):
        with pytest.raises(ConfigurationError):
            from_uri(f"nats://127.0.0.1:4222?{bad}")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.b", "a.b") and not subject_matches("a.b", "a.c")


async def test_lost_connection_fails_the_batch_at_once(nats_url: str, js: tuple[str, Any]) -> None:
    """Acks addressed to a lost connection never come: the send fails when the connection
    drops, not a whole timeout later; sent again, each event is stored once."""
    from ..faultproxy import FaultProxy

    stream, ctx = js
    async with FaultProxy("127.0.0.1", 4222) as proxy:
        sink = await started(
            f"nats://127.0.0.1:{proxy.port}?subject={stream.lower()}.ev&stream={stream}&timeout=30"
        )
        try:
            await sink.send(events(1, 2))
            proxy.blackhole("down")  # the publishes go out, their acks never come back
            send = asyncio.create_task(sink.send(events(3, 4)))
            await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            proxy.cut()
            with pytest.raises(SinkError, match="connection to NATS was lost"):
                await asyncio.wait_for(send, 10)
            assert loop.time() - started_at < 10  # far below the 30 s timeout
            proxy.restore()

            async def resend() -> None:
                while True:
                    try:
                        await sink.send(events(3, 4))
                        return
                    except SinkError:
                        await asyncio.sleep(0.05)  # the client reconnects by itself

            await asyncio.wait_for(resend(), 15)
        finally:
            await sink.aclose()
    assert await stored_ids(ctx, stream) == [1, 2, 3, 4]


async def test_refused_publishes_leave_no_mark(nats_url: str, js: tuple[str, Any]) -> None:
    """A stream that refuses messages (full, discard new) fails the batch on every retry;
    JetStream records an id only with its message, so once the stream takes messages again
    the same batch stores every event that was refused: each id exactly once."""
    from nats.js.api import DiscardPolicy, StreamConfig

    stream, ctx = js
    subject = f"{stream.lower()}.ev"
    config = StreamConfig(
        name=stream,
        subjects=[subject],
        max_msgs=5,
        discard=DiscardPolicy.NEW,
        duplicate_window=3600.0,
    )
    await ctx.add_stream(config)
    sink = await started(f"{nats_url}?subject={subject}&stream={stream}")
    try:
        batch = events(*range(1, 21))
        for _ in range(3):
            with pytest.raises(SinkError, match="JetStream refused"):
                await sink.send(batch)
        assert await stored_ids(ctx, stream) == [1, 2, 3, 4, 5]
        config.max_msgs = -1
        await ctx.update_stream(config)
        await sink.send(batch)
    finally:
        await sink.aclose()
    assert await stored_ids(ctx, stream) == list(range(1, 21))


def camera_events(*pairs: tuple[int, object]) -> list[SpooledEvent]:
    return [
        SpooledEvent(i, i, json.dumps({"id": i, "data": {"source": {"id": cam}}}).encode(), 0.0)
        for i, cam in pairs
    ]


async def test_a_templated_subject_publishes_per_camera_into_one_stream(
    nats_url: str, js: tuple[str, Any]
) -> None:
    """subject=<base>.{source.id}: the stream is created on <base>.*, each event stored once on
    its camera's subject (a retry and a second sink add nothing); a value's dots, spaces and
    wildcards become '_', so it stays one token."""
    stream, ctx = js
    base = stream.lower()
    uri = f"{nats_url}?subject={base}.cam.{{source.id}}&stream={stream}"
    batch = camera_events((1, 7), (2, 8), (3, "a.b *>"), (4, None))
    first = await started(uri)
    second = await started(uri)
    try:
        await first.send(batch)
        await first.send(batch)
        await second.send(batch[:2])
    finally:
        await first.aclose()
        await second.aclose()
    info = await ctx.stream_info(stream)
    assert info.config.subjects == [f"{base}.cam.*"]
    assert await stored_ids(ctx, stream) == [1, 2, 3, 4]
    subjects = [(await ctx.get_msg(stream, seq)).subject for seq in range(1, 5)]
    assert subjects == [
        f"{base}.cam.7",
        f"{base}.cam.8",
        f"{base}.cam.a_b___",
        f"{base}.cam.unknown",
    ]


async def test_an_existing_stream_must_capture_every_templated_subject(
    nats_url: str, js: tuple[str, Any]
) -> None:
    """A stream that takes only one camera's subject cannot hold the others: refused at start."""
    stream, ctx = js
    base = stream.lower()
    await ctx.add_stream(name=stream, subjects=[f"{base}.cam.7"])
    sink = from_uri(f"{nats_url}?subject={base}.cam.{{source.id}}&stream={stream}")
    try:
        with pytest.raises(ConfigurationError, match=rf"does not take subject {base}\.cam\.\*"):
            await sink.start()
    finally:
        await sink.aclose()


def test_subject_filters_of_templates() -> None:
    from neuroio._routing.template import Template
    from neuroio.sinks.nats import subject_filter

    assert subject_filter(Template("a.b")) == "a.b"
    assert subject_filter(Template("a.{source.id}.x-{pid}")) == "a.*.*"
    assert subject_filter(Template("{result}.{created:%Y.%m}")) == "*.*"
