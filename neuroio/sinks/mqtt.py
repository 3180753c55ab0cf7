"""``mqtt://[user:pass@]host[:port]/TOPIC?qos=1``: events published to an MQTT broker.

Each event is published, as its JSON exactly (``{"id": ..., "data": {...}}``), to ``TOPIC``:
a template (``neuroio/doors/{source.id}``, see :mod:`neuroio._routing.template`) rendered per
event. A value put into a topic has ``/``, ``+``, ``#`` and NUL replaced by ``_``, so one
field is one topic level and never a wildcard. An empty ``TOPIC`` is ``neuroio/events``.

What counts as delivered depends on ``qos``:

* ``1`` (the default): the broker answered PUBACK; at least once (a batch that was not
  acknowledged in full is published again whole, so a subscriber can see a repeat);
* ``2``: the broker answered PUBCOMP; at least once for the same reason (MQTT's exactly-once
  holds within one connection, not across the bridge's retries);
* ``0``: the packet was written to the socket; **at most once**: an event in the socket
  buffer when the connection drops is lost and never retried.

A batch is published pipelined: every event of it goes out without waiting, up to
``inflight`` unacknowledged at once, and :meth:`MqttSink.send` returns once all are
acknowledged. Events are never retained (a retained event would be replayed to every new
subscriber: a door opened again); ``retain=true`` is refused.

Availability: on each connection the sink publishes ``online`` (retained, QoS 1) to the
``availability`` topic (default ``neuroio/available``; empty: none), and registers ``offline``
(retained, QoS 1) as its will, which the broker publishes if the connection dies without a
goodbye (the bridge killed, the network lost). A clean close publishes ``offline`` itself.
When the connection drops, the sink reconnects in the background (backoff up to 30 s), so the
topic says ``online`` again without waiting for the next event.

Sessions are clean, and the client id is ``neuroio-`` and random per connection unless
``client_id`` is given: the sink keeps no state in the broker (what was not acknowledged is
sent again), and a fixed default id would make two bridges on one broker disconnect each
other in turn. Give ``client_id`` when the broker's ACLs name clients. MQTT 3.1.1 is spoken;
note that with it a broker acknowledges a publish its ACLs deny (Mosquitto does), so a denied
topic looks delivered.

Query options: ``qos`` (0, 1, 2), ``retain`` (false only), ``client_id``, ``availability``,
``timeout`` (seconds to connect and to wait for the acknowledgements of a batch, default 10),
``keepalive`` (seconds, default 60), ``inflight`` (unacknowledged publishes at once, default
100), ``name``; with ``mqtts://`` (TLS, port 8883 by default) also ``ca_certs``, ``certfile``
and ``keyfile`` (paths; the system's CAs by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .._protocol.backoff import Backoff
from .._retry import Retrying
from .._routing.template import Template
from ..exceptions import ConfigurationError, MissingExtraError, SinkError
from ._render import Renderer
from ._uri import Bool, Choice, Duration, Int, Option, Text, parse_options, parse_url, redact_uri
from .base import Sink, SpooledEvent

try:
    import aiomqtt
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("mqtt", "the mqtt:// sink") from exc

__all__ = ["MqttSink", "clean_topic_value"]

log = logging.getLogger("neuroio.sinks")

DEFAULT_TOPIC = "neuroio/events"
DEFAULT_AVAILABILITY = "neuroio/available"
ONLINE = b"online"
OFFLINE = b"offline"
# Small publishes go out at once rather than waiting for the broker's TCP acknowledgement of
# the previous ones (Nagle's algorithm), which delays a batch's last publishes.
_SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
_CLEAN = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def clean_topic_value(value: str) -> str:
    """``value`` fit for one MQTT topic level: ``/``, ``+``, ``#`` and NUL become ``_``."""
    return value.translate(_CLEAN)


def _publish_topic(value: str) -> str | None:
    if "+" in value or "#" in value or "\0" in value:
        return "be a topic to publish to (no +, # or NUL)"
    return None


_QOS = Choice("qos", "1", choices=("0", "1", "2"))
_RETAIN = Bool("retain", False)
_CLIENT_ID = Text("client_id", "")
_AVAILABILITY = Text("availability", DEFAULT_AVAILABILITY, check=_publish_topic)
_TIMEOUT = Duration("timeout", 10.0)
_KEEPALIVE = Duration("keepalive", 60.0, minimum=5, whole=True)
_INFLIGHT = Int("inflight", 100, minimum=1)
_NAME = Text("name", "")
_OPTIONS: tuple[Option[Any], ...] = (
    _QOS,
    _RETAIN,
    _CLIENT_ID,
    _AVAILABILITY,
    _TIMEOUT,
    _KEEPALIVE,
    _INFLIGHT,
    _NAME,
)
_CA_CERTS = Text("ca_certs", "")
_CERTFILE = Text("certfile", "")
_KEYFILE = Text("keyfile", "")
_TLS: tuple[Option[Any], ...] = (_CA_CERTS, _CERTFILE, _KEYFILE)


