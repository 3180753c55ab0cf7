"""AmqpSink against the real RabbitMQ: confirmed persistent messages with their properties,
templated routing keys, the exchange declared or checked, returns, nacks, outages, bad URIs,
and a whole bridge publishing through it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from neuroio.bridge import Bridge
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.amqp import AmqpSink, _fit_key, clean_key_value
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options, free_port
from ..faultproxy import FaultProxy
from ..helpers import until

pytestmark = pytest.mark.amqp


def events(*ids: int, source: str = "cam") -> list[SpooledEvent]:
    return [
        SpooledEvent(
            i, i, b'{"id":%d,"data":{"source":{"id":"%s"},"n":%d}}' % (i, source.encode(), i), 0.0
        )
        for i in ids
    ]


class Broker:
    """A unique exchange name, and a channel of our own to bind queues and inspect them."""

    def __init__(self, url: str, channel: Any) -> None:
        self.url = url
        self.channel = channel
        self.exchange = f"test-{uuid.uuid4().hex[:12]}"

    def uri(self, query: str = "", url: str | None = None) -> str:
        return f"{url or self.url}?exchange={self.exchange}" + (f"&{query}" if query else "")

    async def queue(self, binding: str = "#", **arguments: Any) -> Any:
        """A queue bound to the exchange, deleted with the connection."""
        queue = await self.channel.declare_queue(exclusive=True, arguments=arguments or None)
        await queue.bind(self.exchange, binding)
        return queue


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(amqp_url)
    held = Broker(amqp_url, await connection.channel())
    yield held
    channel = await connection.channel()
    await channel.exchange_delete(held.exchange)
    await connection.close()


async def started(uri: str) -> AmqpSink:
    sink = from_uri(uri)
    assert isinstance(sink, AmqpSink)
    await sink.start()
    return sink


async def take(queue: Any, count: int) -> list[Any]:
    """``count`` messages from ``queue``, acknowledged, in order."""
    out = []
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            out.append(message)
            if len(out) == count:
                break
    return out


async def test_confirmed_persistent_messages_with_templated_keys(broker: Broker) -> None:
    """The body is the event JSON exactly, persistent, message_id the event id, content_type
    JSON, the routing key from the template with a value's dots and wildcards replaced."""
    sink = await started(broker.uri("routing_key=door.{source.id}"))
    try:
        queue = await broker.queue("door.*")
        batch = events(*range(1, 301)) + events(301, 302, source="a.b*c#d")
        await sink.send(batch)
        got = await asyncio.wait_for(take(queue, 302), 10)
    finally:
        await sink.aclose()
    assert sink.published == 302 and sink.returned == 0
    assert [m.body for m in got] == [e.payload for e in batch]
    assert [m.message_id for m in got] == [str(e.id) for e in batch]
    assert {m.delivery_mode for m in got} == {aio_pika.DeliveryMode.PERSISTENT}
    assert {m.content_type for m in got} == {"application/json"}
    assert [m.routing_key for m in got] == ["door.cam"] * 300 + ["door.a_b_c_d"] * 2


async def test_the_exchange_is_declared_durable_or_checked(broker: Broker) -> None:
    """A missing exchange is declared durable (of the type asked); an existing one of another
    type is a ConfigurationError at start-up naming it; one of the same type is used."""
    sink = await started(broker.uri("exchange_type=fanout"))
    await sink.aclose()
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="durable"):
        # Declaring it non-durable fails only because it exists durable.
        await broker.channel.declare_exchange(broker.exchange, "fanout", durable=False)
    other = from_uri(broker.uri("exchange_type=topic"))
    with pytest.raises(ConfigurationError, match=f"exchange '{broker.exchange}' exists with") as e:
        await other.start()
    await other.aclose()
    assert "received 'topic' but current is 'fanout'" in str(e.value)
    assert "\n" not in str(e.value) and "guest:guest" not in str(e.value)
    again = await started(broker.uri("exchange_type=fanout"))
    await again.aclose()


