"""Entries with unknown fields: decoded in one pass, ``extra`` decoded only when read.

Every way of using an entry must give what it gave when ``extra`` was decoded at once. The
reference is :meth:`Entry.from_dict` of the decoded ``data``: the tolerant path, unchanged,
which builds ``extra`` eagerly.
"""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroio import (
    Backfilled,
    Entry,
    Event,
    EventListener,
    Liveness,
    MessageError,
    Mood,
    Named,
    Result,
    parse_message,
)
from neuroio._protocol.frames import _MISSES, StreamParser, event_to_json, parse_refused
from neuroio.emulator import Emulator
from neuroio.recording import RecordingWriter, read_recording

TOKEN = "lazy-extra-token"

UNDOCUMENTED: dict[str, Any] = {
    "groups": [{"id": 3, "name": "VIP"}, {"id": 8, "name": "Staff"}],
    "tags": ["returning", "morning"],
    "person_id": None,
    "zone": {"id": 12, "name": "North aisle", "floor": 2},
    "external_ref": "crm-48213",
    "visit_count": 17,
    "note": None,
    "attributes": {"glasses": True, "mask": False, "beard": None},
    "related_entries": [880001, 880005],
    "quality": {"blur": 0.12, "pose": {"yaw": -3.2, "roll": None}},
}
DOCUMENTED: dict[str, Any] = {
    "id": 42,
    "created": "2024-05-17T08:00:00.306Z",
    "pid": "b0a7c2a4-0000-4000-8000-000000000001",
    "result": "exact",
    "confidence": 88.1,
    "age": 31,
    "sex": 1,
    "mood": "happiness",
    "liveness": "passed",
    "source": {"id": 3, "name": "Entrance"},
    "face_image": "https://x/f.jpg",
}
# Unknown fields in front, between and after the known ones.
DATA: dict[str, Any] = {
    "groups": UNDOCUMENTED["groups"],
    **{k: DOCUMENTED[k] for k in ("id", "created", "pid", "result")},
    **{k: UNDOCUMENTED[k] for k in ("tags", "person_id", "zone")},
    **{k: DOCUMENTED[k] for k in ("confidence", "age", "sex", "mood", "liveness", "source")},
    **{k: v for k, v in UNDOCUMENTED.items() if k not in ("groups", "tags", "person_id", "zone")},
    "face_image": DOCUMENTED["face_image"],
}
FRAME = json.dumps({"id": 42, "data": DATA}, separators=(",", ":"))
CLEAN_FRAME = json.dumps({"id": 42, "data": DOCUMENTED}, separators=(",", ":"))


def lazy() -> Entry:
    """A fresh entry decoded from FRAME, ``extra`` not read yet."""
    event = parse_message(FRAME)
    assert isinstance(event, Event)
    return event.entry


def eager() -> Entry:
    """The same entry as the tolerant path builds it, ``extra`` decoded at once."""
    return Entry.from_dict(json.loads(FRAME)["data"])


def unread(entry: Entry) -> bool:
    """Whether ``entry.extra`` is still undecoded (the field's value is not a dict yet)."""
    return type(msgspec.structs.asdict(entry)["extra"]) is not dict


def test_the_reference_is_what_the_platform_sent() -> None:
    """The eager entry has the typed fields and exactly the unknown ones in extra."""
    entry = eager()
    assert entry.result is Result.EXACT and entry.age == 31
    assert entry.source == Named(id=3, name="Entrance")
    assert entry.extra == UNDOCUMENTED
    assert list(entry.extra) == list(k for k in DATA if k in UNDOCUMENTED)


@pytest.mark.parametrize(
    "raw",
    [FRAME, FRAME.encode(), Backfilled(FRAME), bytearray(FRAME.encode())],
    ids=["str", "bytes", "backfilled", "bytearray"],
)
def test_unknown_fields_are_decoded_only_when_read(raw: Any) -> None:
    """The known fields are typed at once; extra waits for its first read, then is a dict."""
    event = parse_message(raw)
    assert isinstance(event, Event) and event.id == 42
    entry = event.entry
    assert type(entry) is Entry
    assert unread(entry)
    assert entry.age == 31 and entry.mood is Mood.HAPPINESS
    extra = entry.extra
    assert type(extra) is dict and extra == UNDOCUMENTED
    assert not unread(entry)
    assert entry.extra is extra  # decoded once


