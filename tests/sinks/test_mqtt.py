"""MqttSink against the real Mosquitto: templated topics, QoS, availability and its will,
a broker going away and coming back, bad URIs, and a whole bridge publishing through it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
import trustme

from neuroio.bridge import Bridge
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.mqtt import MqttSink, clean_topic_value
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options, free_port
from ..faultproxy import FaultProxy
from ..helpers import until

pytestmark = pytest.mark.mqtt


def events(*ids: int, source: str = "cam") -> list[SpooledEvent]:
    return [
        SpooledEvent(
            i, i, b'{"id":%d,"data":{"source":{"id":"%s"},"n":%d}}' % (i, source.encode(), i), 0.0
        )
        for i in ids
    ]


class Subscriber:
    """A real MQTT client subscribed to ``topic``, keeping every message it gets."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []

    async def run(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if topic is None or m.topic.value == topic]


@contextlib.asynccontextmanager
async def subscribed(topic: str, qos: int = 2, port: int = 1883) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=qos)
        subscriber = Subscriber(client)
        task = asyncio.create_task(subscriber.run())
        try:
            yield subscriber
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@pytest.fixture
async def prefix(mqtt_url: str) -> AsyncIterator[str]:
    """A unique topic prefix; retained messages left under it are cleared afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        for topic in (f"{name}/available", f"{name}/status"):
            await client.publish(topic, b"", qos=1, retain=True)  # empty + retain: cleared


async def started(uri: str) -> MqttSink:
    sink = from_uri(uri)
    assert isinstance(sink, MqttSink)
    await sink.start()
    return sink


async def test_publishes_each_event_to_its_templated_topic(mqtt_url: str, prefix: str) -> None:
    """Payloads are the event JSON exactly, in order, on the topic the template gives, with
    the wildcard and separator characters of a value replaced; never retained."""
    async with subscribed(f"{prefix}/#") as sub:
        sink = await started(
            f"{mqtt_url}/{prefix}/doors/{{source.id}}?availability={prefix}/available"
        )
        try:
            batch = events(*range(1, 201)) + events(201, 202, source="a/b+c#d")
            await sink.send(batch)
            await until(lambda: len(sub.payloads()) >= 203)
        finally:
            await sink.aclose()
        assert sink.published == 202
        assert sub.payloads(f"{prefix}/doors/cam") == [e.payload for e in batch[:200]]
        assert sub.payloads(f"{prefix}/doors/a_b_c_d") == [e.payload for e in batch[200:]]
        published = [m for m in sub.messages if "/doors/" in m.topic.value]
        assert all(not m.retain and m.qos == 1 for m in published)


async def test_qos_2_and_qos_0(mqtt_url: str, prefix: str) -> None:
    """qos=2 publishes at QoS 2 (done on PUBCOMP); qos=0 at QoS 0; the empty topic is the
    default one."""
    async with subscribed(f"{prefix}/#") as sub:
        for qos in (2, 0):
            sink = await started(f"{mqtt_url}/{prefix}/q{qos}?qos={qos}&availability=")
            try:
                await sink.send(events(1, 2, 3))
            finally:
                await sink.aclose()
        await until(lambda: len(sub.messages) >= 6)
    assert {m.topic.value: m.qos for m in sub.messages} == {f"{prefix}/q2": 2, f"{prefix}/q0": 0}
    assert from_uri(mqtt_url).topic.text == "neuroio/events"  # type: ignore[attr-defined]


async def test_availability_is_retained_online_then_offline_on_close(
    mqtt_url: str, prefix: str
) -> None:
    """A subscriber arriving after start() gets the retained ``online``; after a clean close,
    one arriving then gets the retained ``offline``."""
    avail = f"{prefix}/available"
    sink = await started(f"{mqtt_url}/{prefix}/ev?availability={avail}")
    try:
        async with subscribed(avail) as sub:
            await until(lambda: len(sub.messages) >= 1)
            assert sub.payloads() == [b"online"] and sub.messages[0].retain
    finally:
        await sink.aclose()
    async with subscribed(avail) as sub:
        await until(lambda: len(sub.messages) >= 1)
        assert sub.payloads() == [b"offline"] and sub.messages[0].retain


async def test_will_says_offline_when_the_connection_dies_then_online_again(
    mqtt_url: str, prefix: str
) -> None:
    """A connection reset without a goodbye: the broker publishes the will (``offline``,
    retained); the sink notices, reconnects on its own and says ``online`` again."""
    avail = f"{prefix}/status"
    async with FaultProxy("127.0.0.1", 1883) as proxy, subscribed(avail) as sub:
        sink = await started(f"mqtt://127.0.0.1:{proxy.port}/{prefix}/ev?availability={avail}")
        try:
            await until(lambda: sub.payloads() == [b"online"])
            assert proxy.cut() == 1
            await until(lambda: sub.payloads() == [b"online", b"offline", b"online"], timeout=10)
            assert proxy.connections == 2
            await sink.send(events(1))  # the new connection publishes
        finally:
            await sink.aclose()
        await until(lambda: sub.payloads()[-1:] == [b"offline"])


async def test_lost_connection_fails_the_batch_at_once(mqtt_url: str, prefix: str) -> None:
    """PUBACKs that can no longer come: the send fails when the connection drops, not after
    the whole timeout; sent again, the batch arrives."""
    async with FaultProxy("127.0.0.1", 1883) as proxy, subscribed(f"{prefix}/#") as sub:
        sink = await started(f"mqtt://127.0.0.1:{proxy.port}/{prefix}/ev?availability=&timeout=30")
        try:
            proxy.blackhole("down")  # the publishes go out, their PUBACKs never come back
            send = asyncio.create_task(sink.send(events(1, 2, 3)))
            loop = asyncio.get_running_loop()
            await until(lambda: proxy.dropped_down > 0)
            started_at = loop.time()
            proxy.restore()
            proxy.cut()
            with pytest.raises(SinkError, match="acknowledgements missing: the connection"):
                await asyncio.wait_for(send, 10)
            assert loop.time() - started_at < 10  # far below the 30 s timeout
            await until(lambda: sink.connected, timeout=10)
            await sink.send(events(1, 2, 3))
        finally:
            await sink.aclose()
        # What the broker had of the failed batch, then the whole batch again: at least once.
        await until(lambda: sub.payloads()[-3:] == [e.payload for e in events(1, 2, 3)])
        assert 4 <= len(sub.messages) <= 6


class Mosquitto:
    """A broker of this test's own, on its own port, to stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, config: Path | None = None) -> None:
        argv = ["mosquitto", "-c", str(config)] if config else ["mosquitto", "-p", str(self.port)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.proc = proc
        await until(lambda: _listening(self.port) or proc.poll() is not None, timeout=10)
        if proc.poll() is not None:
            self.proc = None
            pytest.fail(f"mosquitto exited: {proc.communicate()[1].decode()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.communicate(timeout=10)  # waits, and closes the stderr pipe
            self.proc = None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def mosquitto(mqtt_url: str) -> Iterator[Mosquitto]:
    broker = Mosquitto(free_port())
    yield broker
    broker.stop()


async def test_broker_down_is_a_sink_error_then_it_recovers(mosquitto: Mosquitto) -> None:
    """The broker stops: sends fail with SinkError (which the bridge retries); it starts
    again: the sink reconnects and the same batch is delivered."""
    await mosquitto.start()
    uri = f"mqtt://127.0.0.1:{mosquitto.port}/down/ev?timeout=2"
    sink = await started(uri)
    try:
        await sink.send(events(1))
        mosquitto.stop()
        with pytest.raises(SinkError):
            await sink.send(events(2, 3))
        await until(lambda: not sink.connected)
        with pytest.raises(SinkError, match="unreachable"):
            await sink.send(events(2, 3))
        await mosquitto.start()
        async with subscribed("down/#", port=mosquitto.port) as sub:
            await until(lambda: sink.connected, timeout=10)
            await sink.send(events(2, 3))
            await until(lambda: len(sub.messages) >= 2)
        assert sub.payloads() == [e.payload for e in events(2, 3)]
    finally:
        await sink.aclose()


# paho-mqtt leaves the socket of a failed TLS handshake to the garbage collector.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
async def test_mqtts_verifies_the_broker_and_publishes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """mqtts:// against a TLS listener: with the CA given it publishes; without it (the system
    CAs do not know this broker) start() fails with SinkError."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    plain = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        # "user root": as root, Mosquitto would otherwise become a user who cannot read tmp_path.
        f"user root\nlistener {mosquitto.port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'cert.pem'}\n"
        f"keyfile {tmp_path / 'key.pem'}\nlistener {plain} 127.0.0.1\n"
    )
    await mosquitto.start(config)
    await until(lambda: _listening(plain), timeout=10)
    uri = f"mqtts://127.0.0.1:{mosquitto.port}/tls/ev"
    untrusted = from_uri(uri)
    with pytest.raises(SinkError, match="certificate verify failed"):
        await untrusted.start()
    await untrusted.aclose()
    gc.collect()  # that socket's warning, here rather than in another test
    async with subscribed("tls/#", port=plain) as sub:
        sink = await started(f"{uri}?ca_certs={tmp_path / 'ca.pem'}")
        try:
            await sink.send(events(1, 2))
        finally:
            await sink.aclose()
        await until(lambda: len(sub.messages) >= 2)
    assert sub.payloads("tls/ev") == [e.payload for e in events(1, 2)]


async def test_closed_port_fails_at_start_without_the_password() -> None:
    """Nothing listens: start() fails with SinkError; the password is in neither the name
    nor the error."""
    port = free_port()
    sink = from_uri(f"mqtt://user:hunter2@127.0.0.1:{port}/a/b")
    with pytest.raises(SinkError, match="unreachable") as caught:
        await sink.start()
    await sink.aclose()
    assert "hunter2" not in str(caught.value) and "hunter2" not in sink.name
    assert sink.name == f"mqtt://user:***@127.0.0.1:{port}/a/b"
    assert from_uri("mqtt://127.0.0.1/a?name=doors").name == "doors"


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("retain=true", "never retained"),
        ("qos=3", "qos must be one of 0, 1, 2"),
        ("availability=a/%23", "availability must be a topic"),
        ("keepalive=1", "keepalive must be >= 5"),
        ("inflight=0", "inflight must be >= 1"),
        ("colour=red", "unknown option 'colour'"),
        ("ca_certs=/x", "unknown option 'ca_certs'"),  # TLS options only with mqtts://
    ],
)
def test_bad_options_are_one_line(query: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        from_uri(f"mqtt://u:hunter2@127.0.0.1/t?{query}")
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message


def test_bad_topics_are_one_line() -> None:
    for uri, problem in [
        ("mqtt://127.0.0.1/a/+/b", "wildcard"),
        ("mqtt://127.0.0.1/a/{source.id", "not closed"),
        ("mqtt://127.0.0.1/a/{}", "empty placeholder"),
        ("mqtt:///a", "expected mqtt://host:port/TOPIC"),
    ]:
        with pytest.raises(ConfigurationError, match=problem):
            from_uri(uri)
    assert clean_topic_value("a/b+c#d\0e") == "a_b_c_d_e"
    mqtts = from_uri("mqtts://127.0.0.1/t?ca_certs=/nonexistent.pem")
    assert isinstance(mqtts, MqttSink) and mqtts._port == 8883


async def test_a_bridge_delivers_every_event_through_mqtt(
    mqtt_url: str, prefix: str, tmp_path: Path
) -> None:
    """The real bridge, the emulator's events, a route to MQTT: each event arrives once,
    in order, on its source's topic."""
    async with subscribed(f"{prefix}/#") as sub, Emulator(tokens=[TOKEN]) as server:
        uri = f"{mqtt_url}/{prefix}/ev/{{source.id}}?availability={prefix}/available"
        async with Bridge(TOKEN, [uri], **bridge_options(server, tmp_path)):  # type: ignore[arg-type]
            await server.wait_for_clients(1)
            sent = [await server.emit() for _ in range(300)]
            await until(lambda: len(sub.payloads()) >= 301, timeout=20)
    received = [m for m in sub.messages if "/ev/" in m.topic.value]
    assert [json.loads(bytes(m.payload))["id"] for m in received] == [e["id"] for e in sent]
    for message, entry in zip(received, sent, strict=True):
        assert message.topic.value == f"{prefix}/ev/{clean_topic_value(str(entry['source']['id']))}"
    assert sub.payloads(f"{prefix}/available")[-1] == b"offline"
