"""Destinations for the bridge's events, chosen by URI.

=============================================  ==============================================
URI                                            sink
=============================================  ==============================================
``file:PATH``, ``file:-``                      :class:`FileSink` (JSON lines; ``-`` is stdout)
``http://...``, ``https://...``                :class:`~neuroio.sinks.webhook.WebhookSink`
``redis://host:port/db?stream=...&maxlen=N``   :class:`~neuroio.sinks.redis.RedisSink`
``nats://host:port?subject=...&stream=...``    :class:`~neuroio.sinks.nats.NatsSink`
``mqtt://host/TOPIC?qos=1``, ``mqtts://``       :class:`~neuroio.sinks.mqtt.MqttSink`
``amqp://user:pass@host/vhost?exchange=...``   :class:`~neuroio.sinks.amqp.AmqpSink`
``postgresql://user@host:port/db?table=...``   :class:`~neuroio.sinks.postgres.PostgresSink`
``sqlite:PATH?table=...``                      :class:`~neuroio.sinks.sqlite.SqliteSink`
``images:DIR?fields=face_image,full_image``    :class:`~neuroio.sinks.images.ImagesSink`
``memory:`` or ``memory:NAME``                 :class:`MemorySink`
=============================================  ==============================================

Every sink reads its options from the URI's query with one parser: an unknown option, an
option given twice, or a bad value is a :class:`~neuroio.exceptions.ConfigurationError` of one
line naming the option (and, for an unknown one, the sink and its known options). A webhook's
query is the endpoint's own, so options it does not know are kept in the URL instead.
``?name=N`` names any sink.

Implement :class:`Sink` for any other destination and pass the object to the bridge.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .base import Sink, SpooledEvent, redact_uri
from .file import FileSink
from .memory import MemorySink

__all__ = ["FileSink", "MemorySink", "Sink", "SpooledEvent", "from_uri", "redact_uri"]

_SCHEMES = (
    "file:",
    "memory:",
    "http://",
    "https://",
    "redis://",
    "rediss://",
    "nats://",
    "tls://",
    "mqtt://",
    "mqtts://",
    "amqp://",
    "amqps://",
    "postgresql://",
    "postgres://",
    "sqlite:",
    "images:",
)


def from_uri(uri: str, *, webhook_secret: str | None = None, **options: Any) -> Sink:
    """Build the sink a URI names.

    Args:
        uri: one of the forms listed in this module's documentation.
        webhook_secret: the HMAC key for ``http(s)://`` sinks (ignored by others).
        options: keyword arguments passed on to the sink's constructor.

    Raises:
        ConfigurationError: the URI is malformed or its scheme unknown (the message shows
            the URI with any password replaced by ``***``).
        MissingExtraError: the sink's optional dependencies are not installed.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigurationError(f"sink URI must be a non-empty string, got {uri!r}")
    uri = uri.strip()
    lowered = uri.lower()
    if lowered.startswith("file:"):
        return FileSink.from_uri(uri, **options)
    if lowered.startswith("memory:"):
        return MemorySink.from_uri(uri, **options)
    if lowered.startswith(("http://", "https://")):
        from .webhook import WebhookSink

        return WebhookSink(uri, secret=webhook_secret, **options)
    if lowered.startswith(("redis://", "rediss://")):
        from .redis import RedisSink

        return RedisSink(uri, **options)
    if lowered.startswith(("nats://", "tls://")):
        from .nats import NatsSink

        return NatsSink(uri, **options)
    if lowered.startswith(("mqtt://", "mqtts://")):
        from .mqtt import MqttSink

        return MqttSink(uri, **options)
    if lowered.startswith(("amqp://", "amqps://")):
        from .amqp import AmqpSink

        return AmqpSink(uri, **options)
    if lowered.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresSink

        return PostgresSink(uri, **options)
    if lowered.startswith("sqlite:"):
        from .sqlite import SqliteSink

        return SqliteSink.from_uri(uri, **options)
    if lowered.startswith("images:"):
        from .images import ImagesSink

        return ImagesSink.from_uri(uri, **options)
    raise ConfigurationError(
        f"sink {redact_uri(uri)}: unknown scheme; expected one of {', '.join(_SCHEMES)}"
    )