def test_clean_entry_has_a_plain_empty_extra() -> None:
    """An entry with only documented fields takes the one-pass path with nothing deferred."""
    event = parse_message(CLEAN_FRAME)
    assert isinstance(event, Event)
    assert not unread(event.entry)
    assert event.entry.extra == {}
    assert b"neuroio:extra" not in msgspec.json.encode(event.entry)


def test_parse_refused_is_parse_message() -> None:
    """The listener's entry point after its own attempt gives the same message."""
    assert parse_refused(FRAME) == parse_message(FRAME)
    assert parse_refused(CLEAN_FRAME) == parse_message(CLEAN_FRAME)
    assert parse_refused('{"auth":"ok"}') == parse_message('{"auth":"ok"}')


def test_extra_reads_and_writes_like_a_dict() -> None:
    """Mutations of extra stick; assigning it replaces it; encoding shows either."""
    entry = lazy()
    entry.extra["added"] = 1
    assert entry.extra["added"] == 1
    assert msgspec.json.decode(msgspec.json.encode(entry))["neuroio:extra"]["added"] == 1
    entry = lazy()
    entry.extra = {"only": True}
    assert entry.extra == {"only": True}
    assert msgspec.to_builtins(entry)["neuroio:extra"] == {"only": True}


@pytest.mark.parametrize(
    "encode",
    [
        msgspec.json.encode,
        msgspec.msgpack.encode,
        msgspec.to_builtins,
        lambda e: msgspec.json.encode(Event(id=1, entry=e)),
        lambda e: msgspec.to_builtins(Event(id=1, entry=e)),
        lambda e: msgspec.json.Encoder(order="sorted").encode(e),
        Entry.to_dict,
        lambda e: event_to_json(Event(id=42, entry=e)),
        repr,
        lambda e: repr(Event(id=1, entry=e)),
    ],
    ids=[
        "json",
        "msgpack",
        "to_builtins",
        "json-event",
        "to_builtins-event",
        "json-sorted",
        "to_dict",
        "event_to_json",
        "repr",
        "repr-event",
    ],
)
def test_encodings_are_those_of_the_eager_entry(encode: Any) -> None:
    """msgspec's encoders, to_dict, event_to_json and repr give exactly what they gave."""
    entry = lazy()
    assert encode(entry) == encode(eager())
    assert unread(entry) or encode is Entry.to_dict
    assert encode(entry) == encode(eager())  # and again, once decoded


def test_encoded_entries_decode_back_equal() -> None:
    """msgspec's encoding of a lazy entry decodes back into an equal Entry, extra included."""
    entry = lazy()
    back = msgspec.json.decode(msgspec.json.encode(entry), type=Entry)
    assert back == entry and back.extra == UNDOCUMENTED
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(entry), type=Entry) == eager()
    assert msgspec.convert(msgspec.to_builtins(entry), Entry) == eager()
    assert Entry.from_dict(entry.to_dict()) == eager()
    again = parse_message(event_to_json(Event(id=42, entry=lazy())))
    assert isinstance(again, Event) and again.entry == eager()


