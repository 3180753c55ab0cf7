"""The protocol layer, with no socket: encoding, classification, typed parsing."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import msgspec
import pytest

from neuroio import (
    AuthOk,
    Event,
    Liveness,
    MessageError,
    Mood,
    Pong,
    Result,
    ServerError,
    Sex,
    UnknownMessage,
    parse_message,
)
from neuroio._protocol.frames import (
    EVENT_PREFIX,
    Kind,
    classify,
    encode_auth,
    encode_ping,
    error_text,
    event_key,
    event_to_json,
    is_event_id,
)


def test_auth_frame_matches_protocol() -> None:
    """AUTH is {"action": "AUTH", "data": {"token": ...}} with the token as given."""
    assert json.loads(encode_auth('to"ken')) == {"action": "AUTH", "data": {"token": 'to"ken'}}


def test_ping_frame_matches_protocol() -> None:
    """PING is {"action": "PING"}."""
    assert json.loads(encode_ping()) == {"action": "PING"}


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ('{"auth": "ok"}', Kind.AUTH_OK),
        ('{"auth": "denied"}', Kind.AUTH_REJECTED),
        ('{"PING": "PONG"}', Kind.PONG),
        ('{"PING": "nope"}', Kind.PONG),
        ('{"error": "Invalid token"}', Kind.ERROR),
        ('{"id": 1, "data": {}}', Kind.EVENT),
        ('{"data": {}, "id": 1}', Kind.EVENT),
        ('{\n  "id": 1,\n  "data": {}\n}', Kind.EVENT),
        ("{}", Kind.UNKNOWN),
        ('{"other": 1}', Kind.UNKNOWN),
        ("[]", Kind.MALFORMED),
        ("null", Kind.MALFORMED),
        ("not json", Kind.MALFORMED),
        ('{"id": 1', Kind.MALFORMED),
        ('{"id":1', Kind.MALFORMED),
        ("", Kind.MALFORMED),
        ("\ud800", Kind.MALFORMED),
        (b'{"id": 1, "data": {}}', Kind.BINARY),
        (b"\xff\xfe", Kind.BINARY),
    ],
)
def test_classify(raw: str | bytes, kind: Kind) -> None:
    """Frames are told apart by their keys; nothing raises."""
    assert classify(raw) is kind


def test_parse_control_messages() -> None:
    """The three control answers become typed messages."""
    assert parse_message('{"auth": "ok"}') == AuthOk()
    assert parse_message('{"PING": "PONG"}') == Pong("PONG")
    assert parse_message('{"PING": "PONG"}').ok  # type: ignore[union-attr]
    assert not Pong("PANG").ok
    assert parse_message('{"error": "Invalid token"}') == ServerError("Invalid token")
    assert parse_message('{"auth": "no"}') == ServerError("authentication answer 'no'")
    assert parse_message(b'{"error": {"code": 1}}') == ServerError('{"code":1}')


def test_parse_event_typed_fields() -> None:
    """An event's entry gets typed fields: enums, datetimes, nested objects."""
    frame: dict[str, Any] = {
        "id": 42,
        "data": {
            "id": 42,
            "created": "2019-07-29T13:53:27.306Z",
            "pid": "b0a7c2a4-0000-4000-8000-000000000001",
            "pid_created": "2019-07-29T13:50:00",
            "result": "exact",
            "confidence": 88.1,
            "age": 31,
            "sex": 1,
            "mood": "happiness",
            "liveness": "passed",
            "source": {"id": 3, "name": "Entrance"},
            "space": {"id": 1, "name": "HQ"},
            "face_image": "https://x/f.jpg",
            "facesize": 120,
        },
    }
    event = parse_message(json.dumps(frame))
    assert isinstance(event, Event)
    entry = event.entry
    assert event.id == 42 and not event.backfilled
    assert entry.created == datetime(2019, 7, 29, 13, 53, 27, 306000, tzinfo=timezone.utc)
    assert entry.pid_created is not None and entry.pid_created.tzinfo is None
    assert entry.result is Result.EXACT and entry.mood is Mood.HAPPINESS
    assert entry.liveness is Liveness.PASSED and entry.sex is Sex.FEMALE
    assert entry.source is not None and entry.source.name == "Entrance"
    assert entry.facesize == 120.0
    assert entry.extra == {}
    assert json.loads(event_to_json(event)) == frame | {
        "data": frame["data"] | {"created": "2019-07-29T13:53:27.306000Z", "facesize": 120.0}
    }


