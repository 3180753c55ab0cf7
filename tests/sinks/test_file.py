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


def entry(i: int, **data: object) -> SpooledEvent:
    return SpooledEvent(i, i, json.dumps({"id": i, "data": data}).encode(), 0.0)


def ids_in(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


async def test_a_dated_path_is_a_daily_rotation(tmp_path: Path) -> None:
    """{created:%Y-%m-%d} in the path: each event goes to its own day's file, in order; the
    directories are created; a batch spanning midnight writes both files."""
    sink = from_uri(f"file:{tmp_path}/logs/{{created:%Y-%m-%d}}.jsonl")
    await sink.start()
    await sink.send(
        [
            entry(1, created="2026-11-30T23:59:59.900Z"),
            entry(2, created="2026-12-01T00:00:00.100Z"),
            entry(3, created="2026-11-30T23:59:59.950Z"),
        ]
    )
    await sink.send([entry(4, created="2026-12-01T08:00:00Z"), entry(5)])
    await sink.aclose()
    assert ids_in(tmp_path / "logs" / "2026-11-30.jsonl") == [1, 3]
    assert ids_in(tmp_path / "logs" / "2026-12-01.jsonl") == [2, 4]
    assert ids_in(tmp_path / "logs" / "unknown.jsonl") == [5]


async def test_a_value_cannot_leave_the_directory(tmp_path: Path) -> None:
    """A rendered value holds no '/' and no '..': a camera named '../../etc' stays inside."""
    sink = from_uri(f"file:{tmp_path}/by-camera/{{source.name}}.jsonl")
    await sink.start()
    await sink.send(
        [entry(1, source={"name": "../../etc/passwd"}), entry(2, source={"name": ".."})]
    )
    await sink.aclose()
    written = sorted(p.name for p in (tmp_path / "by-camera").iterdir())
    assert written == ["_.jsonl", "____etc_passwd.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-camera"]


async def test_open_files_are_bounded_and_idle_ones_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_OPEN files stay open (the least recently written closed first); a file
    not written for IDLE_CLOSE seconds is closed at the next write."""
    import neuroio.sinks.file as file_module

    monkeypatch.setattr(file_module, "MAX_OPEN", 2)
    sink = FileSink(tmp_path / "{source.id}.jsonl")
    await sink.start()
    for i in range(1, 5):
        await sink.send([entry(i, source={"id": i})])
    assert sink.open_files == [str(tmp_path / "3.jsonl"), str(tmp_path / "4.jsonl")]
    await sink.send([entry(5, source={"id": 1})])  # reopened and appended
    assert sink.open_files == [str(tmp_path / "4.jsonl"), str(tmp_path / "1.jsonl")]
    monkeypatch.setattr(file_module, "IDLE_CLOSE", 0.0)
    await sink.send([entry(6, source={"id": 2})])
    assert sink.open_files == []
    await sink.aclose()
    assert ids_in(tmp_path / "1.jsonl") == [1, 5]
    assert ids_in(tmp_path / "2.jsonl") == [2, 6]


async def test_a_templated_file_is_repaired_when_reopened(tmp_path: Path) -> None:
    """A torn last line in a file a template names is cut when the sink first writes it."""
    (tmp_path / "7.jsonl").write_bytes(b'{"id":1,"data":{}}\n{"id":2,"da')
    sink = FileSink(tmp_path / "{source.id}.jsonl")
    await sink.start()
    await sink.send([entry(2, source={"id": 7})])
    await sink.aclose()
    assert ids_in(tmp_path / "7.jsonl") == [1, 2]


def test_templates_in_the_path_are_parsed_when_the_sink_is_built() -> None:
    """A bad template is a ConfigurationError naming the sink; percent-encoded braces count."""
    with pytest.raises(ConfigurationError, match=r"sink file:/x/\{source\.id\.jsonl: path"):
        from_uri("file:/x/{source.id.jsonl")
    assert from_uri("file:/x/%7Bsource.id%7D.jsonl").name == "file:/x/{source.id}.jsonl"
    assert isinstance(sink := from_uri("file:/x/{pid}.jsonl"), FileSink)
    assert not sink.template.is_static
