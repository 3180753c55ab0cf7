"""``amqp://user:pass@host[:port]/vhost?exchange=neuroio&routing_key=TEMPLATE``: events
published to an AMQP 0-9-1 exchange (RabbitMQ), with publisher confirms.

Each event is one persistent message (``delivery_mode`` 2) whose body is the event's JSON
exactly, with ``message_id`` the event id and ``content_type`` ``application/json``. An event
counts as delivered when the broker confirms it (``basic.ack``): for a persistent message
routed to durable queues, once those queues hold it. A batch is published pipelined (every
message sent without waiting) and :meth:`AmqpSink.send` returns once all are confirmed; a
``basic.nack``, a lost connection or a confirm missing after ``timeout`` fails the batch
(:class:`~neuroio.exceptions.SinkError`), and the bridge publishes it again: at least once,
so a consumer can see a repeat; ``message_id`` lets it drop one.

``routing_key`` is a template (``neuroio.{source.id}``, see :mod:`neuroio._routing.template`;
default ``neuroio.{result}``, so a topic exchange's bindings can pick ``neuroio.exact``); a
value put into it has ``.``, ``*`` and ``#`` replaced by ``_``, so one field is one word of
the key. A key longer than AMQP's 255 bytes is cut to 255 (on a character boundary).

The exchange (default ``neuroio``, ``exchange_type`` default ``topic``) is declared durable
when it does not exist. One that exists is checked: another type or durability is a
:class:`~neuroio.exceptions.ConfigurationError` at start-up (when the user may not declare it,
it is used unchecked). ``exchange=`` (empty) publishes to the default exchange, which routes
by queue name.

Messages are published ``mandatory``: one the exchange cannot route to any queue comes back
(``basic.return``). That is logged once per routing key (not per event) and counted in
:attr:`AmqpSink.returned`, and the event counts as delivered: where an exchange routes is the
broker's configuration, and publishing it again would route it nowhere again. Give the
exchange an alternate exchange to keep such messages.

Query options: ``exchange``, ``exchange_type`` (direct, fanout, topic, headers),
``routing_key``, ``timeout`` (seconds to connect and to wait for the confirms of a batch,
default 10), ``name``; with ``amqps://`` (TLS, port 5671 by default) also ``ca_certs``,
``certfile`` and ``keyfile`` (paths; the system's CAs by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .._routing.template import Template
from ..exceptions import ConfigurationError, MissingExtraError, SinkError
from ._render import Renderer
from ._uri import Choice, Duration, Option, Text, parse_options, parse_url, redact_uri
from .base import Sink, SpooledEvent

try:
    import aio_pika
    import aiormq
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("amqp", "the amqp:// sink") from exc

__all__ = ["AmqpSink", "clean_key_value"]

log = logging.getLogger("neuroio.sinks")

DEFAULT_EXCHANGE = "neuroio"
DEFAULT_ROUTING_KEY = "neuroio.{result}"
MAX_KEY_BYTES = 255
# Routing keys already reported as unroutable; bounded, as keys can be per person.
_REPORTED_KEYS = 1024
_CLEAN = str.maketrans({".": "_", "*": "_", "#": "_"})
# What a lost connection or a closed channel raises out of aio-pika / aiormq.
_BROKEN = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)


def clean_key_value(value: str) -> str:
    """``value`` fit for one word of a routing key: ``.``, ``*`` and ``#`` become ``_``."""
    return value.translate(_CLEAN)


def _fit_key(key: str) -> str:
    raw = key.encode()
    if len(raw) <= MAX_KEY_BYTES:
        return key
    return raw[:MAX_KEY_BYTES].decode(errors="ignore")


_EXCHANGE = Text("exchange", DEFAULT_EXCHANGE)
_EXCHANGE_TYPE = Choice("exchange_type", "topic", choices=("direct", "fanout", "topic", "headers"))
_ROUTING_KEY = Text("routing_key", DEFAULT_ROUTING_KEY)
_TIMEOUT = Duration("timeout", 10.0)
_NAME = Text("name", "")
_OPTIONS: tuple[Option[Any], ...] = (_EXCHANGE, _EXCHANGE_TYPE, _ROUTING_KEY, _TIMEOUT, _NAME)
_CA_CERTS = Text("ca_certs", "")
_CERTFILE = Text("certfile", "")
_KEYFILE = Text("keyfile", "")
_TLS: tuple[Option[Any], ...] = (_CA_CERTS, _CERTFILE, _KEYFILE)