def test_equality() -> None:
    """Two entries from the same JSON, and one built by hand, are equal; a difference shows."""
    hand = Entry(
        id=42,
        created=eager().created,
        pid=DOCUMENTED["pid"],
        result=Result.EXACT,
        confidence=88.1,
        age=31,
        sex=eager().sex,
        mood=Mood.HAPPINESS,
        liveness=Liveness.PASSED,
        source=Named(id=3, name="Entrance"),
        face_image="https://x/f.jpg",
        extra=dict(UNDOCUMENTED),
    )
    a, b = lazy(), lazy()
    assert a == b and unread(a) and unread(b)
    assert a == hand and hand == a
    assert lazy() == eager() and eager() == lazy()
    read = lazy()
    read.extra  # noqa: B018 - decoded on one side only
    assert read == lazy() and lazy() == read
    assert not (a != b)
    other = Entry(**{**msgspec.structs.asdict(hand), "extra": {**UNDOCUMENTED, "tags": []}})
    assert lazy() != other and other != lazy()
    assert lazy() != msgspec.structs.replace(eager(), age=30)
    assert parse_message(FRAME) == parse_message(FRAME)


def test_copy_deepcopy_pickle() -> None:
    """copy is shallow as before (extra shared), deepcopy and pickle are independent."""
    for make in (lazy, eager):
        original = make()
        shallow = copy.copy(original)
        assert shallow == eager()
        shallow.extra["tags"].append("x")
        assert original.extra["tags"][-1] == "x"  # shared, as a struct's copy always was

        original = make()
        deep = copy.deepcopy(original)
        assert deep == eager() and type(msgspec.structs.asdict(deep)["extra"]) is dict
        deep.extra["tags"].append("x")
        assert original.extra == UNDOCUMENTED

        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            original = make()
            back = pickle.loads(pickle.dumps(original, protocol))
            assert back == eager() and type(msgspec.structs.asdict(back)["extra"]) is dict
            event = pickle.loads(pickle.dumps(Event(id=42, entry=make()), protocol))
            assert event == Event(id=42, entry=eager())


def test_structs_replace() -> None:
    """replace() keeps the unknown fields unless it replaces them."""
    changed = msgspec.structs.replace(lazy(), age=30)
    assert changed.age == 30 and changed.extra == UNDOCUMENTED
    assert msgspec.json.encode(changed) == msgspec.json.encode(
        msgspec.structs.replace(eager(), age=30)
    )
    assert msgspec.structs.replace(lazy(), extra={}).extra == {}
    event = parse_message(FRAME)
    assert isinstance(event, Event)
    marked = msgspec.structs.replace(event, backfilled=True)
    assert marked.entry == eager() and marked.backfilled


def test_asdict_hands_out_a_read_only_mapping() -> None:
    """asdict/astuple give the field's value as it is: before a read, a mapping of the same."""
    value = msgspec.structs.asdict(lazy())["extra"]
    assert value == UNDOCUMENTED and dict(value) == UNDOCUMENTED
    assert value["zone"] == UNDOCUMENTED["zone"] and "tags" in value and len(value) == 10
    assert value.get("missing") is None and list(value.keys()) == list(UNDOCUMENTED)
    assert str(value) == str(UNDOCUMENTED) and bool(value)
    assert msgspec.structs.astuple(lazy())[-1] == UNDOCUMENTED
    with pytest.raises(TypeError):
        hash(value)


def test_wrong_typed_known_field_is_kept_with_the_unknown_ones() -> None:
    """An age of the wrong type does not lose the entry: it lands in extra, as before."""
    data = {**DATA, "age": "thirty"}
    event = parse_message(json.dumps({"id": 42, "data": data}))
    assert isinstance(event, Event)
    assert event.entry.age is None and event.entry.mood is Mood.HAPPINESS
    assert event.entry.extra == {**UNDOCUMENTED, "age": "thirty"}
    assert event.entry == Entry.from_dict(data)


def test_unknown_enum_value_is_kept_with_the_unknown_ones() -> None:
    """A result code the module does not know yet lands in extra, as before."""
    data = {**DATA, "result": "brand-new-kind", "liveness": "maybe"}
    event = parse_message(json.dumps({"id": 42, "data": data}))
    assert isinstance(event, Event)
    assert event.entry.result is None and event.entry.liveness is None
    assert event.entry.extra == {**UNDOCUMENTED, "result": "brand-new-kind", "liveness": "maybe"}
    assert event.entry == Entry.from_dict(data)


