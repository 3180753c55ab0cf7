"""Typed NeuroIO messages.

The four server messages of ``docs/protocol.md`` are :class:`AuthOk`, :class:`Pong`,
:class:`ServerError` and :class:`Event`; a JSON object of any other shape becomes
:class:`UnknownMessage` so that nothing the server says is lost. An event's ``data`` is an
:class:`Entry`: every field is optional (the platform documents none as required), enum fields
hold an enum member when the value is known and ``None`` otherwise, and every field the
platform sends that this module does not know, or whose value does not fit, is kept in
:attr:`Entry.extra`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, TypeAlias

import msgspec

__all__ = [
    "AuthOk",
    "Backfilled",
    "Entry",
    "Event",
    "Liveness",
    "Message",
    "Mood",
    "Named",
    "Pong",
    "Result",
    "ServerError",
    "Sex",
    "UnknownMessage",
]


_EXTRA_WIRE_NAME = "neuroio:extra"


class Result(str, enum.Enum):
    """Recognition result of an entry."""

    NEW = "new"
    REINIT = "reinit"
    EXACT = "exact"
    HA = "ha"
    JUNK = "junk"
    NM = "nm"
    DET = "det"


class Mood(str, enum.Enum):
    """Facial expression of an entry."""

    NEUTRAL = "neutral"
    ANGER = "anger"
    CONTEMPT = "contempt"
    DISGUST = "disgust"
    FEAR = "fear"
    HAPPINESS = "happiness"
    SADNESS = "sadness"
    SURPRISE = "surprise"
    NM = "nm"
    DET = "det"


class Liveness(str, enum.Enum):
    """Liveness check outcome of an entry."""

    PASSED = "passed"
    FAILED = "failed"
    UNDETERMINED = "undetermined"


class Sex(enum.IntEnum):
    """Estimated sex (the platform's encoding: 0 male, 1 female)."""

    MALE = 0
    FEMALE = 1


class Named(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A camera (``source``) or a space: ``{"id": int, "name": str}``.

    An object with more keys than these does not fit: it is kept whole in
    :attr:`Entry.extra` (and the field is ``None``), so nothing is lost on re-encoding.
    """

    id: int | None = None
    name: str | None = None


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """One recognised face: the ``data`` of an event, or an item of ``GET /v1/entries/``."""

    # gc=False: decoded JSON holds no reference cycles, and leaving these structs out of the
    # cycle collector makes decoding about 7% cheaper. Do not store cyclic data in ``extra``.

    id: int | None = None
    created: datetime | None = None
    pid: str | None = None
    pid_created: datetime | None = None
    result: Result | None = None
    confidence: float | None = None
    age: int | None = None
    sex: Sex | None = None
    mood: Mood | None = None
    liveness: Liveness | None = None
    source: Named | None = None
    space: Named | None = None
    face_image: str | None = None
    full_image: str | None = None
    initial_face_image: str | None = None
    initial_full_image: str | None = None
    facesize: float | None = None
    exposure: float | None = None
    pan: float | None = None
    tilt: float | None = None
    # The wire name is one the platform cannot plausibly send, so that decoding straight into
    # Entry (the fast path, which refuses unknown fields) never mistakes a field for it.
    extra: dict[str, Any] = msgspec.field(default_factory=dict, name=_EXTRA_WIRE_NAME)
    """Fields not listed above, and known fields whose value did not fit their type."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        """Build an entry from decoded JSON, keeping whatever does not fit in ``extra``."""
        return _entry_from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data, ``extra`` merged back in."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        extra = out.pop(_EXTRA_WIRE_NAME, None)
        if extra:
            out.update(extra)
        return out


class AuthOk(msgspec.Struct, frozen=True):
    """The server accepted the token: ``{"auth": "ok"}``."""


class Pong(msgspec.Struct, frozen=True):
    """Answer to PING: ``{"PING": "PONG"}``. ``value`` is what the server put there."""

    value: str = "PONG"

    @property
    def ok(self) -> bool:
        """Whether the answer is the documented ``"PONG"``."""
        return self.value == "PONG"


class ServerError(msgspec.Struct, frozen=True):
    """An ``{"error": "<text>"}`` message, e.g. a rejected token."""

    message: str


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An entry pushed by the platform: ``{"id": <int>, "data": {<entry>}}``.

    Attributes:
        id: the event id (the entry id).
        entry: the typed entry.
        backfilled: ``True`` when the event was recovered from the REST API after a gap,
            not pushed over the socket.
    """

    id: int
    entry: Entry
    backfilled: bool = False


class UnknownMessage(msgspec.Struct, frozen=True):
    """A JSON object of a shape the protocol does not define, kept as decoded data."""

    data: Any


class Backfilled(str):
    """A frame recovered from the REST API after a gap, not pushed over the socket.

    It is a ``str`` holding the same JSON a pushed event has (``{"id": ..., "data": {...}}``),
    so a raw handler treats it like any other frame; ``isinstance(message, Backfilled)`` tells
    the two apart without altering the payload.
    """

    __slots__ = ()

    backfilled = True


Message: TypeAlias = AuthOk | Pong | ServerError | Event | UnknownMessage
"""Any message :func:`neuroio.parse_message` returns."""


_ENTRY_FIELDS = frozenset(f for f in Entry.__struct_fields__ if f != "extra")
# Enum-valued fields: a value the platform adds later must not make the whole entry fail,
# so an unknown value moves to ``extra`` and the field stays ``None``.
_ENUM_VALUES: dict[str, frozenset[Any]] = {
    "result": frozenset(m.value for m in Result),
    "mood": frozenset(m.value for m in Mood),
    "liveness": frozenset(m.value for m in Liveness),
    "sex": frozenset(m.value for m in Sex),
}


def _entry_from_dict(data: dict[str, Any]) -> Entry:
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _ENTRY_FIELDS:
            extra[key] = value
            continue
        allowed = _ENUM_VALUES.get(key)
        if allowed is not None and value is not None:
            try:
                ok = value in allowed and not isinstance(value, bool)
            except TypeError:  # unhashable (a list or an object)
                ok = False
            if not ok:
                extra[key] = value
                continue
        known[key] = value
    try:
        entry = msgspec.convert(known, Entry)
    except msgspec.ValidationError:
        # One field has a value of the wrong type: keep every valid field, move the rest.
        entry = Entry()
        for key, value in known.items():
            try:
                one = msgspec.convert({key: value}, Entry)
            except msgspec.ValidationError:
                extra[key] = value
            else:
                setattr(entry, key, getattr(one, key))
    if extra:
        entry.extra = extra
    return entry
