"""Typed NeuroIO messages.

The four server messages of ``docs/protocol.md`` are :class:`AuthOk`, :class:`Pong`,
:class:`ServerError` and :class:`Event`; a JSON object of any other shape becomes
:class:`UnknownMessage` so that nothing the server says is lost. An event's ``data`` is an
:class:`Entry`: every field is optional (the platform documents none as required), enum fields
hold an enum member when the value is known and ``None`` otherwise, and every field the
platform sends that this module does not know, or whose value does not fit, is kept in
:attr:`Entry.extra`. The string enums print as their values (``str(Result.EXACT) == "exact"``).

An entry decoded from an event frame whose only surprise is fields this module does not know
(the platform adds some: groups, tags, ids of related objects) is decoded in one pass with
those fields skipped; its :attr:`Entry.extra` is decoded from the frame, kept with the entry,
the first time anything reads or encodes it.
"""

from __future__ import annotations

import collections.abc
import copy
import enum
import threading
from collections.abc import Iterator
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


class _TextEnum(str, enum.Enum):
    """A string enum whose members print as their values, as databases and logs want them.

    ``str()``, ``format()`` and f-strings give ``"exact"``, not ``"Result.EXACT"``, on every
    Python version (3.10 formats mixed-in enums by value but prints them by name; 3.12 does
    both by name). ``repr()`` still names the member.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class Result(_TextEnum):
    """Recognition result of an entry."""

    NEW = "new"
    REINIT = "reinit"
    EXACT = "exact"
    HA = "ha"
    JUNK = "junk"
    NM = "nm"
    DET = "det"


class Mood(_TextEnum):
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


class Liveness(_TextEnum):
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
    """Fields not listed above, and known fields whose value did not fit their type.

    For an entry decoded from an event frame with unknown fields, decoded from that frame on
    first read (or when the entry is encoded, compared, copied or pickled); a plain ``dict``
    from then on.
    """

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


# ---------------------------------------------------------------------------- deferred extra


class _FrameData(msgspec.Struct, gc=False):
    # The ``data`` object of an event frame, every key kept; the frame's ``id`` is skipped.
    data: dict[str, Any]


_frame_data_decoder = msgspec.json.Decoder(_FrameData)


class _LaxEntry(Entry, forbid_unknown_fields=False, gc=False):
    """:class:`Entry` decoded with unknown fields skipped instead of refused.

    msgspec takes ``forbid_unknown_fields`` from the class, so skipping needs a class of its
    own; it adds no field, so an instance becomes an :class:`Entry` by ``__class__``
    assignment (see :func:`_adopt`) and compares, prints and encodes as one.
    """


def _decode_on_fresh_stack(frame: str | bytes) -> dict[str, Any]:
    result: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: result.append(_frame_data_decoder.decode(frame).data),
        name="neuroio-extra",
    )
    thread.start()
    thread.join()
    if not result:  # the thread's exception was printed by threading's excepthook
        raise RecursionError("entry extra fields are nested too deeply to decode")
    return result[0]


class _UnreadExtra(enum.Enum):
    """The ``extra`` of an entry decoded with its unknown fields skipped, until it is read.

    It holds the frame the entry came from and decodes the unknown fields from it when first
    asked. Reading ``Entry.extra`` replaces it with the plain ``dict`` (see
    :func:`_get_extra`); what reaches the field without that attribute access also gets
    the decoded fields:

    - msgspec's encoders and ``to_builtins`` read the field's slot directly and call no hook
      for a type they support, but they encode an :class:`enum.Enum` instance by reading
      its ``_value_`` attribute through ordinary attribute access. This class is an Enum with
      no members, and ``_value_`` is a property that decodes: ``msgspec.json.encode(entry)``
      gives exactly what it gives for an entry whose ``extra`` is the dict. Tests pin this.
    - ``==``, ``repr``, ``copy.deepcopy``, ``pickle`` (the struct hands over its field
      values) are answered with the decoded dict, and pickling stores a plain dict.
    - ``msgspec.structs.asdict``/``astuple`` hand this object out as it is: it is a read-only
      :class:`collections.abc.Mapping` of the same items.
    """

    # Instances are made by _adopt(), one per entry; the class has no members. Slots: an
    # instance is made for every such event, and a __dict__ would cost a third more.
    __slots__ = ("_frame", "_decoded")
    _frame: str | bytes | None
    _decoded: dict[str, Any]

    def read(self) -> dict[str, Any]:
        """The unknown fields, decoded from the frame once."""
        frame = self._frame
        if frame is None:
            return self._decoded
        # The frame was already decoded once into the entry, which only succeeds for a
        # well-formed event, so this decode cannot fail for want of form.
        try:
            data = _frame_data_decoder.decode(frame).data
        except RecursionError:
            # A field nested almost as deep as the decoder goes, read from code deeper in
            # the stack than the listener was when it decoded the entry: a fresh stack has
            # the room the first decode had.
            data = _decode_on_fresh_stack(frame)
        value = {key: item for key, item in data.items() if key not in _ENTRY_FIELDS}
        # In this order, so that a thread reading meanwhile finds one or the other.
        self._decoded = value
        self._frame = None
        return value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _UnreadExtra):
            other = other.read()
        return self.read() == other

    __hash__ = None  # type: ignore[assignment]  # a dict is not hashable either

    def __repr__(self) -> str:
        return repr(self.read())

    def __str__(self) -> str:
        return str(self.read())

    def __format__(self, format_spec: str) -> str:
        return format(self.read(), format_spec)

    def __bool__(self) -> bool:
        return bool(self.read())

    def __len__(self) -> int:
        return len(self.read())

    def __iter__(self) -> Iterator[str]:
        return iter(self.read())

    def __contains__(self, key: object) -> bool:
        return key in self.read()

    def __getitem__(self, key: str) -> Any:
        return self.read()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get`` of the decoded fields."""
        return self.read().get(key, default)

    def keys(self) -> collections.abc.KeysView[str]:
        """``dict.keys`` of the decoded fields."""
        return self.read().keys()

    def items(self) -> collections.abc.ItemsView[str, Any]:
        """``dict.items`` of the decoded fields."""
        return self.read().items()

    def values(self) -> collections.abc.ValuesView[Any]:
        """``dict.values`` of the decoded fields."""
        return self.read().values()

    def __copy__(self) -> dict[str, Any]:
        return dict(self.read())

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(self.read(), memo)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (dict, (self.read(),))


