"""``nats://host:port?subject=neuroio.events&stream=NEUROIO``: events published to JetStream.

Each event is published to ``subject`` with the header ``Nats-Msg-Id`` set to the event id, and
the sink waits for JetStream's acknowledgement. JetStream drops a message whose id it has seen
within the stream's duplicate window, so repeats from retries or from a second bridge are
stored once. The stream is created if missing (file storage, the subject, a duplicate window
of ``dedupe_window`` seconds, default one day); an existing stream is used as it is.

JetStream records an id only when it stores the message, so a publish it refuses (a full
stream, a wrong subject) leaves no mark, and the retry stores it.

The subject may be a template (:mod:`neuroio._routing.template`):
``subject=neuroio.events.{source.id}`` publishes each event on its camera's subject. A rendered
value holds no space, ``.``, ``*`` or ``>`` (each becomes ``_``), so it is always one token;
the stream is created to capture every subject the template can render: each token with a
placeholder becomes ``*`` (``neuroio.events.*``), and an existing stream must take that
filter. A subject without placeholders is published without decoding events.

Query options: ``subject`` (a template), ``stream``, ``dedupe_window`` (seconds, or ``1d``,
``12h``...), ``timeout`` (seconds to wait for the acknowledgements of a batch, default 10),
``name``.
Credentials go in the URI (``nats://user:password@host:4222`` or ``nats://token@host:4222``);
``tls://`` uses TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from .._routing.template import Template
from ..exceptions import ConfigurationError, MissingExtraError, SinkError
from ._render import Renderer
from ._uri import Duration, Text, parse_options, parse_url, redact_uri
from .base import Sink, SpooledEvent

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NATS
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("nats", "the nats:// sink") from exc

__all__ = ["NatsSink", "clean_subject_value", "subject_filter", "subject_matches"]

log = logging.getLogger("neuroio.sinks")

_decoder = msgspec.json.Decoder()

# A NATS server greets each client with INFO at once, while Redis, HTTP and most others wait
# for the client: after this much silence a line NATS itself would take is sent, so that
# another server answers (or closes) instead of leaving the connection silent to the timeout.
_GREETING_WAIT = 0.5


class _NotNats(Exception):
    """Something answered at the address, but not a NATS server."""


async def _check_speaks_nats(host: str, port: int, timeout: float) -> None:
    """Connect, and check the first thing the server sends is NATS's ``INFO`` greeting.

    Raises:
        OSError, asyncio.TimeoutError: nothing answers at ``host:port`` within ``timeout``.
        _NotNats: another server answered (its first bytes are quoted), closed the
            connection, or stayed silent for the whole ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    where = f"{host}:{port}"
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        try:
            first = await asyncio.wait_for(reader.read(256), min(_GREETING_WAIT, timeout))
        except asyncio.TimeoutError:
            writer.write(b"CONNECT {}\r\n")
            try:
                first = await asyncio.wait_for(reader.read(256), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise _NotNats(
                    f"{where} does not speak NATS: no INFO greeting within {timeout:g} s"
                ) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if first.startswith(b"INFO"):
        return
    if not first:
        raise _NotNats(f"{where} does not speak NATS: it closed the connection without a greeting")
    line = first.splitlines()[0].decode("utf-8", "replace")
    shown = line if len(line) <= 40 else line[:40] + "…"
    raise _NotNats(f"{where} does not speak NATS (it sent {shown!r})")


DEFAULT_SUBJECT = "neuroio.events"
DEFAULT_STREAM = "NEUROIO"
DEFAULT_DEDUPE_WINDOW = 86_400


def _literal_subject(value: str) -> str | None:
    if not value or " " in value or "*" in value or ">" in value:
        return "be a literal subject (no spaces or wildcards)"
    return None


def _stream_name(value: str) -> str | None:
    if not value or any(c in value for c in " .*>"):
        return "be a stream name (no spaces, dots or wildcards)"
    return None


_SUBJECT = Text("subject", DEFAULT_SUBJECT, check=_literal_subject)
_STREAM = Text("stream", DEFAULT_STREAM, check=_stream_name)
_DEDUPE_WINDOW = Duration("dedupe_window", float(DEFAULT_DEDUPE_WINDOW), minimum=1, whole=True)
_TIMEOUT = Duration("timeout", 10.0)
_NAME = Text("name", "")
_OPTIONS = (_SUBJECT, _STREAM, _DEDUPE_WINDOW, _TIMEOUT, _NAME)


_UNSAFE = re.compile(r"[\s.*>]")
_MARK = "\x00"


def clean_subject_value(value: str) -> str:
    """One rendered value as one subject token: whitespace, ``.``, ``*`` and ``>`` become
    ``_``."""
    return _UNSAFE.sub("_", value)


def subject_filter(template: Template) -> str:
    """The subject filter capturing every subject ``template`` renders: each token holding
    a placeholder becomes ``*`` (a value is always one token, see
    :func:`clean_subject_value`)."""
    rendered = template.render({}, lambda _: _MARK)
    return ".".join("*" if _MARK in token else token for token in rendered.split("."))


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` and ``>`` wildcards) matches ``subject``."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def _refused_login(error: BaseException) -> bool:
    """Whether the server refused the connection's credentials (nats-py names the error
    only when the server's text matches its own spelling)."""
    return isinstance(error, nats.errors.AuthorizationError) or (
        "authorization violation" in str(error).lower()
    )


@dataclasses.dataclass(eq=False)
class _Batch:
    expected: int
    done: asyncio.Future[None]
    acked: int = 0
    duplicates: int = 0
    error: str | None = None


class NatsSink(Sink):
    """Publishes events to a JetStream stream, acknowledged, each event id once.

    Args:
        uri: ``nats://[credentials@]host:port?subject=...&stream=...``.

    Attributes:
        duplicates: publishes JetStream acknowledged as repeats of a stored message.

    Raises:
        ConfigurationError: the URI or an option is invalid.
    """

    max_batch = 2000

    def __init__(self, uri: str) -> None:
        url = parse_url(uri, schemes=("nats", "tls"), expected="nats://host:port")
        options = parse_options(url.raw_query_string, _OPTIONS, uri=uri, sink="NATS")
        self.subject = options[_SUBJECT]
        self.template = Template(self.subject, what=f"sink {redact_uri(uri)}: subject")
        """The subject as a template (static when it has no placeholder)."""
        self._renderer = Renderer(self.template, clean_subject_value)
        self.subject_filter = subject_filter(self.template)
        """What the stream must take: the subject, ``*`` for each templated token."""
        self.stream = options[_STREAM]
        self.dedupe_window = int(options[_DEDUPE_WINDOW])
        self.timeout = options[_TIMEOUT]
        raw = urlsplit(uri)  # the address as spelled: the name keys the cursor in the spool
        self._server = f"{url.scheme}://{raw.netloc}"
        self._host = url.host or ""
        self._port = url.explicit_port or 4222
        host = f"{raw.hostname}:{self._port}"
        self.name = options[_NAME] or (
            f"{url.scheme}://{host}?subject={self.subject}&stream={self.stream}"
        )
        self.duplicates = 0
        self._nc: Any = None
        self._js: Any = None
        self._starting = False
        self._last_error: Exception | None = None
        self._inbox: str | None = None
        self._batch_no = 0
        self._batches: dict[str, _Batch] = {}

    def __repr__(self) -> str:
        return f"<NatsSink {self.name}>"

    async def start(self) -> None:
        """Connect, and create the stream if it does not exist.

        Raises:
            SinkError: NATS is unreachable, or JetStream is not ready.
            ConfigurationError: NATS rejected the credentials, or the stream does not take
                the subject.
        """
        # nats-py retries a first connection forever when reconnecting is allowed (and we
        # want reconnects later), so the first connection is bounded here.
        try:
            await _check_speaks_nats(self._host, self._port, self.timeout)
        except _NotNats as exc:
            raise ConfigurationError(f"sink {self.name}: {exc}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise SinkError(
                f"sink {self.name}: NATS is unreachable: {exc or type(exc).__name__}"
            ) from exc
        nc = NATS()
        self._starting = True
        self._last_error = None
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=[self._server],
                    connect_timeout=max(1, math.ceil(self.timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.timeout,
            )
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            reason = self._last_error or exc
            if _refused_login(reason):
                # The server answered and refused us: retrying will not help.
                raise ConfigurationError(
                    f"sink {self.name}: NATS rejected the credentials: {reason}"
                ) from None
            raise SinkError(
                f"sink {self.name}: NATS is unreachable: {reason or type(reason).__name__}"
            ) from exc
        finally:
            self._starting = False
        self._nc = nc
        self._js = self._nc.jetstream(timeout=self.timeout)
        self._inbox = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
        try:
            await self._ensure_stream()
        except nats.js.errors.ServiceUnavailableError as exc:
            raise SinkError(f"sink {self.name}: JetStream is not enabled on the server") from exc
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise SinkError(f"sink {self.name}: cannot set up the stream: {exc}") from exc

    async def _ensure_stream(self) -> None:
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(
                name=self.stream,
                subjects=[self.subject_filter],
                duplicate_window=float(self.dedupe_window),
            )
            log.info("created JetStream stream %s for subject %s", self.stream, self.subject_filter)
            return
        subjects = info.config.subjects or []
        if not any(subject_matches(s, self.subject_filter) for s in subjects):
            raise ConfigurationError(
                f"sink {self.name}: stream {self.stream} does not take subject "
                f"{self.subject_filter} (its subjects: {subjects})"
            )
        window = info.config.duplicate_window or 0
        if window < self.dedupe_window:
            log.warning(
                "stream %s drops repeated events only within %.0f s (dedupe_window is %d s)",
                self.stream,
                window,
                self.dedupe_window,
            )

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Publish the batch without waiting in between, then wait for every acknowledgement.

        All messages of a batch carry one reply subject, so acknowledgements are counted per
        batch instead of tracked per message (the client's per-message bookkeeping costs more
        than the publish itself).
        """
        nc = self._nc
        if nc is None or self._inbox is None:
            raise SinkError(f"sink {self.name}: not started")
        self._batch_no += 1
        reply = f"{self._inbox}.{self._batch_no}"
        batch = _Batch(len(events), asyncio.get_running_loop().create_future())
        self._batches[reply] = batch
        try:
            subject, stream = self.subject, self.stream
            render = None if self.template.is_static else self._renderer.render
            for event in events:
                if render is not None:
                    subject = render(event.payload)
                await nc.publish(
                    subject,
                    event.payload,
                    reply=reply,
                    headers={"Nats-Msg-Id": str(event.id), "Nats-Expected-Stream": stream},
                )
            await asyncio.wait_for(asyncio.shield(batch.done), self.timeout)
        except asyncio.TimeoutError as exc:
            raise SinkError(
                f"sink {self.name}: {batch.expected - batch.acked} of {batch.expected} "
                f"acknowledgements missing after {self.timeout} s"
            ) from exc
        except nats.errors.Error as exc:
            raise SinkError(f"sink {self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._batches.pop(reply, None)
            if not batch.done.done():
                batch.done.cancel()
        if batch.error is not None:
            raise SinkError(f"sink {self.name}: {batch.error}")
        self.duplicates += batch.duplicates

    async def _on_ack(self, msg: Any) -> None:
        batch = self._batches.get(msg.subject)
        if batch is None or batch.done.done():
            return  # a late answer to a batch given up on (it is being sent again)
        data: bytes = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            batch.error = f"JetStream refused: no stream answers on {self.subject}"
        elif b'"error"' in data:
            batch.error = "JetStream refused: " + data.decode(errors="replace")[:300]
        elif b'"duplicate"' in data and _decoder.decode(data).get("duplicate") is True:
            batch.duplicates += 1
        batch.acked += 1
        if batch.error is not None or batch.acked >= batch.expected:
            batch.done.set_result(None)

    async def aclose(self) -> None:
        """Flush and close the connection."""
        nc, self._nc = self._nc, None
        self._js = None
        if nc is not None:
            try:
                await nc.drain()
            except (nats.errors.Error, asyncio.TimeoutError, OSError):
                await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        if self._starting:
            # A refusal is the answer that matters: the server closing the socket after it
            # (a reset, read by a retry of the connection) must not hide it.
            if self._last_error is None or not _refused_login(self._last_error):
                self._last_error = exc
            return
        log.warning("sink %s: NATS error: %s", self.name, exc)

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not when closing
            log.warning("sink %s: disconnected from NATS, reconnecting", self.name)
        # Acknowledgements still awaited were addressed to the lost connection and will never
        # come: fail those batches now rather than after the whole timeout. They are sent
        # again, and JetStream drops what it already stored (Nats-Msg-Id).
        for batch in self._batches.values():
            if not batch.done.done():
                batch.error = "the connection to NATS was lost before every acknowledgement"
                batch.done.set_result(None)

    async def _on_reconnected(self) -> None:
        log.info("sink %s: reconnected to NATS", self.name)