def _quickack(client: aiomqtt.Client) -> Callable[[], None]:
    """A function acknowledging at once, at the TCP level, what the broker sent so far.

    A broker that leaves Nagle's algorithm on (Mosquitto's default) holds each small packet
    until its previous one is acknowledged, and this side's kernel delays that acknowledgement
    (up to 40 ms) while it expects to send data back: a batch's last PUBACKs would wait for it.
    Linux only; elsewhere a no-op.
    """
    option = getattr(socket, "TCP_QUICKACK", None)
    sock = _paho(client).socket()
    if option is None or not isinstance(sock, socket.socket):
        return _nothing

    def quickack() -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    return quickack


def _nothing() -> None:
    pass


def _paho(client: aiomqtt.Client) -> Any:
    """The paho-mqtt client inside ``client`` (aiomqtt exposes neither it nor its socket)."""
    return client._client  # noqa: SLF001


def _discard(client: aiomqtt.Client) -> None:
    """Close what a failed connection attempt left open: aiomqtt keeps the socket of a
    connection whose CONNACK never came, and its keepalive would keep it alive."""
    with contextlib.suppress(Exception):
        _paho(client).disconnect()


class _Progress:
    __slots__ = ("total", "acked")

    def __init__(self, total: int) -> None:
        self.total = total
        self.acked = 0


# CONNACK codes refusing the client's credentials: MQTT 3.1.1 (4, 5) and 5 (134, 135).
_REFUSED_LOGIN = frozenset({4, 5, 134, 135})


def _refused_login(error: BaseException | None) -> bool:
    rc = getattr(error, "rc", None)
    return isinstance(error, aiomqtt.MqttCodeError) and getattr(rc, "value", rc) in _REFUSED_LOGIN


