"""FileSink: JSON lines, appended and synced per batch; torn lines repaired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import FileSink, SpooledEvent, from_uri


def events(*ids: int) -> list[SpooledEvent]:
    return [SpooledEvent(i, i, b'{"id":%d,"data":{"x":"\\u00e9"}}' % i, 0.0) for i in ids]


async def test_appends_json_lines_across_restarts(tmp_path: Path) -> None:
    """Each event is one line; a second sink on the same file appends after the first."""
    path = tmp_path / "sub" / "events.jsonl"
    for ids in ((1, 2), (3,)):
        sink = from_uri(f"file:{path}")
        await sink.start()
        await sink.send(events(*ids))
        await sink.aclose()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[0])["data"]["x"] == "\u00e9"


async def test_torn_last_line_is_cut_on_start(tmp_path: Path) -> None:
    """A line left incomplete by a crash is removed before appending (it is re-sent whole)."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":1,"data":{}}\n{"id":2,"da')
    sink = FileSink(path)
    await sink.start()
    await sink.send(events(2))
    await sink.aclose()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 2]


async def test_torn_only_line_is_cut(tmp_path: Path) -> None:
    """A file holding nothing but a partial line is emptied."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":1')
    sink = FileSink(path)
    await sink.start()
    await sink.aclose()
    assert path.read_bytes() == b""


async def test_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    """file:- writes lines to standard output."""
    sink = from_uri("file:-")
    await sink.start()
    await sink.send(events(7))
    await sink.aclose()
    assert json.loads(capfd.readouterr().out)["id"] == 7


async def test_unwritable_path_fails_at_start(tmp_path: Path) -> None:
    """A path that cannot be opened is a SinkError at start-up."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = FileSink(blocker / "x.jsonl")
    with pytest.raises(SinkError, match="cannot open"):
        await sink.start()


def test_uri_forms() -> None:
    """file:PATH and file:///abs both name a path; an empty path is refused."""
    assert from_uri("file:///var/x.jsonl").name == "file:/var/x.jsonl"
    assert from_uri("file:rel.jsonl").name == "file:rel.jsonl"
    with pytest.raises(ConfigurationError):
        from_uri("file:")
