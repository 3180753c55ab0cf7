"""The frames of the NeuroIO events protocol, with no I/O (see ``docs/protocol.md``).

Encodes what the client sends (AUTH, PING) and tells apart what the server sends. Server
messages carry no type tag: they are told apart by their keys (``auth``, ``PING``, ``error``,
``id`` + ``data``). Also the one test of a well-formed event id (:func:`is_event_id`) and the
prefix the hot path recognises events by (:data:`EVENT_PREFIX`). Nothing here touches a socket
or an event loop, so it is tested alone.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from .. import _redact
from ..exceptions import MessageError
from ..messages import (
    AuthOk,
    Entry,
    Event,
    Message,
    Pong,
    ServerError,
    UnknownMessage,
    _adopt,
    _has_wire_extra,
    _is_unread,
    _LaxEntry,
)

__all__ = [
    "EVENT_PREFIX",
    "PING_FRAME",
    "Kind",
    "StreamParser",
    "classify",
    "decode_json",
    "encode_auth",
    "encode_ping",
    "error_text",
    "event_decoder",
    "event_from_dict",
    "event_key",
    "event_to_json",
    "is_event_id",
    "message_from_dict",
    "parse_message",
    "parse_refused",
]

# Events dominate the stream; this prefix is how the platform and the emulator write them,
# and seeing it lets the hot path skip a decode. Anything else is probed properly.
EVENT_PREFIX = '{"id":'

PING_FRAME = '{"action":"PING"}'


class Kind(enum.Enum):
    """What a server frame is, decided from its keys alone."""

    AUTH_OK = "auth_ok"
    AUTH_REJECTED = "auth_rejected"
    PONG = "pong"
    ERROR = "error"
    EVENT = "event"
    UNKNOWN = "unknown"
    MALFORMED = "malformed"
    BINARY = "binary"


class _Probe(msgspec.Struct):
    # Only the keys that tell the kinds apart; msgspec skips ``data`` without building it.
    auth: Any = msgspec.UNSET
    PING: Any = msgspec.UNSET
    error: Any = msgspec.UNSET
    id: Any = msgspec.UNSET


class _EventFrame(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    # An event whose every field is known and well-typed decodes in one pass (its extra is
    # empty); anything else is tried with _LaxEventFrame.
    id: int
    data: Entry


class _LaxEventFrame(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    # An event whose entry has fields Entry does not know, every known one well-typed, also
    # decodes in one pass: the unknown fields are skipped, and decoded from the frame only if
    # ``extra`` is read. Anything else (a new enum value, a value of the wrong type, an unknown
    # key beside ``id`` and ``data``) takes the tolerant path through a dict.
    id: int
    data: _LaxEntry


class _DataProbe(msgspec.Struct):
    created: Any = None


class _IdProbe(msgspec.Struct):
    id: Any = None
    data: _DataProbe | None = None


# What a decoder can raise on hostile input besides DecodeError: invalid UTF-8 inside a
# bytes frame, a lone surrogate in a str, and nesting deeper than the interpreter allows.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeError, RecursionError)
# Event ids are SQLite integers downstream and cursors here: an id outside int64 is no id.
_MAX_ID = 2**63


def is_event_id(value: object) -> bool:
    """Whether ``value`` can be an event id: an ``int`` (not a ``bool``) within signed 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_ID <= value < _MAX_ID


def _plain(raw: str | bytes) -> str | bytes:
    """``raw`` as exactly ``str`` or ``bytes``: msgspec refuses subclasses like Backfilled."""
    kind = type(raw)
    if kind is str or kind is bytes:
        return raw
    return str(raw) if isinstance(raw, str) else bytes(raw)


_probe_decoder = msgspec.json.Decoder(_Probe)
_id_probe_decoder = msgspec.json.Decoder(_IdProbe)
event_decoder = msgspec.json.Decoder(_EventFrame)
"""Decodes a well-formed event frame in one pass (``.decode(text).id`` / ``.data``).

It refuses an entry with unknown fields: :func:`parse_refused` takes those."""
_lax_event_decoder = msgspec.json.Decoder(_LaxEventFrame)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def encode_auth(token: str) -> str:
    """The AUTH frame sent right after connecting. It holds the token: never log it."""
    return _encoder.encode({"action": "AUTH", "data": {"token": token}}).decode()


def encode_ping() -> str:
    """The PING frame sent every ``ping_interval`` seconds."""
    return PING_FRAME