def test_unknown_fields_and_values_are_kept() -> None:
    """Fields the module does not know, and values that do not fit, land in extra."""
    event = parse_message(
        '{"id": 7, "data": {"result": "brand-new-kind", "age": "thirty", "bbox": [1, 2],'
        ' "mood": ["x"], "sex": true, "confidence": 80}}'
    )
    assert isinstance(event, Event)
    entry = event.entry
    assert entry.result is None and entry.age is None and entry.mood is None
    assert entry.sex is None
    assert entry.confidence == 80.0
    assert entry.extra == {
        "result": "brand-new-kind",
        "age": "thirty",
        "bbox": [1, 2],
        "mood": ["x"],
        "sex": True,
    }
    assert entry.to_dict()["bbox"] == [1, 2]


def test_unknown_shape_is_kept_not_raised() -> None:
    """A JSON object of another shape is an UnknownMessage holding the data."""
    assert parse_message('{"hello": [1]}') == UnknownMessage({"hello": [1]})


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "nope",
        "[1, 2]",
        "3",
        '"text"',
        '{"id": "x", "data": {}}',
        '{"id": 1, "data": 5}',
        '{"id": true, "data": {}}',
        '{"id": 1}',
        '{"id":1,"data":}',
        b"\xff",
    ],
)
def test_garbage_raises_message_error(raw: str | bytes) -> None:
    """Anything that is not a NeuroIO message raises MessageError, nothing else."""
    with pytest.raises(MessageError):
        parse_message(raw)


def test_message_error_is_a_value_error() -> None:
    """MessageError can be caught as ValueError, like json's errors."""
    assert issubclass(MessageError, ValueError)
    with pytest.raises(ValueError):
        parse_message("{")


def test_typed_structs_encode_like_the_wire() -> None:
    """Entries encode back to the platform's field names and values."""
    event = parse_message('{"id": 1, "data": {"result": "ha", "sex": 0, "mood": "fear"}}')
    assert isinstance(event, Event)
    assert msgspec.json.decode(event_to_json(event)) == {
        "id": 1,
        "data": {"result": "ha", "sex": 0, "mood": "fear"},
    }


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0, True),
        (42, True),
        (-(2**63), True),
        (2**63 - 1, True),
        (2**63, False),
        (-(2**63) - 1, False),
        (True, False),
        (False, False),
        (1.0, False),
        ("1", False),
        (None, False),
    ],
)
def test_is_event_id(value: object, ok: bool) -> None:
    """An event id is an int, never a bool, within signed 64 bits."""
    assert is_event_id(value) is ok


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('{"id":5,"data":{"created":"2024-01-01T00:00:00Z"}}', (5, "2024-01-01T00:00:00Z")),
        ('{"id":5,"data":{}}', (5, None)),
        ('{"id":5,"data":{"created":7}}', (5, None)),
        ('{"id":true,"data":{}}', None),
        ('{"id":4611686018427387904000,"data":{}}', None),
        ("nope", None),
    ],
)
def test_event_key(raw: str, key: tuple[int, str | None] | None) -> None:
    """The id and created text of an event frame; None when the id is not an event id."""
    assert event_key(raw) == key


def test_event_prefix_is_how_events_are_written() -> None:
    """The hot path's prefix is the compact form the platform writes events in."""
    event = parse_message('{"id": 1, "data": {}}')
    assert isinstance(event, Event)
    assert event_to_json(event).decode().startswith(EVENT_PREFIX)
    assert classify(EVENT_PREFIX + '1,"data":{}}') is Kind.EVENT


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ('{"error": "Invalid token"}', "Invalid token"),
        ('{"auth": "no"}', "authentication answer 'no'"),
        ("not json", "unreadable error message"),
        ('{"PING": "PONG"}', "Pong"),
    ],
)
def test_error_text(raw: str, text: str) -> None:
    """The text of an error frame for logs and errors; never raises."""
    assert error_text(raw) == text
