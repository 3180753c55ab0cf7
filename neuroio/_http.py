"""HTTP details shared by every client we own (the entries API, the webhook sink)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime

from . import _redact

__all__ = [
    "BODY_START_CHARS",
    "MAX_RETRY_AFTER",
    "body_start",
    "content_type",
    "parse_retry_after",
]

BODY_START_CHARS = 80
"""How much of an unexpected answer's body an error message shows, characters."""
# A token starting within the shown part is replaced before the cut: the window searched is
# longer than the shown part by more than any token.
_BODY_WINDOW = 4 * BODY_START_CHARS + 1024
_CONTENT_TYPE_CHARS = 60

MAX_RETRY_AFTER = 300.0
"""The longest ``Retry-After`` honoured, seconds: a server asking for an hour is still retried."""


def parse_retry_after(
    value: str | None, *, cap: float = MAX_RETRY_AFTER, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns ``None`` when the header is absent or unreadable, else a value in ``[0, cap]``.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def content_type(headers: Mapping[str, str]) -> str:
    """The media type of an answer (``text/html``), for an error message; ``"no content
    type"`` when the header is absent. Parameters (``charset``) are left out, and the value
    is bounded and printable whatever the server sent."""
    value = headers.get("Content-Type", "").split(";", 1)[0].strip()
    if not value:
        return "no content type"
    return _printable(value)[:_CONTENT_TYPE_CHARS]


def body_start(body: bytes, *, limit: int = BODY_START_CHARS, secrets: Iterable[str] = ()) -> str:
    """The first ``limit`` characters of an answer's body, for an error message.

    Decoded as UTF-8 (invalid bytes replaced), each run of whitespace made one space,
    other unprintable characters escaped (``\\x07``), ``...`` appended when cut. ``secrets``
    (the token the request carried) and every token registered for redaction are replaced
    with ``***`` before the cut, so no part of one can show.
    """
    text = body[:_BODY_WINDOW].decode("utf-8", "replace")
    for secret in secrets:
        if secret:
            text = text.replace(secret, _redact.REDACTED)
    text = " ".join(_redact.redact(text).split())
    cut = len(text) > limit or len(body) > _BODY_WINDOW
    return _printable(text[:limit]) + ("..." if cut else "")


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
