"""The row of an event in the SQL sinks' tables (PostgreSQL and SQLite): its columns, how each
is taken from the event, and the table names they accept.

Columns, in this order (:data:`COLUMNS`):

``id``
    the event id (the primary key: each event is stored once).
``created``
    the entry's ``created``, the platform's time of the recognition (UTC).
``received_at``
    when the bridge received the event.
``result``, ``confidence``, ``pid``
    the entry's fields of those names.
``source_id``, ``source_name``, ``space_id``
    the entry's ``source.id``, ``source.name`` and ``space.id``.
``backfilled``
    the event was recovered from the REST API after a gap (its top-level ``"backfilled":
    true``); false when the event does not say so.
``data``
    the whole event as the bridge received it (``{"id": ..., "data": {entry}}`` and any other
    top-level field), as JSON: every field is kept, including those without a column.

A value of the wrong type (a ``created`` that is no ISO-8601 time, a ``confidence`` that is a
string, an id beyond 64 bits, a ``pid`` of more than 256 characters) leaves its column
``NULL``; the event is stored all the same, the value as it was in ``data``. Nothing in an
event makes its row fail to insert: a payload that is not JSON at all is kept in ``data`` as
one JSON string, and for PostgreSQL (whose ``text`` and ``jsonb`` cannot hold the character
U+0000) any U+0000 becomes U+FFFD.

The fields are read with a typed decoder in one pass; only an event with an unexpected value
takes the slower path that checks field by field.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import timezone
from typing import Any

import msgspec

from .._times import parse_time
from .base import SpooledEvent

__all__ = [
    "COLUMNS",
    "DEFAULT_TABLE",
    "SqliteRow",
    "identifier_problem",
    "postgres_batch",
    "sqlite_rows",
]

DEFAULT_TABLE = "neuroio_events"
COLUMNS = (
    "id",
    "created",
    "received_at",
    "result",
    "confidence",
    "pid",
    "source_id",
    "source_name",
    "space_id",
    "backfilled",
    "data",
)

SqliteRow = tuple[
    int, str | None, str, str | None, float | None, str | None, int | None, str | None,
    int | None, int, str,
]  # fmt: skip

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENTIFIER = 63  # PostgreSQL cuts longer names silently (NAMEDATALEN - 1)
_INT64 = range(-(2**63), 2**63)
# A person id is a uuid; anything much longer is not one, and a long value in an indexed column
# could exceed what an index entry may hold (PostgreSQL: about 2,700 bytes).
_MAX_PID = 256
_NUL = b"\\u0000"  # how msgspec (the spool's encoder) writes U+0000 in a JSON string
# A time in the SQLite form for sure (days past the 28th are left to the full parser).
_CANONICAL = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z"
)
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class _Named(msgspec.Struct):
    id: int | None = None
    name: str | None = None


class _Entry(msgspec.Struct):
    created: str | None = None  # parsed (PostgreSQL) or checked (SQLite) per sink
    result: str | None = None
    confidence: float | None = None
    pid: str | None = None
    source: _Named | None = None
    space: _Named | None = None


class _Event(msgspec.Struct):
    data: _Entry
    backfilled: bool = False


_typed = msgspec.json.Decoder(_Event)

# created (as written), result, confidence, pid, source_id, source_name, space_id, backfilled,
# data (the event's JSON, valid)
_Fields = tuple[
    str | None, str | None, float | None, str | None, int | None, str | None, int | None,
    bool, bytes,
]  # fmt: skip


def identifier_problem(value: str, *, qualified: bool = False) -> str | None:
    """What is wrong with ``value`` as a table name (``None``: nothing); completes "must ...".

    A name is letters, digits and ``_``, not starting with a digit, at most 63 characters;
    with ``qualified``, ``schema.table`` is accepted too.
    """
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        form = "[schema.]name" if qualified else "a name"
        return f"be {form} of letters, digits and _, not starting with a digit"
    if any(len(p) > _MAX_IDENTIFIER for p in parts):
        return f"be at most {_MAX_IDENTIFIER} characters (per part)"
    return None


def postgres_batch(events: Sequence[SpooledEvent]) -> str:
    """The rows of ``events`` for PostgreSQL as one JSON array of arrays, in column order:
    ``created`` as ISO-8601 text with its zone, ``received_at`` as seconds since the epoch,
    ``data`` the event itself (embedded as it is, not encoded again), every U+0000 replaced.

    Sent as one ``jsonb`` parameter, the batch costs the event loop one copy instead of the
    encoding of eleven values per event; PostgreSQL parses the event's JSON once either way.
    Sorted by id, so that two bridges inserting the same ids concurrently take their row
    locks in the same order (no deadlock).
    """
    rows = []
    for event in sorted(events, key=_event_id):
        payload = event.payload
        if _NUL in payload:
            payload = _without_nul(payload)
        created, result, confidence, pid, source_id, source_name, space_id, back, data = _fields(
            payload
        )
        rows.append(
            (event.id, None if created is None else _postgres_time(created), event.received_at,
             result, confidence, pid, source_id, source_name, space_id, back, msgspec.Raw(data))
        )  # fmt: skip
    return _encoder.encode(rows).decode()


def sqlite_rows(events: Sequence[SpooledEvent]) -> list[SqliteRow]:
    """The rows of ``events`` for SQLite: times as ISO-8601 text in UTC to the millisecond (the
    platform's own form, ``2024-05-01T10:00:00.000Z``), of one fixed width so that they sort
    and compare as text, and work with SQLite's date functions; ``backfilled`` as 0 or 1."""
    rows: list[SqliteRow] = []
    second = -1
    prefix = ""
    for event in events:
        created, result, confidence, pid, source_id, source_name, space_id, back, data = _fields(
            event.payload
        )
        # The events of a batch were mostly received within the same second: its text is
        # made once (formatting a datetime costs more than the rest of the row).
        at = event.received_at
        whole = math.floor(at)
        if whole != second:
            second = whole
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        received = f"{prefix}.{min(int((at - whole) * 1000), 999):03d}Z"
        rows.append(
            (event.id, None if created is None else _created_text(created), received, result,
             confidence, pid, source_id, source_name, space_id, 1 if back else 0, data.decode())
        )  # fmt: skip
    return rows


def _event_id(event: SpooledEvent) -> int:
    return event.id


def _postgres_time(value: str) -> str | None:
    """``value`` as text PostgreSQL reads as ``timestamptz`` whatever its settings; ``None`` if
    it is not a time. Only times the one parser accepts are sent, in a form PostgreSQL takes."""
    if len(value) == 24 and _CANONICAL.match(value) is not None:
        return value
    moment = parse_time(value)
    return None if moment is None else moment.isoformat()


def _created_text(value: str) -> str | None:
    """``value`` in the SQLite form, ``None`` if it is not a time."""
    if len(value) == 24 and _CANONICAL.match(value) is not None:
        return value  # already in that form (the platform's): no need to parse and format
    moment = parse_time(value)
    if moment is None:
        return None
    moment = moment.astimezone(timezone.utc)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def _fields(payload: bytes) -> _Fields:
    try:
        event = _typed.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return _checked_fields(payload)
    entry = event.data
    source = entry.source
    space = entry.space
    source_id = source_name = space_id = None
    if source is not None:
        source_id = source.id if source.id is None or source.id in _INT64 else None
        source_name = source.name
    if space is not None:
        space_id = space.id if space.id is None or space.id in _INT64 else None
    return (
        entry.created, entry.result, entry.confidence, _pid(entry.pid), source_id, source_name,
        space_id, event.backfilled, payload,
    )  # fmt: skip


def _checked_fields(payload: bytes) -> _Fields:
    """The fields of an event with an unexpected value: each one checked on its own."""
    try:
        value: Any = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        # Not JSON (possible only for events given to a pipeline by hand): kept whole.
        text = payload.decode("utf-8", "replace").replace("\x00", "\ufffd")
        return None, None, None, None, None, None, None, False, _encoder.encode(text)
    entry = value.get("data") if isinstance(value, dict) else None
    if not isinstance(entry, dict):
        entry = {}
    source = entry.get("source")
    space = entry.get("space")
    if not isinstance(source, dict):
        source = {}
    if not isinstance(space, dict):
        space = {}
    backfilled = isinstance(value, dict) and value.get("backfilled") is True
    return (
        _text(entry.get("created")),
        _text(entry.get("result")),
        _number(entry.get("confidence")),
        _pid(_text(entry.get("pid"))),
        _bigint(source.get("id")),
        _text(source.get("name")),
        _bigint(space.get("id")),
        backfilled,
        payload,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _pid(value: str | None) -> str | None:
    return value if value is None or len(value) <= _MAX_PID else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond a double's range
        return None


def _bigint(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value in _INT64 else None


def _without_nul(payload: bytes) -> bytes:
    """``payload`` with every U+0000 escape replaced by U+FFFD's. A plain replacement keeps
    the JSON valid whatever precedes it (the replacement has the same shape); it alters only
    a string holding the six characters ``\\u0000`` themselves, which is harmless."""
    return payload.replace(_NUL, b"\\ufffd")