# Assigned after the class statement: Enum reserves _sunder_ names in its body. A data
# descriptor on the class wins over anything an instance could hold, so msgspec's read of
# ``_value_`` always lands here.
_UnreadExtra._value_ = property(_UnreadExtra.read)
collections.abc.Mapping.register(_UnreadExtra)

_extra_slot: Any = Entry.__dict__["extra"]  # the field's slot, which msgspec reads directly
_new_unread = object.__new__  # an Enum's own __new__ looks members up; this one only allocates


def _get_extra(entry: Entry) -> dict[str, Any]:
    value = _extra_slot.__get__(entry, Entry)
    if type(value) is _UnreadExtra:
        value = value.read()
        _extra_slot.__set__(entry, value)
    return value  # type: ignore[no-any-return]


def _set_extra(entry: Entry, value: dict[str, Any]) -> None:
    _extra_slot.__set__(entry, value)


def _del_extra(entry: Entry) -> None:
    _extra_slot.__delete__(entry)


# ``entry.extra`` goes through this property (msgspec itself keeps using the slot), so code
# that reads the attribute always gets a plain dict.
_EXTRA_DOC = "Fields not listed above, and known fields whose value did not fit their type."
Entry.extra = property(_get_extra, _set_extra, _del_extra, _EXTRA_DOC)  # type: ignore[assignment]


def _adopt(entry: _LaxEntry, frame: str | bytes) -> Entry:
    """An entry decoded by :class:`_LaxEntry` from ``frame``, made an :class:`Entry`.

    Only for a decode that the strict :class:`Entry` refused: then some key of ``data`` is not
    a field, and ``extra`` is known not to be empty (an empty one would be encoded, as
    ``omit_defaults`` only leaves out the field's own default).
    """
    entry.__class__ = Entry  # type: ignore[assignment]
    unread = _new_unread(_UnreadExtra)
    unread._frame = frame
    _extra_slot.__set__(entry, unread)
    return entry


def _has_wire_extra(entry: Entry) -> bool:
    """Whether a just-decoded entry's frame held the ``"neuroio:extra"`` key itself."""
    return bool(_extra_slot.__get__(entry, Entry))


def _is_unread(entry: Entry) -> bool:
    """Whether ``entry.extra`` is still to be decoded from its frame."""
    return type(_extra_slot.__get__(entry, Entry)) is _UnreadExtra


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
