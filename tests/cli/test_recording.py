"""Recordings: writing with :class:`RecordingWriter`, reading with :func:`read_recording`."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroio import _redact
from neuroio.emulator import Emulator
from neuroio.exceptions import ConfigurationError
from neuroio.recording import (
    RecordedFrame,
    RecordingWriter,
    encode_record,
    read_recording,
    redact_frame,
)

from .conftest import TOKEN, StartCli


def test_round_trip_text_binary_and_backfilled(tmp_path: Path) -> None:
    """Text, binary and recovered frames come back as written, in order, with their times."""
    path = tmp_path / "a.rec"
    with RecordingWriter(path) as writer:
        writer.write('{"auth":"ok"}', 100.0)
        writer.write(b"\xff\x00binary", 100.5)
        writer.write('{"id":1,"data":{"x":"é\\n"}}', 101.25, backfilled=True)
        assert writer.frames == 3
    assert list(read_recording(path)) == [
        RecordedFrame(100.0, '{"auth":"ok"}'),
        RecordedFrame(100.5, b"\xff\x00binary"),
        RecordedFrame(101.25, '{"id":1,"data":{"x":"é\\n"}}', backfilled=True),
    ]


def test_lines_follow_the_documented_format() -> None:
    """One JSON object per line: t and frame, or t and frame_b64."""
    assert json.loads(encode_record("{}", 1.5)) == {"t": 1.5, "frame": "{}"}
    assert json.loads(encode_record(b"\x01\x02", 2.0)) == {"t": 2.0, "frame_b64": "AQI="}
    assert encode_record("{}", 1.0).endswith(b"}\n")


def test_writer_appends_and_keeps_the_file_private(tmp_path: Path) -> None:
    """A second writer appends; a new file is readable by its owner only."""
    path = tmp_path / "b.rec"
    for t in (1.0, 2.0):
        with RecordingWriter(path) as writer:
            writer.write("{}", t)
    assert [f.t for f in read_recording(path)] == [1.0, 2.0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_writer_reports_an_unwritable_path(tmp_path: Path) -> None:
    """A path that cannot be opened is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="missing"):
        RecordingWriter(tmp_path / "missing" / "c.rec")


def test_a_cut_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A recorder killed mid-write leaves half a line: the frames before it are kept."""
    path = tmp_path / "d.rec"
    path.write_bytes(encode_record("{}", 1.0) + b'{"t": 2.0, "fra')
    with caplog.at_level(logging.WARNING, logger="neuroio.recording"):
        assert [f.t for f in read_recording(path)] == [1.0]
    assert "incomplete last record" in caplog.text


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"frame": "{}"}', "'t'"),
        (b'{"t": true, "frame": "{}"}', "'t'"),
        (b'{"t": 1}', "'frame'"),
        (b'{"t": 1, "frame_b64": "@@"}', "base64"),
    ],
)
def test_a_bad_line_in_the_middle_is_an_error(tmp_path: Path, line: bytes, reason: str) -> None:
    """Anything but a record before the last line is a ConfigurationError naming the line."""
    path = tmp_path / "e.rec"
    path.write_bytes(encode_record("{}", 1.0) + line + b"\n" + encode_record("{}", 2.0))
    with pytest.raises(ConfigurationError, match=f"line 2: .*{reason}"):
        list(read_recording(path))


def test_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "f.rec"
    path.write_bytes(b"\n" + encode_record("{}", 1.0) + b"  \n\n")
    assert len(list(read_recording(path))) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        list(read_recording(tmp_path / "nope.rec"))


# ---------------------------------------------------------------- redaction

SECRET = "tok-rec-9b1f0c7d2e4a"


@pytest.fixture
def guarded() -> Iterator[str]:
    """:data:`SECRET` registered with the redaction registry for the test's duration."""
    _redact.guard(SECRET)
    yield SECRET
    _redact.release(SECRET)


def test_redact_frame_text_binary_and_escaped(guarded: str) -> None:
    """Every registered token goes, in text, behind JSON escapes, and in binary frames
    whose other bytes (not UTF-8) come through unchanged; clean frames are untouched."""
    text = json.dumps({"error": f"token {guarded} is not allowed"}, separators=(",", ":"))
    assert redact_frame(text) == '{"error":"token *** is not allowed"}'
    escaped = json.dumps({"error": f"bad {guarded}"}).replace("t", "\\u0074")
    assert guarded not in json.loads(redact_frame(escaped))["error"]
    assert json.loads(redact_frame(escaped)) == {"error": "bad ***"}
    binary = b"\xff\x00" + guarded.encode() + b"\xc3\x28"
    assert redact_frame(binary) == b"\xff\x00***\xc3\x28"
    clean = '{"id":1,"data":{"name":"\\u00e9"}}'
    assert redact_frame(clean) == clean  # escapes kept as sent when nothing is redacted
    assert redact_frame(b"\xff\xfe") == b"\xff\xfe"


def test_redact_frame_survives_a_frame_too_deep_to_decode(guarded: str) -> None:
    """A hostile frame nested 100 000 deep with escapes in it is still redacted by the plain
    search, and recording it raises nothing."""
    frame = "[" * 100_000 + json.dumps(f"\\ {guarded}") + "]" * 100_000
    clean = redact_frame(frame)
    assert isinstance(clean, str) and guarded not in clean and "***" in clean
    assert guarded.encode() not in encode_record(frame, 1.0)


def test_encode_record_redacts_before_writing(guarded: str, tmp_path: Path) -> None:
    """What RecordingWriter writes holds no registered token, in text or base64 form."""
    path = tmp_path / "r.rec"
    with RecordingWriter(path) as writer:
        writer.write(json.dumps({"error": guarded}, separators=(",", ":")), 1.0)
        writer.write(guarded.encode() + b"\xff", 2.0)
    assert guarded.encode() not in path.read_bytes()
    frames = [f.frame for f in read_recording(path)]
    assert frames == ['{"error":"***"}', b"***\xff"]


async def test_listen_record_never_writes_the_token(
    cli: StartCli, emulator: Emulator, token_file: Path, tmp_path: Path
) -> None:
    """listen --record against a server whose frames echo the token (an error message, a
    binary frame, a JSON-escaped copy): the token is nowhere in the recording, while the
    frames themselves are all recorded."""
    recording = tmp_path / "leak.rec"
    recorder = await cli(
        "listen", "--url", emulator.url, "--token-file", str(token_file),
        "--record", str(recording), "--count", "1",
    )  # fmt: skip
    await emulator.wait_for_clients(1)
    await emulator.send_raw(json.dumps({"error": f"Token {TOKEN} is rate limited"}))
    await emulator.send_raw(b"\x00echo:" + TOKEN.encode() + b"\xff")
    escaped = json.dumps({"error": f"again {TOKEN}"}).replace("t", "\\u0074")
    await emulator.send_raw(escaped)
    await emulator.emit()  # the --count 1 event, after the echoes
    assert await recorder.finish() == 0
    frames = [f.frame for f in read_recording(recording)]
    assert len(frames) == 5  # the AUTH answer, three echoes, the event
    raw = recording.read_bytes()
    assert TOKEN.encode() not in raw
    for frame in frames:
        data = frame if isinstance(frame, bytes) else frame.encode()
        assert TOKEN.encode() not in data
        if isinstance(frame, str):
            assert TOKEN not in json.dumps(json.loads(frame), ensure_ascii=False)
    assert b"\x00echo:***\xff" in frames
    assert json.loads(frames[1]) == {"error": "Token *** is rate limited"}
    assert json.loads(frames[-1])["id"] == 1