class AmqpSink(Sink):
    """Publishes events to an AMQP exchange as persistent messages, each one confirmed.

    Args:
        uri: ``amqp://user:password@host[:port]/vhost?exchange=...&routing_key=...``.

    Attributes:
        published: messages the broker confirmed (returned ones included).
        returned: messages the broker returned as unroutable.

    Raises:
        ConfigurationError: the URI, the routing key template or an option is invalid.
    """

    max_batch = 1000

    def __init__(self, uri: str) -> None:
        url = parse_url(uri, schemes=("amqp", "amqps"), expected="amqp://user:pass@host/vhost")
        tls = url.scheme == "amqps"
        options = parse_options(
            url.raw_query_string, _OPTIONS + (_TLS if tls else ()), uri=uri, sink="AMQP"
        )
        key = options[_ROUTING_KEY]
        self.routing_key = Template(key, what=f"sink {redact_uri(uri)}: routing_key")
        self._renderer = Renderer(self.routing_key, clean_key_value)
        if self.routing_key.is_static and len(key.encode()) > MAX_KEY_BYTES:
            raise ConfigurationError(
                f"sink {redact_uri(uri)}: routing_key must be at most {MAX_KEY_BYTES} bytes"
            )
        self.exchange = options[_EXCHANGE]
        self.exchange_type = options[_EXCHANGE_TYPE]
        self.timeout = options[_TIMEOUT]
        self._ssl: tuple[str, str, str] | None = None
        if tls:
            self._ssl = (options[_CA_CERTS], options[_CERTFILE], options[_KEYFILE])
        port = url.explicit_port or (5671 if tls else 5672)
        # Only the address goes to the client: the query holds this sink's options.
        self._url = url.with_query(None).with_port(port)
        vhost = url.path[1:] or "/"
        netloc = urlsplit(uri).netloc  # as spelled: the name keys the cursor in the spool
        self.name = options[_NAME] or redact_uri(
            f"{url.scheme}://{netloc}/{url.raw_path[1:]}?exchange={self.exchange}"
        )
        self.vhost = vhost
        self.published = 0
        self.returned = 0
        self._reported: OrderedDict[str, None] = OrderedDict()
        self._connection: Any = None
        self._channel: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<AmqpSink {self.name}>"

    async def start(self) -> None:
        """Connect, open a confirming channel and make sure the exchange exists."""
        await self._connect()

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Publish the batch pipelined and return once the broker confirmed every message."""
        try:
            channel = await self._connect()
        except ConfigurationError as exc:
            # The exchange changed under a running bridge: retried, in case it is put back.
            raise SinkError(str(exc)) from exc
        exchange, render = self.exchange, self._renderer.render
        static = self.routing_key.render({}) if self.routing_key.is_static else None
        loop = asyncio.get_running_loop()
        publishes = [
            loop.create_task(
                channel.basic_publish(
                    event.payload,
                    exchange=exchange,
                    routing_key=static or _fit_key(render(event.payload)),
                    properties=Basic.Properties(
                        delivery_mode=2,
                        content_type="application/json",
                        message_id=str(event.id),
                    ),
                    mandatory=True,
                    wait=False,
                )
            )
            for event in events
        ]
        try:
            results = await self._confirmed(publishes)
        except asyncio.TimeoutError as exc:
            await self._drop()
            raise SinkError(f"sink {self.name}: confirms missing after {self.timeout:g} s") from exc
        except aiormq.exceptions.DeliveryError as exc:
            # A nack: the broker could not take the message (a full or failing queue).
            raise SinkError(f"sink {self.name}: the broker refused a message: {exc}") from exc
        except _BROKEN as exc:
            await self._drop()
            raise SinkError(f"sink {self.name}: {type(exc).__name__}: {exc}") from exc
        for result in results:
            if isinstance(result, DeliveredMessage):
                self._returned(result)
        self.published += len(results)

    async def _confirmed(self, publishes: list[asyncio.Task[Any]]) -> list[Any]:
        """The confirmations of ``publishes``; on the first failure, the others are given up
        (the batch is sent again whole) and the failure raised."""
        try:
            return await asyncio.wait_for(asyncio.gather(*publishes), self.timeout)
        except BaseException:
            for task in publishes:
                task.cancel()
            await asyncio.gather(*publishes, return_exceptions=True)
            raise

    async def aclose(self) -> None:
        """Close the channel and the connection."""
        await self._drop()

    def _returned(self, message: DeliveredMessage) -> None:
        self.returned += 1
        key = message.routing_key or ""
        if key in self._reported:
            return
        self._reported[key] = None
        if len(self._reported) > _REPORTED_KEYS:
            self._reported.popitem(last=False)
        log.warning(
            "sink %s: exchange %r routes routing key %r to no queue; such events are dropped "
            "by the broker (reported once per routing key)",
            self.name,
            self.exchange,
            key,
        )

    # ------------------------------------------------------------------------ connection

    async def _connect(self) -> Any:
        """The aiormq channel to publish on: connect and set up now if there is none."""
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return await self._channel.get_underlay_channel()
            await self._drop_unlocked()
            try:
                self._connection = await asyncio.wait_for(
                    aio_pika.connect(self._url, ssl_context=self._ssl_context()), self.timeout
                )
            except aiormq.exceptions.ProbableAuthenticationError as exc:
                # Retrying will not help; a running sink's send() retries it all the same.
                raise ConfigurationError(
                    f"sink {self.name}: the broker refused the login: {exc}"
                ) from exc
            except (*_BROKEN, asyncio.TimeoutError) as exc:
                raise SinkError(
                    f"sink {self.name}: the AMQP broker is unreachable: {exc or type(exc).__name__}"
                ) from exc
            try:
                await self._ensure_exchange()
                self._channel = await self._connection.channel(publisher_confirms=True)
                return await self._channel.get_underlay_channel()
            except ConfigurationError:
                await self._drop_unlocked()
                raise
            except (*_BROKEN, asyncio.TimeoutError) as exc:
                await self._drop_unlocked()
                raise SinkError(f"sink {self.name}: cannot set up the exchange: {exc}") from exc

    async def _ensure_exchange(self) -> None:
        """Declare the exchange when it does not exist; check the one that does.

        A failed declaration closes its channel, so each step has a channel of its own."""
        name = self.exchange
        if not name:
            return  # the default exchange always exists
        connection = self._connection
        try:
            async with await connection.channel() as channel:
                await channel.declare_exchange(name, passive=True, timeout=self.timeout)
        except aiormq.exceptions.ChannelNotFoundEntity:
            async with await connection.channel() as channel:
                await channel.declare_exchange(
                    name, self.exchange_type, durable=True, timeout=self.timeout
                )
            log.info(
                "sink %s: declared the durable %s exchange %r", self.name, self.exchange_type, name
            )
            return
        # It exists: declaring it as this sink would declare it passes only if it is the same.
        try:
            async with await connection.channel() as channel:
                await channel.declare_exchange(
                    name, self.exchange_type, durable=True, timeout=self.timeout
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"sink {self.name}: exchange {name!r} exists with another type or durability "
                f"than a durable {self.exchange_type} exchange: {exc.args[0] if exc.args else exc}"
            ) from None
        except aiormq.exceptions.ChannelAccessRefused:
            log.info("sink %s: may not declare exchange %r; using it unchecked", self.name, name)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._ssl is None:
            return None
        ca_certs, certfile, keyfile = self._ssl
        try:
            context = ssl.create_default_context(cafile=ca_certs or None)
            if certfile:
                context.load_cert_chain(certfile, keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"sink {self.name}: TLS: {exc}") from None
        return context

    async def _drop(self) -> None:
        async with self._lock:
            await self._drop_unlocked()

    async def _drop_unlocked(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*_BROKEN, asyncio.TimeoutError):
                await asyncio.wait_for(connection.close(), self.timeout)