def classify(raw: str | bytes) -> Kind:
    """Tell what a frame is from its keys, without building the typed message.

    Text frames that are not a JSON object are ``MALFORMED``; binary frames are ``BINARY``
    (the protocol only uses text). A frame written the way the platform writes events
    (``{"id":...}``) is taken to be an event without decoding it: this is the hot path, and
    :func:`parse_message` still validates. Never raises.
    """
    if isinstance(raw, str):
        if raw.startswith(EVENT_PREFIX) and raw.endswith("}"):
            return Kind.EVENT
    else:
        return Kind.BINARY
    try:
        probe = _probe_decoder.decode(_plain(raw))
    except _DECODE_ERRORS:
        return Kind.MALFORMED
    return _kind_of(probe.auth, probe.PING, probe.error, probe.id)


def event_key(raw: str | bytes) -> tuple[int, str | None] | None:
    """An event frame's id and its entry's ``created`` text, decoding nothing else.

    Returns ``None`` when the frame has no integer ``id``. Used to track the gap-recovery
    cursor and drop duplicates without building the typed event.
    """
    try:
        probe = _id_probe_decoder.decode(_plain(raw))
    except _DECODE_ERRORS:
        return None
    event_id = probe.id
    if not is_event_id(event_id):
        return None
    created = probe.data.created if probe.data is not None else None
    return event_id, created if isinstance(created, str) else None


def _kind_of(auth: Any, ping: Any, error: Any, id_: Any) -> Kind:
    if auth is not msgspec.UNSET:
        return Kind.AUTH_OK if auth == "ok" else Kind.AUTH_REJECTED
    if ping is not msgspec.UNSET:
        return Kind.PONG
    if error is not msgspec.UNSET:
        return Kind.ERROR
    if id_ is not msgspec.UNSET:
        return Kind.EVENT
    return Kind.UNKNOWN


def decode_json(raw: str | bytes) -> Any:
    """Decode one frame's JSON; raise :class:`MessageError` if it is not JSON."""
    try:
        return _any_decoder.decode(_plain(raw))
    except RecursionError:
        raise MessageError("frame is nested too deeply to decode") from None
    except _DECODE_ERRORS as exc:
        raise MessageError(f"frame is not valid JSON: {exc}") from exc


def parse_message(raw: str | bytes) -> Message:
    """Turn one server frame into a typed message.

    Args:
        raw: the frame as received (text, or bytes holding UTF-8 JSON).

    Returns:
        :class:`AuthOk`, :class:`Pong`, :class:`ServerError`, :class:`Event`, or
        :class:`UnknownMessage` for a JSON object of another shape.

    Raises:
        MessageError: the frame is not a JSON object, or an event lacks an integer ``id``
            or an object ``data``.
    """
    raw = _plain(raw)
    try:
        frame = event_decoder.decode(raw)
    except _DECODE_ERRORS:
        return parse_refused(raw)
    return Event(id=frame.id, entry=frame.data)


def parse_refused(raw: str | bytes) -> Message:
    """:func:`parse_message` of a frame that :data:`event_decoder` refused.

    The listener's iterator calls it after its own one-pass attempt, so as not to repeat it.
    """
    raw = _plain(raw)
    try:
        lax = _lax_event_decoder.decode(raw)
    except _DECODE_ERRORS:
        pass
    else:
        return Event(id=lax.id, entry=_adopt(lax.data, raw))
    return _parse_tolerant(raw)


def _parse_tolerant(raw: str | bytes) -> Message:
    # Through a dict: whatever does not fit the typed entry is kept in its extra.
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise MessageError(f"expected a JSON object, got {type(value).__name__}")
    return message_from_dict(value)


# Keys a frame without unknown fields can hold: the frame's, the entry's (with the wire name
# of ``extra``), a camera's or space's. A stream's marker key is never one of them.
_CLEAN_KEYS = frozenset({"id", "data", "name", "neuroio:extra", *Entry.__struct_fields__})
# Frames in a row without the marker key after which a stream is taken to be clean again.
_MISSES = 16