class MqttSink(Sink):
    """Publishes events to an MQTT broker, acknowledged at QoS 1 or 2.

    Args:
        uri: ``mqtt://[user:password@]host[:port]/TOPIC?qos=1&availability=...``.

    Attributes:
        published: events acknowledged by the broker (written, with QoS 0).

    Raises:
        ConfigurationError: the URI, the topic template or an option is invalid.
    """

    max_batch = 1000

    def __init__(self, uri: str) -> None:
        url = parse_url(uri, schemes=("mqtt", "mqtts"), expected="mqtt://host:port/TOPIC")
        tls = url.scheme == "mqtts"
        options = parse_options(
            url.raw_query_string, _OPTIONS + (_TLS if tls else ()), uri=uri, sink="MQTT"
        )
        if options[_RETAIN]:
            raise ConfigurationError(
                f"sink {redact_uri(uri)}: retain=true is refused: events are never retained "
                "(a retained event is replayed to every new subscriber)"
            )
        topic = url.path[1:] or DEFAULT_TOPIC
        if _publish_topic(topic) is not None:
            raise ConfigurationError(
                f"sink {redact_uri(uri)}: the topic {topic!r} has a wildcard (+ or #) or a NUL"
            )
        self.topic = Template(topic, what=f"sink {redact_uri(uri)}: topic")
        self._renderer = Renderer(self.topic, clean_topic_value)
        self.qos = int(options[_QOS])
        self.availability = options[_AVAILABILITY]
        self.timeout = options[_TIMEOUT]
        self.keepalive = int(options[_KEEPALIVE])
        self.inflight = options[_INFLIGHT]
        self.client_id = options[_CLIENT_ID]
        self._host = url.host or ""
        self._port = url.explicit_port or (8883 if tls else 1883)
        self._username = url.user
        self._password = url.password
        self._tls = (options[_CA_CERTS], options[_CERTFILE], options[_KEYFILE]) if tls else None
        # The address as spelled: the name keys the sink's cursor in the spool.
        netloc = urlsplit(uri).netloc
        self.name = options[_NAME] or redact_uri(f"{url.scheme}://{netloc}/{topic}")
        self.published = 0
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Future[str] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()

    def __repr__(self) -> str:
        return f"<MqttSink {self.name}>"

    @property
    def connected(self) -> bool:
        """Whether the sink holds a connection to the broker now."""
        return self._client is not None

    async def start(self) -> None:
        """Connect and publish ``online``; an unreachable broker is a :class:`SinkError`,
        credentials it refuses a :class:`~neuroio.exceptions.ConfigurationError`. May be
        called again after :meth:`aclose` (the bridge retries a sink unreachable at
        start-up)."""
        self._closing.clear()
        try:
            await self._connect()
        except SinkError as exc:
            if _refused_login(exc.__cause__):
                raise ConfigurationError(
                    f"sink {self.name}: the MQTT broker refused the login: {exc.__cause__}"
                ) from None
            raise

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Publish the batch pipelined and return once the broker acknowledged every event."""
        client = self._client or await self._connect()
        lost = self._lost
        assert lost is not None
        progress = _Progress(len(events))
        batch = asyncio.ensure_future(self._publish_all(client, events, progress))
        done, _ = await asyncio.wait(
            (batch, lost), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if batch not in done:
            batch.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError, ValueError):
                await batch
            why = lost.result() if lost.done() else f"not within {self.timeout:g} s"
            raise SinkError(
                f"sink {self.name}: {progress.total - progress.acked} of {progress.total} "
                f"acknowledgements missing: {why}"
            )
        try:
            batch.result()
        except (aiomqtt.MqttError, ValueError) as exc:
            raise SinkError(f"sink {self.name}: publish failed: {exc}") from exc
        self.published += progress.acked

    async def _publish_all(
        self, client: aiomqtt.Client, events: Sequence[SpooledEvent], progress: _Progress
    ) -> None:
        """Publish with at most ``inflight`` awaiting their acknowledgement: a sliding window.

        The window is kept here rather than left to the MQTT client's own queue: the client's
        bookkeeping costs grow with the number of publishes pending, so a whole batch handed to
        it at once is slower than one window at a time.
        """
        qos, render = self.qos, self._renderer.render
        static = self.topic.render({}) if self.topic.is_static else None
        window = asyncio.Semaphore(self.inflight)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        quickack = _quickack(client)

        async def one(name: str, payload: bytes) -> None:
            try:
                await client.publish(name, payload, qos, timeout=math.inf)
                progress.acked += 1
                quickack()
            finally:
                window.release()

        try:
            for event in events:
                await window.acquire()
                name = static or render(event.payload)
                tasks.append(loop.create_task(one(name, event.payload)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def aclose(self) -> None:
        """Publish ``offline`` (retained) and disconnect cleanly."""
        self._closing.set()
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        async with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        try:
            if self.availability:
                await client.publish(
                    self.availability, OFFLINE, qos=1, retain=True, timeout=self.timeout
                )
            await asyncio.wait_for(client.__aexit__(None, None, None), self.timeout)
        except (aiomqtt.MqttError, asyncio.TimeoutError, OSError) as exc:
            log.warning("sink %s: no clean goodbye to the MQTT broker: %s", self.name, exc)

    # ------------------------------------------------------------------------ connection

    def _new_client(self) -> aiomqtt.Client:
        will = None
        if self.availability:
            will = aiomqtt.Will(self.availability, OFFLINE, qos=1, retain=True)
        tls_context = None
        if self._tls is not None:
            ca_certs, certfile, keyfile = self._tls
            try:
                tls_context = ssl.create_default_context(cafile=ca_certs or None)
                if certfile:
                    tls_context.load_cert_chain(certfile, keyfile or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"sink {self.name}: TLS: {exc}") from None
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self.client_id or f"neuroio-{secrets.token_hex(6)}",
            clean_session=True,
            will=will,
            timeout=self.timeout,
            keepalive=self.keepalive,
            max_inflight_messages=self.inflight,
            tls_context=tls_context,
            socket_options=_SOCKET_OPTIONS,
        )
        # aiomqtt warns once per publish beyond ten pending; a batch is many by design.
        client.pending_calls_threshold = 1 << 30
        return client

    async def _connect(self) -> aiomqtt.Client:
        """The connected client: connect now unless another caller just did."""
        async with self._lock:
            if self._client is not None:
                return self._client
            if self._closing.is_set():
                raise SinkError(f"sink {self.name}: closed")
            client = self._new_client()
            try:
                # Bounded by the client itself (TCP connect, then CONNACK within `timeout`):
                # cancelling it would leave its connecting thread to open a connection later.
                await client.__aenter__()
            except (aiomqtt.MqttError, OSError) as exc:
                _discard(client)
                raise SinkError(
                    f"sink {self.name}: the MQTT broker is unreachable: {exc or type(exc).__name__}"
                ) from exc
            try:
                if self.availability:
                    await client.publish(
                        self.availability, ONLINE, qos=1, retain=True, timeout=self.timeout
                    )
            except aiomqtt.MqttError as exc:
                with contextlib.suppress(aiomqtt.MqttError, OSError):
                    await client.__aexit__(None, None, None)
                raise SinkError(f"sink {self.name}: publishing online failed: {exc}") from exc
            self._client = client
            self._lost = asyncio.get_running_loop().create_future()
            watcher = asyncio.create_task(self._watch(client, self._lost))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
            return client

    async def _watch(self, client: aiomqtt.Client, lost: asyncio.Future[str]) -> None:
        """Notice the loss of ``client``'s connection at once (failing the batch in flight),
        then reconnect in the background, so the availability topic says ``online`` again
        without waiting for an event. Each connection has its own watcher."""
        # Nothing is subscribed: the iterator only ends, raising, on a disconnection.
        with contextlib.suppress(aiomqtt.MqttError):
            async for _ in client.messages:
                pass
        if self._closing.is_set():
            return
        log.warning("sink %s: lost the connection to the MQTT broker", self.name)
        async with self._lock:
            if self._client is client:
                self._client = None
        if not lost.done():
            lost.set_result("the connection to the MQTT broker was lost")
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)
        retry = Retrying(
            Backoff(0.5, 30.0), closing=self._closing, logger=log, what=f"sink {self.name}"
        )
        while self._client is None:
            try:
                await self._connect()
            except SinkError as exc:
                if not await retry.wait(reason=str(exc)):
                    return
            else:
                log.info("sink %s: reconnected to the MQTT broker", self.name)
