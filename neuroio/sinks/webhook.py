"""``http(s)://...``: events POSTed as JSON to a webhook.

Each request carries:

``Content-Type: application/json``
    the body is one event (``{"id": ..., "data": {...}}``) or, with ``?batch=N`` (N > 1), a JSON
    array of up to N events.
``Idempotency-Key``
    the event id; for a batch, ``batch-`` and the hex SHA-256 of the comma-joined ids. A retried
    request carries the same key, so the receiver can drop repeats.
``X-NeuroIO-Timestamp``, ``X-NeuroIO-Signature`` (with a webhook secret)
    the Unix time in whole seconds, and ``sha256=`` followed by the hex HMAC-SHA256, keyed with
    the secret, of ``"<timestamp>." + body``. See :func:`verify_signature`.

Answers 2xx deliver the request. A status in the ``?dead_letter=`` set (by default every 4xx
but 401, 403, 404, 405, 408, 410 and 429) refuses the request for good and its events go to
the dead-letter table. Every other answer is retried with backoff (at least ``Retry-After``
when the server sends it): connection errors, timeouts, 5xx, 408 and 429, and the answers
that mean the sink is misconfigured rather than the event wrong (401, 403, 404, 405, 410, a
redirect), so that a wrong URL or credential costs a failing sink, not every event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from .._http import parse_retry_after
from ..exceptions import PermanentSinkError, SinkError
from ._uri import Duration, Int, Option, Text, parse_options, parse_url, redact_uri
from .base import Sink, SpooledEvent, check_reachable

__all__ = [
    "DEFAULT_DEAD_LETTER",
    "MISCONFIGURED",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSink",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-NeuroIO-Signature"
TIMESTAMP_HEADER = "X-NeuroIO-Timestamp"
# A server asking for a longer pause than this is still retried after this long.
_MAX_RETRY_AFTER = 3600.0

# Answers that say the bridge is misconfigured (wrong URL, missing or refused credentials),
# not that the event is wrong: every event would meet the same answer, so they are retried
# (the sink fails, /healthz says so) until someone fixes the configuration.
MISCONFIGURED = {
    401: "the receiver wants credentials: check the token in the URL or the headers",
    403: "the receiver refuses these credentials or this client: check the token, the "
    "webhook secret, an address allow-list",
    404: "the URL is probably wrong: check its path",
    405: "the URL does not accept POST: it is probably not the webhook's path",
    410: "the endpoint was removed: point the sink at its new URL",
}
"""The statuses retried because they mean a misconfigured sink, and what each likely means."""

DEFAULT_DEAD_LETTER = frozenset(range(400, 500)) - frozenset(MISCONFIGURED) - {408, 429}
"""The statuses that dead-letter by default: every 4xx but the misconfigured ones, 408 and 429."""


@dataclass(frozen=True)
class _Statuses(Option[frozenset[int]]):
    """A comma-separated set of HTTP statuses (400-599); empty or ``none``: no status."""

    def convert(self, raw: str) -> frozenset[int]:
        """The statuses ``raw`` lists."""
        text = raw.strip()
        if text.lower() in ("", "none"):
            return frozenset()
        statuses: set[int] = set()
        for part in text.split(","):
            try:
                status = int(part.strip())
            except ValueError:
                raise ValueError(
                    "be comma-separated HTTP statuses from 400 to 599 (e.g. 400,422) or none"
                ) from None
            if not 400 <= status <= 599:
                raise ValueError(f"list HTTP statuses from 400 to 599 only ({status} is not)")
            statuses.add(status)
        return frozenset(statuses)


_BATCH = Int("batch", 1, minimum=1)
_TIMEOUT = Duration("timeout", 10.0)
_NAME = Text("name", "")
_DEAD_LETTER = _Statuses("dead_letter", DEFAULT_DEAD_LETTER)
_OPTIONS = (_BATCH, _TIMEOUT, _NAME, _DEAD_LETTER)


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance: float | None = 300.0,
    now: float | None = None,
) -> bool:
    """Check a request a :class:`WebhookSink` signed (for receivers).

    Args:
        secret: the shared webhook secret.
        body: the raw request body.
        timestamp: the ``X-NeuroIO-Timestamp`` header.
        signature: the ``X-NeuroIO-Signature`` header.
        tolerance: reject timestamps further than this from ``now`` (seconds; ``None``
            accepts any age). Retries are signed afresh, so a small tolerance is safe.
        now: the current Unix time (default ``time.time()``).
    """
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - stamp) > tolerance:
            return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


class WebhookSink(Sink):
    """POSTs events to an HTTP(S) endpoint.

    Args:
        uri: the endpoint. The query options ``batch`` (events per request, default 1),
            ``timeout`` (seconds per request, default 10; a duration such as ``500ms``),
            ``name`` and ``dead_letter`` (the statuses that dead-letter, comma-separated;
            default :data:`DEFAULT_DEAD_LETTER`) are removed from it; the rest of the query
            is kept.
        secret: the HMAC key for the signature headers; ``None`` sends no signature.
        headers: extra headers sent with every request.

    Raises:
        ConfigurationError: the URI is not a valid http(s) URL or an option is invalid.
    """

    def __init__(
        self,
        uri: str,
        *,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        url = parse_url(uri, schemes=("http", "https"), expected="http(s)://host/path")
        parts = urlsplit(uri)  # rebuilt as spelled: the name keys the sink's cursor
        # The endpoint's own query is kept: options this sink does not know are not errors.
        options = parse_options(
            url.raw_query_string, _OPTIONS, uri=uri, sink="webhook", keep_unknown=True
        )
        self.batch = options[_BATCH]
        self.timeout = options[_TIMEOUT]
        self.dead_letter = options[_DEAD_LETTER]
        name = options[_NAME]
        self.url = urlunsplit(
            (
                parts.scheme,
                parts.netloc,
                parts.path or "/",
                urlencode(list(options.rest)),
                parts.fragment,
            )
        )
        self.host = url.host or ""
        port = url.explicit_port
        self.port = port if port is not None else (443 if parts.scheme == "https" else 80)
        self.name = name or redact_uri(self.url)
        self.max_batch = self.batch
        self._secret = secret
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # The secret and the URL's credentials stay out of reprs.
        return f"<WebhookSink {self.name} batch={self.batch} signed={self._secret is not None}>"

    async def start(self) -> None:
        """Check that the endpoint's host accepts TCP connections, and open a session."""
        try:
            await check_reachable(self.host, self.port, self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise SinkError(
                f"sink {self.name}: cannot connect to {self.host}:{self.port}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "neuroio-events"},
        )

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """POST the events, ``batch`` per request, in order."""
        if self._session is None:
            raise SinkError(f"sink {self.name}: not started")
        for start in range(0, len(events), self.batch):
            await self._post(self._session, events[start : start + self.batch])

    async def _post(self, session: aiohttp.ClientSession, events: Sequence[SpooledEvent]) -> None:
        if self.batch == 1:
            body = events[0].payload
            key = str(events[0].id)
        else:
            body = b"[" + b",".join(e.payload for e in events) + b"]"
            ids = ",".join(str(e.id) for e in events)
            key = "batch-" + hashlib.sha256(ids.encode()).hexdigest()
        headers = {**self._headers, "Content-Type": "application/json", "Idempotency-Key": key}
        if self._secret is not None:
            stamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(stamp)
            headers[SIGNATURE_HEADER] = sign(self._secret, stamp, body)
        try:
            # A redirect is not followed: aiohttp turns a POST answered 301/302 into a GET
            # without the body, which a receiver may answer 200 to without the event.
            async with session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                reason = response.reason
                retry_after = response.headers.get("Retry-After")
                location = response.headers.get("Location")
                text = (await response.content.read(200)).decode(errors="replace")
        except asyncio.TimeoutError as exc:
            raise SinkError(f"sink {self.name}: no answer within {self.timeout} s") from exc
        except aiohttp.ClientError as exc:
            raise SinkError(f"sink {self.name}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        body_text = text.strip()[:200]
        if status in self.dead_letter:
            raise PermanentSinkError(f"sink {self.name}: HTTP {status} {body_text!r}")
        wait = parse_retry_after(retry_after, cap=_MAX_RETRY_AFTER)
        meaning = _misconfigured(status, location)
        if meaning is None:
            raise SinkError(f"sink {self.name}: HTTP {status} {body_text!r}", retry_after=wait)
        shown = f" ({body_text!r})" if body_text else ""
        raise SinkError(
            f"webhook {redact_uri(self.url)} answered HTTP {status} "
            f"{_phrase(status, reason)}{shown}: {meaning}; events wait in the spool",
            retry_after=wait,
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _misconfigured(status: int, location: str | None) -> str | None:
    """What a status that says the sink is misconfigured likely means (``None``: another)."""
    if 300 <= status < 400:
        target = f" to {redact_uri(location)}" if location else ""
        return f"the receiver redirects{target}: point the sink at the final URL"
    return MISCONFIGURED.get(status)


def _phrase(status: int, reason: str | None) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return reason or ""