async def test_unroutable_events_are_logged_once_per_key(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """No queue takes a key: the broker returns the messages; they count as delivered, and the
    key is reported once however many events use it."""
    sink = await started(broker.uri("routing_key=nowhere.{source.id}"))
    try:
        with caplog.at_level(logging.WARNING, logger="neuroio.sinks"):
            await sink.send(events(1, 2, 3, source="a") + events(4, 5, source="b"))
            await sink.send(events(6, 7, source="a"))
    finally:
        await sink.aclose()
    assert sink.returned == 7 and sink.published == 7
    reports = [r.getMessage() for r in caplog.records if "routes routing key" in r.getMessage()]
    assert len(reports) == 2
    assert "'nowhere.a'" in reports[0] and "'nowhere.b'" in reports[1]


async def test_a_nack_is_a_sink_error_and_the_retry_delivers(broker: Broker) -> None:
    """A queue that rejects publishes when full makes the broker nack: SinkError; once there
    is room, the same batch goes through."""
    sink = await started(broker.uri("routing_key=k"))
    queue = await broker.queue("#", **{"x-max-length": 2, "x-overflow": "reject-publish"})
    try:
        with pytest.raises(SinkError, match="refused a message"):
            await sink.send(events(1, 2, 3, 4))
        await queue.purge()
        await sink.send(events(3, 4))
    finally:
        await sink.aclose()
    assert [m.body for m in await take(queue, 2)] == [e.payload for e in events(3, 4)]


async def test_a_lost_connection_is_a_sink_error_then_it_recovers(broker: Broker) -> None:
    """The connection is reset: the send fails with SinkError (retried by the bridge); the next
    send connects again and delivers."""
    async with FaultProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        sink = await started(broker.uri("routing_key=k", url=url))
        try:
            queue = await broker.queue("k")
            await sink.send(events(1))
            proxy.blackhole("down")  # the confirms never come back
            send = asyncio.create_task(sink.send(events(2, 3)))
            await until(lambda: proxy.dropped_down > 0)
            proxy.restore()
            proxy.cut()
            with pytest.raises(SinkError):
                await asyncio.wait_for(send, 10)
            await sink.send(events(2, 3))
        finally:
            await sink.aclose()
        assert proxy.connections == 2
    got = [m.body for m in await asyncio.wait_for(take(queue, 3), 10)]
    # What the broker had of the failed batch may come twice: at least once, in order.
    assert got[0] == events(1)[0].payload and got[-2:] == [e.payload for e in events(2, 3)]


async def test_an_exchange_deleted_under_the_sink_is_declared_again(broker: Broker) -> None:
    """The exchange disappears while the sink runs: the send fails (the broker closes the
    channel), and the retry declares it again and publishes. One put back with another type
    is found at the next connection: a SinkError, retried, not a crash."""
    async with FaultProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        sink = await started(broker.uri("routing_key=k", url=url))
        try:
            await broker.channel.exchange_delete(broker.exchange)
            with pytest.raises(SinkError, match="NOT_FOUND"):
                await sink.send(events(1))
            await sink.send(events(1))
            assert sink.published == 1 and sink.returned == 1  # declared again, unbound
            await broker.channel.exchange_delete(broker.exchange)
            await broker.channel.declare_exchange(broker.exchange, "fanout", durable=True)
            proxy.cut()
            with pytest.raises(SinkError):
                await sink.send(events(2))  # the lost connection (or already the check)
            with pytest.raises(SinkError, match="exists with another type"):
                await sink.send(events(2))
        finally:
            await sink.aclose()


async def test_closed_port_fails_at_start_without_the_password() -> None:
    port = free_port()
    sink = from_uri(f"amqp://user:hunter2@127.0.0.1:{port}/vh")
    with pytest.raises(SinkError, match="unreachable") as caught:
        await sink.start()
    await sink.aclose()
    assert "hunter2" not in str(caught.value) and "hunter2" not in sink.name
    assert sink.name == f"amqp://user:***@127.0.0.1:{port}/vh?exchange=neuroio"
    assert isinstance(sink, AmqpSink) and sink.vhost == "vh"
    assert from_uri("amqp://127.0.0.1/?name=desk").name == "desk"


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("exchange_type=queue", "exchange_type must be one of direct, fanout, topic, headers"),
        ("routing_key={source.id", "not closed"),
        ("routing_key=" + "k" * 256, "at most 255 bytes"),
        ("timeout=0", "timeout must be > 0"),
        ("colour=red", "unknown option 'colour'"),
        ("ca_certs=/x", "unknown option 'ca_certs'"),  # TLS options only with amqps://
    ],
)
def test_bad_options_are_one_line(query: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        from_uri(f"amqp://u:hunter2@127.0.0.1/?{query}")
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message


def test_routing_key_values() -> None:
    """Values lose dots and wildcards; a long key is cut to 255 bytes on a character."""
    assert clean_key_value("a.b*c#d") == "a_b_c_d"
    cut = _fit_key("é" * 200)
    assert len(cut.encode()) == 254 and cut == "é" * 127
    assert from_uri("amqp://127.0.0.1/").routing_key.text == "neuroio.{result}"  # type: ignore[attr-defined]
    tls = from_uri("amqps://127.0.0.1/?ca_certs=/nonexistent.pem")
    assert isinstance(tls, AmqpSink) and tls._url.port == 5671


async def test_a_bridge_delivers_every_event_through_amqp(broker: Broker, tmp_path: Path) -> None:
    """The real bridge, the emulator's events, a route to RabbitMQ keyed per source: each event
    arrives once, in order, with its routing key."""
    # Declared beforehand as the sink would: the bridge's sink finds and checks it.
    await broker.channel.declare_exchange(broker.exchange, "topic", durable=True)
    queue = await broker.queue("ev.#")
    uri = broker.uri("routing_key=ev.{source.id}")
    async with Emulator(tokens=[TOKEN]) as server:
        async with Bridge(TOKEN, [uri], **bridge_options(server, tmp_path)):  # type: ignore[arg-type]
            await server.wait_for_clients(1)
            sent = [await server.emit() for _ in range(300)]
            got = await asyncio.wait_for(take(queue, 300), 20)
    assert [json.loads(m.body)["id"] for m in got] == [e["id"] for e in sent]
    assert [m.routing_key for m in got] == [
        "ev." + clean_key_value(str(e["source"]["id"])) for e in sent
    ]