def test_unknown_keys_in_a_camera_and_beside_data() -> None:
    """A source with more keys is kept whole in extra; keys beside id/data are ignored."""
    data = {**DATA, "source": {"id": 3, "name": "Entrance", "floor": 2}}
    event = parse_message(json.dumps({"id": 42, "data": data}))
    assert isinstance(event, Event)
    assert event.entry.source is None and event.entry.extra["source"]["floor"] == 2
    beside = parse_message(json.dumps({"id": 42, "data": DATA, "meta": {"v": 2}}))
    assert beside == parse_message(FRAME)


def test_a_key_named_like_the_wire_name_of_extra_is_an_unknown_field() -> None:
    """The platform sending "neuroio:extra" itself, among unknown fields: kept as a field."""
    data = {**DATA, "neuroio:extra": {"x": 1}}
    event = parse_message(json.dumps({"id": 42, "data": data}))
    assert isinstance(event, Event)
    assert event.entry == Entry.from_dict(data)
    assert event.entry.extra["neuroio:extra"] == {"x": 1}


def test_extra_nested_near_the_limit_reads_from_a_deep_stack() -> None:
    """A field nested as deep as the decoder allows is read even from deep in the stack."""

    def frame_of(depth: int) -> str:
        return '{"id":1,"data":{"age":3,"deep":' + "[" * depth + "]" * depth + "}}"

    depth = 1
    while True:  # the deepest unknown field an event can carry and still be parsed here
        try:
            parse_message(frame_of(depth + 1))
        except MessageError:
            break
        depth += 1
    frame = frame_of(depth)
    event = parse_message(frame)
    assert isinstance(event, Event)

    def nested(levels: int) -> Any:
        if levels:
            return nested(levels - 1)
        with pytest.raises(RecursionError):  # the decode alone would not fit here
            msgspec.json.decode(frame)
        return event.entry.extra

    value = nested(min(200, sys.getrecursionlimit() // 4))
    assert value.keys() == {"deep"}


def test_string_enums_print_as_their_values() -> None:
    """str(), format(), f-strings and %s give the value; repr names the member."""
    for enum_type in (Result, Mood, Liveness):
        for member in enum_type:
            assert str(member) == member.value
            assert f"{member}" == member.value
            assert format(member) == member.value
            assert format(member, ">12") == format(member.value, ">12")
            assert "%s" % member == member.value  # noqa: UP031 - the old style, too
            assert repr(member) == f"<{enum_type.__name__}.{member.name}: {member.value!r}>"
            assert member == member.value and enum_type(member.value) is member
    assert str(Result.EXACT) == "exact"
    assert msgspec.json.encode(Result.EXACT) == b'"exact"'
    assert msgspec.json.decode(b'"ha"', type=Result) is Result.HA


def test_recording_keeps_the_unknown_fields(tmp_path: Path) -> None:
    """A recorded frame with unknown fields replays to the same entry."""
    path = tmp_path / "rec.jsonl"
    with RecordingWriter(path) as writer:
        writer.write(FRAME, 1.0)
        writer.write(FRAME, 2.0, backfilled=True)
    frames = list(read_recording(path))
    assert [f.frame for f in frames] == [FRAME, FRAME]
    for recorded in frames:
        event = parse_message(recorded.frame)
        assert isinstance(event, Event) and event.entry == eager()


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_unknown_keys = st.text(max_size=8).filter(lambda k: k not in Entry.__struct_fields__)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.dictionaries(_unknown_keys, _values, min_size=1, max_size=5),
    st.sampled_from([{}, DOCUMENTED, {"age": 3, "result": "ha"}, {"sex": 0, "pan": 1.5}]),
    st.booleans(),
)
def test_any_unknown_fields_behave_as_if_decoded_at_once(
    unknown: dict[str, Any], known: dict[str, Any], known_first: bool
) -> None:
    """For any unknown fields, the lazy entry encodes, prints and compares as the eager one."""
    data = {**known, **unknown} if known_first else {**unknown, **known}
    frame = json.dumps({"id": 1, "data": data})
    event = parse_message(frame)
    assert isinstance(event, Event)
    reference = Entry.from_dict(json.loads(frame)["data"])
    for encode in (msgspec.json.encode, msgspec.to_builtins, repr):
        assert encode(parse_message(frame).entry) == encode(reference)  # type: ignore[union-attr]
    assert event.entry == reference and event.entry.extra == reference.extra


def same_as_parse_message(message: Any, frame: str | bytes, *, read: bool = False) -> None:
    """``message`` is what parse_message makes of ``frame``, in every encoding.

    ``read``: its extra may have been read already (else it is unread exactly when
    parse_message's is).
    """
    reference = parse_message(frame)
    assert message == reference
    if isinstance(reference, Event):
        assert isinstance(message, Event)
        if not read:
            assert unread(message.entry) == unread(reference.entry)
        for encode in (msgspec.json.encode, msgspec.to_builtins, repr):
            assert encode(message) == encode(parse_message(frame))


def learned(frame: str = FRAME) -> StreamParser:
    """A parser that has seen one event with unknown fields (the strict attempt refused)."""
    parser = StreamParser()
    same_as_parse_message(parser.refused(frame), frame, read=True)
    assert parser.lax_first
    return parser


def test_stream_parser_decodes_lax_first_once_unknown_fields_came() -> None:
    """After one entry with unknown fields, the next are decoded once, lax, and unread."""
    parser = learned()
    for frame in (FRAME, FRAME.replace('"visit_count":17', '"visit_count":18')):
        event = parser.lax(frame)
        same_as_parse_message(event, frame)
        assert isinstance(event, Event) and unread(event.entry)
        unknown = {k: v for k, v in json.loads(frame)["data"].items() if k in UNDOCUMENTED}
        assert event.entry.extra == unknown
        assert event.entry == Entry.from_dict(json.loads(frame)["data"])


def test_stream_parser_gives_clean_entries_their_plain_extra() -> None:
    """A clean frame in lax-first mode is exactly parse_message's: no unread, empty extra."""
    parser = learned()
    event = parser.lax(CLEAN_FRAME)
    same_as_parse_message(event, CLEAN_FRAME)
    assert isinstance(event, Event) and not unread(event.entry)
    assert b"neuroio:extra" not in msgspec.json.encode(event)


def test_stream_parser_without_the_marker_still_keeps_unknown_fields() -> None:
    """Unknown fields other than the remembered one are found by the strict decoder."""
    parser = learned(json.dumps({"id": 1, "data": {"age": 3, "only_here": [1]}}))
    for data in (DATA, {"age": 4, "elsewhere": None}, {**DOCUMENTED, "x": {"only_here": 1}}):
        frame = json.dumps({"id": 2, "data": data})
        event = parser.lax(frame)
        same_as_parse_message(event, frame)
        assert isinstance(event, Event) and event.entry == Entry.from_dict(data)


def test_stream_parser_goes_back_to_strict_first_on_a_clean_stream() -> None:
    """After _MISSES frames in a row without the marker, strict first again."""
    parser = learned()
    for _ in range(_MISSES - 1):
        parser.lax(CLEAN_FRAME)
    assert parser.lax_first
    parser.lax(FRAME)  # the marker: the count starts again
    for _ in range(_MISSES):
        assert parser.lax_first
        same_as_parse_message(parser.lax(CLEAN_FRAME), CLEAN_FRAME)
    assert not parser.lax_first


def test_stream_parser_without_a_usable_key_stays_strict_first() -> None:
    """Unknown keys that cannot be a marker: strict first, a new try only now and then."""
    frame = '{"id": 1, "data": {"age": 3, "name": "x", "gr\\u006fups": 1}}'
    parser = StreamParser()
    for _ in range(3):
        same_as_parse_message(parser.refused(frame), frame, read=True)
        assert not parser.lax_first
    event = parser.refused(frame)  # not tried again yet: extra left unread
    assert isinstance(event, Event) and unread(event.entry)
    same_as_parse_message(event, frame)


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps({"id": 1, "data": {**DATA, "age": "thirty"}}),
        json.dumps({"id": 1, "data": {**DATA, "result": "brand-new-kind"}}),
        json.dumps({"id": 1, "data": {**DATA, "neuroio:extra": {"x": 1}}}),
        json.dumps({"id": 1, "data": {**DOCUMENTED, "neuroio:extra": {"groups": 1}}}),
        json.dumps({"id": 1, "data": {**DOCUMENTED, "source": {"id": 1, "groups": 2}}}),
        json.dumps({"id": 1, "data": {**DOCUMENTED, "face_image": '"groups": [1]'}}),
        json.dumps({"id": 1, "data": DOCUMENTED, "groups": []}),
        json.dumps({"id": 1, "data": {**DATA, "source": {"id": 3, "name": "x"}}}),
        '{"id": 1, "data": {"gr\u006fups": 1}}',
        '{"auth": "ok"}',
        "not json",
        FRAME.encode(),
        Backfilled(FRAME),
    ],
    ids=[
        "wrong-type",
        "new-enum",
        "wire-name-and-unknown",
        "wire-name-holding-the-marker",
        "camera-with-the-marker",
        "marker-inside-a-string",
        "marker-beside-data",
        "plain",
        "escaped-key",
        "control",
        "garbage",
        "bytes",
        "backfilled",
    ],
)
def test_stream_parser_in_lax_first_mode_is_parse_message(frame: Any) -> None:
    """Whatever comes while lax first, the result is parse_message's."""
    parser = learned()  # the marker is '"groups":'
    try:
        expected = parse_message(frame)
    except Exception as exc:
        with pytest.raises(type(exc)):
            parser.lax(frame)
        return
    same_as_parse_message(parser.lax(frame), frame)
    assert expected is not None


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.dictionaries(_unknown_keys | st.just("m"), _values, max_size=4),
    st.sampled_from([{}, DOCUMENTED, {"age": 3, "face_image": '{"m": 1}'}]),
    st.sampled_from([None, (",", ":"), (", ", ": ")]),
)
def test_stream_parser_agrees_with_parse_message_on_any_entry(
    unknown: dict[str, Any], known: dict[str, Any], separators: tuple[str, str] | None
) -> None:
    """With the marker '"m":', any entry (marker or not, nested or not) parses the same."""
    parser = learned(json.dumps({"id": 1, "data": {"m": 1}}))
    data = {**known, **unknown}
    frame = json.dumps({"id": 1, "data": data}, separators=separators)
    same_as_parse_message(parser.lax(frame), frame)


