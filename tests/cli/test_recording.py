"""Recordings: writing with :class:`RecordingWriter`, reading with :func:`read_recording`."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from neuroio.exceptions import ConfigurationError
from neuroio.recording import RecordedFrame, RecordingWriter, encode_record, read_recording


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