class StreamParser:
    """:func:`parse_message` for the frames of one stream, one decode per event.

    A stream whose entries carry fields :class:`Entry` does not know would have each event
    refused by :data:`event_decoder` before the lax decoder takes it. Once one such event has
    come, this parser remembers one of its unknown keys (the *marker*) and decodes later
    events with the lax decoder first. A frame holding ``"<marker>":`` holds an unknown field:
    in JSON text that sequence is a key (a quote inside a string is escaped), no key of a
    clean frame is the marker, and the lax decoder refuses unknown keys everywhere but at the
    top of ``data`` and inside values that are themselves unknown fields. Such a frame is done
    in that one decode; any other is decoded strictly as well, so a clean entry is the same
    as :func:`parse_message` makes it, with a plain empty ``extra``. After
    ``_MISSES`` frames in a row without the marker the stream is taken to be clean again.

    Attributes:
        lax_first: whether events are decoded lax first (the caller decodes strictly first,
            then calls :meth:`refused`, when it is false).
    """

    __slots__ = ("_marker", "_misses", "_wait", "lax_first")

    def __init__(self) -> None:
        self.lax_first = False
        self._marker = ""
        self._misses = 0
        self._wait = 0  # refused events to let pass before trying to learn a marker again

    def refused(self, raw: str | bytes) -> Message:
        """:func:`parse_refused`, learning a marker from an entry with unknown fields."""
        message = parse_refused(raw)
        if type(raw) is not str or not isinstance(message, Event) or not _is_unread(message.entry):
            return message
        if self._wait:
            self._wait -= 1
            return message
        # Once per switch to lax first: this entry's extra is decoded now.
        for key in message.entry.extra:
            marker = f'"{key}":'
            if key not in _CLEAN_KEYS and marker in raw:  # written without escapes
                self._marker = marker
                self._misses = 0
                self.lax_first = True
                return message
        # No key fit (each one escaped, or named like a documented one): not for a while.
        self._wait = _MISSES
        return message

    def lax(self, raw: str | bytes) -> Message:
        """:func:`parse_message` of a frame, decoded lax first if it is plain text."""
        if type(raw) is not str:
            return parse_message(raw)
        try:
            lax = _lax_event_decoder.decode(raw)
        except _DECODE_ERRORS:
            # Whatever the lax decoder refuses, the strict one does: the tolerant path.
            return _parse_tolerant(raw)
        entry = lax.data
        if self._marker in raw and not _has_wire_extra(entry):
            self._misses = 0
            return Event(id=lax.id, entry=_adopt(entry, raw))
        try:
            frame = event_decoder.decode(raw)
        except _DECODE_ERRORS:
            # Accepted lax but not strictly: unknown fields, without the marker.
            event = Event(id=lax.id, entry=_adopt(entry, raw))
        else:
            event = Event(id=frame.id, entry=frame.data)
        self._misses += 1
        if self._misses >= _MISSES:
            self.lax_first = False
        return event


def message_from_dict(value: dict[str, Any]) -> Message:
    """Typed message from an already decoded JSON object (see :func:`parse_message`)."""
    kind = _kind_of(
        value.get("auth", msgspec.UNSET),
        value.get("PING", msgspec.UNSET),
        value.get("error", msgspec.UNSET),
        value.get("id", msgspec.UNSET),
    )
    if kind is Kind.AUTH_OK:
        return AuthOk()
    if kind is Kind.AUTH_REJECTED:
        return ServerError(message=f"authentication answer {value['auth']!r}")
    if kind is Kind.PONG:
        ping = value["PING"]
        return Pong(ping if isinstance(ping, str) else _encoder.encode(ping).decode())
    if kind is Kind.ERROR:
        error = value["error"]
        return ServerError(error if isinstance(error, str) else _encoder.encode(error).decode())
    if kind is Kind.EVENT:
        return event_from_dict(value)
    return UnknownMessage(value)


def event_from_dict(value: dict[str, Any], *, backfilled: bool = False) -> Event:
    """Typed :class:`Event` from a decoded ``{"id": ..., "data": {...}}`` object."""
    event_id = value.get("id")
    data = value.get("data")
    if not isinstance(event_id, int) or isinstance(event_id, bool):
        raise MessageError(f"event id must be an integer, got {type(event_id).__name__}")
    if not isinstance(data, dict):
        raise MessageError(f"event data must be an object, got {type(data).__name__}")
    return Event(id=event_id, entry=Entry.from_dict(data), backfilled=backfilled)


def event_to_json(event: Event) -> bytes:
    """The wire form of an event, ``{"id": ..., "data": {...}}``, compact JSON."""
    return _encoder.encode({"id": event.id, "data": event.entry.to_dict()})


def error_text(raw: str | bytes) -> str:
    """The text of a server's error (or refused AUTH) frame, with known tokens redacted."""
    try:
        value = parse_message(raw)
    except Exception:  # whatever a hostile frame makes the parser raise, it is no message
        return "unreadable error message"
    message = getattr(value, "message", None)
    return _redact.redact(message) if isinstance(message, str) else type(value).__name__