async def test_listener_iterator_keeps_unknown_fields() -> None:
    """The typed iterator yields every event, with unknown fields, wrong types, new values."""
    async with Emulator(tokens=[TOKEN], seed=3) as emu:
        async with EventListener(TOKEN, url=emu.url) as events:
            await emu.wait_for_clients(1)
            sent = [
                await emu.emit(**UNDOCUMENTED),
                await emu.emit(),
                await emu.emit(age="thirty", tags=["x"]),
                await emu.emit(result="brand-new-kind", groups=[]),
                await emu.emit(**UNDOCUMENTED),
            ]
            got: list[Event] = []

            async def receive() -> None:
                async for event in events:
                    got.append(event)
                    if len(got) == len(sent):
                        return

            await asyncio.wait_for(receive(), 10)
    assert [e.id for e in got] == [s["id"] for s in sent]
    for event, entry in zip(got, sent, strict=True):
        reference = Entry.from_dict(json.loads(json.dumps(entry)))
        assert msgspec.json.encode(event.entry) == msgspec.json.encode(reference)
        assert event.entry == reference
    assert got[0].entry.extra == UNDOCUMENTED and got[1].entry.extra == {}
    assert got[2].entry.extra == {"age": "thirty", "tags": ["x"]}
    assert got[3].entry.extra == {"result": "brand-new-kind", "groups": []}
