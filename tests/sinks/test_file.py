"""FileSink: JSON lines, appended and synced per batch; torn lines repaired; private files;
reopen (SIGHUP) and rotation by day or size."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from neuroio._io import write_all as real_write_all
from neuroio.bridge import Bridge
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import FileSink, MemorySink, SpooledEvent, from_uri
from neuroio.sinks.base import ConsumerGoneError
from neuroio.sinks.file import DEFAULT_KEEP, Rotation
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options
from ..helpers import until


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


# -- permissions -----------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask022() -> Iterator[None]:
    """A usual umask, which leaves files 0644 and directories 0755 unless the sink says."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_files_and_directories_are_private_under_umask_022(
    tmp_path: Path, umask022: None
) -> None:
    """The file, a file a template names, a file started by rotation: 0600; the
    directories the sink creates 0700; an existing directory is left as it is."""
    os.chmod(tmp_path, 0o755)
    fixed = FileSink(tmp_path / "a" / "b" / "events.jsonl", rotate=1)
    templated = from_uri(f"file:{tmp_path}/by-camera/{{source.id}}/events.jsonl")
    for sink in (fixed, templated):
        await sink.start()
        await sink.send([entry(1, source={"id": 1})])
        await sink.send([entry(2, source={"id": 2})])  # rotate=1: a new fixed file
        await sink.aclose()
    files = ["a/b/events.jsonl", "a/b/events.jsonl.1", "by-camera/1/events.jsonl"]
    files.append("by-camera/2/events.jsonl")
    assert [mode_of(tmp_path / f) for f in files] == [0o600] * 4
    dirs = ["a", "a/b", "by-camera", "by-camera/1", "by-camera/2"]
    assert [mode_of(tmp_path / d) for d in dirs] == [0o700] * 5
    assert mode_of(tmp_path) == 0o755


async def test_mode_0640_gives_a_group_reader_the_files_and_the_way_to_them(
    tmp_path: Path, umask022: None
) -> None:
    """?mode=0640: files 0640 (also after a reopen), created directories 0750, so that a
    member of the group can reach and read them, and nobody else."""
    path = tmp_path / "shared" / "events.jsonl"
    sink = from_uri(f"file:{path}?mode=0640")
    await sink.start()
    await sink.send(events(1))
    path.rename(tmp_path / "shared" / "old.jsonl")
    await sink.reopen()
    await sink.send(events(2))
    await sink.aclose()
    assert (mode_of(path), mode_of(tmp_path / "shared" / "old.jsonl")) == (0o640, 0o640)
    assert mode_of(tmp_path / "shared") == 0o750


async def test_an_existing_readable_file_is_restricted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file others can read (made by an older release, or by logrotate's create 0644)
    loses the bits beyond the sink's mode when opened, with a warning; its lines stay."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":1,"data":{}}\n')
    os.chmod(path, 0o664)
    sink = FileSink(path)
    with caplog.at_level(logging.WARNING, logger="neuroio.sinks"):
        await sink.start()
    await sink.send(events(2))
    await sink.aclose()
    assert mode_of(path) == 0o600
    assert ids_in(path) == [1, 2]
    assert any(
        "mode 664" in r.getMessage() and "mode 600" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("rw-r-----", "octal mode"),
        ("0o999", "octal mode"),
        ("", "octal mode"),
        ("1640", "0600 to 0660"),
        ("0644", "give others nothing"),
        ("0700", "no execute bit"),
        ("0440", "owner read and write"),
    ],
)
def test_a_mode_the_sink_cannot_use_is_one_line_naming_it(given: str, problem: str) -> None:
    """Not octal, beyond 0777, readable by others, executable, not writable by the owner."""
    with pytest.raises(ConfigurationError, match=f"mode must .*{problem}") as caught:
        from_uri(f"file:/tmp/x.jsonl?mode={given}")
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="mode must"):
        FileSink("/tmp/x.jsonl", mode=0o644)


@pytest.mark.parametrize("given", ["0640", "640", "0o640", "0660", "600"])
def test_group_modes_are_accepted_in_octal(given: str) -> None:
    sink = from_uri(f"file:/tmp/x.jsonl?mode={given}")
    assert isinstance(sink, FileSink)
    assert sink.mode == int(given.removeprefix("0o"), 8)


async def test_the_query_is_options_not_part_of_the_file_name(tmp_path: Path) -> None:
    """file:PATH?name=x writes PATH (not a file named 'PATH?name=x') and names the sink x."""
    sink = from_uri(f"file:{tmp_path}/events.jsonl?name=x&fsync=false")
    assert sink.name == "x"
    await sink.start()
    await sink.send(events(1))
    await sink.aclose()
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]


# -- reopen (SIGHUP) -------------------------------------------------------------------------


async def test_reopen_after_a_rename_writes_a_new_file(tmp_path: Path) -> None:
    """After logrotate renames the file, reopen(): the next lines go to a new file at the
    path, the renamed file keeps what was written before; a templated sink reopens too."""
    path = tmp_path / "events.jsonl"
    sink = FileSink(path)
    await sink.start()
    await sink.send(events(1, 2))
    path.rename(tmp_path / "events.jsonl.1")
    await sink.send(events(3))  # not reopened yet: still the renamed file
    await sink.reopen()
    assert path.exists()
    await sink.send(events(4))
    await sink.aclose()
    assert ids_in(tmp_path / "events.jsonl.1") == [1, 2, 3]
    assert ids_in(path) == [4]

    templated = FileSink(tmp_path / "cam" / "{source.id}.jsonl")
    await templated.start()
    await templated.send([entry(5, source={"id": 1})])
    (tmp_path / "cam" / "1.jsonl").rename(tmp_path / "cam" / "1.jsonl.1")
    await templated.reopen()
    assert templated.open_files == []
    await templated.send([entry(6, source={"id": 1})])
    await templated.aclose()
    assert ids_in(tmp_path / "cam" / "1.jsonl.1") == [5]
    assert ids_in(tmp_path / "cam" / "1.jsonl") == [6]


async def test_reopens_racing_writes_lose_split_or_repeat_no_line(tmp_path: Path) -> None:
    """Rename and reopen while batches are being written, many times: every batch is whole
    in exactly one file, and every line is there once."""
    path = tmp_path / "events.jsonl"
    sink = FileSink(path, fsync=False)
    await sink.start()
    sent: list[int] = []
    for round_ in range(40):
        batch = list(range(round_ * 100 + 1, round_ * 100 + 101))
        path.rename(tmp_path / f"events.jsonl.{round_}")
        sending, reopening = sink.send(events(*batch)), sink.reopen()
        await asyncio.gather(*((sending, reopening) if round_ % 2 else (reopening, sending)))
        sent += batch
    await sink.aclose()
    found: list[int] = []
    for file in tmp_path.iterdir():
        data = file.read_bytes()
        assert not data or data.endswith(b"\n"), file.name
        ids = ids_in(file)
        assert len(ids) % 100 == 0, f"{file.name} holds part of a batch"
        found += ids
    assert sorted(found) == sent


async def test_reopen_waits_for_the_write_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP while a batch is being written (held between its write and its fsync): the
    reopen waits, the batch completes and is synced in the renamed file, the next batch goes
    to the new file."""
    import neuroio._io as io_module  # the one place a batch is appended (append_whole)

    entered, release = threading.Event(), threading.Event()

    def held_write_all(fd: int, data: bytes) -> None:
        real_write_all(fd, data)
        entered.set()
        assert release.wait(10)

    path = tmp_path / "events.jsonl"
    sink = FileSink(path)
    await sink.start()
    monkeypatch.setattr(io_module, "write_all", held_write_all)
    sending = asyncio.create_task(sink.send(events(1, 2, 3)))
    assert await asyncio.to_thread(entered.wait, 10)
    path.rename(tmp_path / "events.jsonl.1")
    reopening = asyncio.create_task(sink.reopen())
    done, _ = await asyncio.wait({reopening}, timeout=0.2)
    assert not done, "reopen closed the file under a write in progress"
    release.set()
    await asyncio.wait_for(asyncio.gather(sending, reopening), 10)
    await sink.send(events(4))
    await sink.aclose()
    assert ids_in(tmp_path / "events.jsonl.1") == [1, 2, 3]
    assert ids_in(path) == [4]


async def test_a_failed_reopen_is_retried_by_the_next_send(tmp_path: Path) -> None:
    """When the path cannot be opened at reopen, SinkError; the send after it fails too
    (retried by the bridge) until the path can be opened again, then writes there."""
    directory = tmp_path / "logs"
    sink = FileSink(directory / "events.jsonl")
    await sink.start()
    await sink.send(events(1))
    directory.rename(tmp_path / "moved")
    directory.write_text("a file where the directory was")
    with pytest.raises(SinkError, match="cannot reopen"):
        await sink.reopen()
    with pytest.raises(SinkError, match="write failed"):
        await sink.send(events(2))
    directory.unlink()
    await sink.send(events(2))
    await sink.aclose()
    assert ids_in(tmp_path / "moved" / "events.jsonl") == [1]
    assert ids_in(directory / "events.jsonl") == [2]


# -- rotation --------------------------------------------------------------------------------


def line_of(i: int) -> bytes:
    return b'{"id":%d,"data":{}}' % i


async def test_size_rotation_keeps_n_old_files_and_never_splits_a_batch(tmp_path: Path) -> None:
    """?rotate=SIZE&keep=2: a batch that would take the file past the size starts a new
    one; at most 2 old files remain; what remains is the newest lines, in order, each once;
    no file is past the size."""
    path = tmp_path / "events.jsonl"
    sink = from_uri(f"file:{path}?rotate=100&keep=2")
    await sink.start()
    for i in range(1, 31):  # 19 to 20 bytes a line: 5 lines a file
        await sink.send([SpooledEvent(i, i, line_of(i), 0.0)])
    await sink.aclose()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
    ]
    kept = [ids_in(tmp_path / n) for n in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")]
    flat = [i for ids in kept for i in ids]
    assert flat == list(range(flat[0], 31)), "the newest lines, consecutive, in order"
    assert all(
        0 < (tmp_path / n).stat().st_size <= 100 for n in ("events.jsonl.1", "events.jsonl.2")
    )
    assert len(flat) >= 11  # two full old files and the current one


async def test_a_batch_bigger_than_the_size_is_one_file(tmp_path: Path) -> None:
    """A batch is never split: alone in a file if it is bigger than the size."""
    path = tmp_path / "events.jsonl"
    sink = FileSink(path, rotate="1KiB", keep=3)
    await sink.start()
    await sink.send(events(1))
    await sink.send(events(*range(2, 102)))
    await sink.send(events(102))
    await sink.aclose()
    assert ids_in(tmp_path / "events.jsonl.2") == [1]
    assert ids_in(tmp_path / "events.jsonl.1") == list(range(2, 102))
    assert ids_in(path) == [102]


async def test_lowering_keep_deletes_the_oldest_files(tmp_path: Path) -> None:
    """Old files numbered beyond keep (left by a larger keep) go at the next rotation;
    files not named PATH.N are never touched."""
    path = tmp_path / "events.jsonl"
    for n in range(1, 6):
        (tmp_path / f"events.jsonl.{n}").write_text(f"{n}\n")
    (tmp_path / "events.jsonl.1.gz").write_text("compressed by logrotate")
    (tmp_path / "events.jsonl.x").write_text("")
    path.write_bytes(line_of(0) + b"\n")
    sink = FileSink(path, rotate=10, keep=3)
    await sink.start()
    await sink.send(events(1))
    await sink.aclose()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.1.gz",
        "events.jsonl.2",
        "events.jsonl.3",
        "events.jsonl.x",
    ]
    assert ids_in(tmp_path / "events.jsonl.1") == [0]
    assert (tmp_path / "events.jsonl.2").read_text() == "1\n"  # the former .1, shifted
    assert ids_in(path) == [1]


class Clock:
    """An injectable time.time(): set :attr:`now` to move it."""

    def __init__(self, when: datetime.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime.datetime) -> None:
        self.now = when.timestamp()


async def test_daily_rotation_at_local_midnight(tmp_path: Path) -> None:
    """?rotate=daily: the first batch written after local midnight starts a new file; a
    day without events makes no empty file."""
    path = tmp_path / "events.jsonl"
    clock = Clock(datetime.datetime(2026, 12, 1, 23, 59, 59))
    sink = FileSink(path, rotate="daily", clock=clock)
    await sink.start()
    await sink.send(events(1))
    clock.set(datetime.datetime(2026, 12, 1, 23, 59, 59, 999000))
    await sink.send(events(2))
    clock.set(datetime.datetime(2026, 12, 2, 0, 0, 0, 1000))
    await sink.send(events(3))
    await sink.send(events(4))
    clock.set(datetime.datetime(2026, 12, 4, 9, 0))
    await sink.send(events(5))
    await sink.aclose()
    assert ids_in(tmp_path / "events.jsonl.2") == [1, 2]
    assert ids_in(tmp_path / "events.jsonl.1") == [3, 4]
    assert ids_in(path) == [5]


async def test_daily_rotation_after_a_restart_the_next_day(tmp_path: Path) -> None:
    """A bridge restarted after midnight: yesterday's file (by its last write) is rotated
    before the first line of today; today's file is appended to."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(line_of(1) + b"\n")
    yesterday = datetime.datetime(2026, 12, 1, 18, 0).timestamp()
    os.utime(path, (yesterday, yesterday))
    clock = Clock(datetime.datetime(2026, 12, 2, 8, 0))
    sink = FileSink(path, rotate="daily", clock=clock)
    await sink.start()
    await sink.send(events(2))
    await sink.aclose()
    assert ids_in(tmp_path / "events.jsonl.1") == [1]
    assert ids_in(path) == [2]

    today = datetime.datetime(2026, 12, 2, 8, 30).timestamp()
    os.utime(path, (today, today))
    sink = FileSink(path, rotate="daily", clock=clock)
    await sink.start()
    await sink.send(events(3))
    await sink.aclose()
    assert ids_in(path) == [2, 3]


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("100MiB", 100 * 2**20),
        ("512KiB", 512 * 2**10),
        ("1GiB", 2**30),
        ("4096", 4096),
        ("2MB", 2 * 10**6),
    ],
)
def test_rotate_takes_daily_or_a_size(given: str, size: int) -> None:
    sink = from_uri(f"file:/tmp/x.jsonl?rotate={given}&keep=3")
    assert isinstance(sink, FileSink)
    assert sink.rotation == Rotation(max_bytes=size)
    assert sink.keep == 3
    daily = from_uri("file:/tmp/x.jsonl?rotate=DAILY")
    assert isinstance(daily, FileSink)
    assert (daily.rotation, daily.keep) == (Rotation(daily=True), DEFAULT_KEEP)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("file:/tmp/x.jsonl?rotate=weekly", "rotate must be daily or a size"),
        ("file:/tmp/x.jsonl?rotate=0", "at least 1 byte"),
        ("file:/tmp/x.jsonl?rotate=-5MiB", "rotate must be daily or a size"),
        ("file:/tmp/x.jsonl?rotate=1.5GiB", "rotate must be daily or a size"),
        ("file:/tmp/x.jsonl?rotate=daily&keep=0", "keep must be >= 1"),
        ("file:/tmp/x.jsonl?keep=3", "keep needs rotate"),
        ("file:/tmp/{source.id}.jsonl?rotate=daily", "rotate needs a fixed file path"),
        ("file:-?rotate=1MiB", "rotate needs a fixed file path"),
    ],
)
def test_a_bad_rotation_is_one_line_naming_the_option(uri: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as caught:
        from_uri(uri)
    assert "\n" not in str(caught.value)


# -- the bridge's side: reopen() and a consumer gone ------------------------------------------


class Gone(MemorySink):
    """A sink whose reader leaves when :attr:`left` is set; its reopen fails."""

    def __init__(self) -> None:
        super().__init__(name="gone")
        self.left = False

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        if self.left:
            raise ConsumerGoneError("gone: its reader left")
        await super().send(events)

    async def reopen(self) -> None:
        raise SinkError("gone: cannot reopen")


async def test_bridge_reopen_and_a_consumer_gone_end_the_run_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bridge.reopen() reopens each file sink (a sink whose reopen fails is logged, the
    others reopen); a sink raising ConsumerGoneError ends Bridge.run() without an error,
    and the events it did not take stay in the spool for it."""
    out = tmp_path / "events.jsonl"
    gone = Gone()
    async with Emulator(tokens=[TOKEN]) as server:
        options = bridge_options(server, tmp_path)
        bridge = Bridge(TOKEN, [f"file:{out}", gone], **options)  # type: ignore[arg-type]
        running = asyncio.create_task(bridge.run())
        await server.wait_for_clients(1)
        for _ in range(3):
            await server.emit()
        await until(lambda: len(ids_in(out)) == 3 and len(gone.events) == 3)
        out.rename(tmp_path / "events.jsonl.1")
        with caplog.at_level(logging.ERROR, logger="neuroio.bridge"):
            await bridge.reopen()
        assert any("gone: cannot reopen" in r.getMessage() for r in caplog.records)
        await server.emit()
        await until(lambda: len(ids_in(out)) == 1 and len(gone.events) == 4)
        gone.left = True
        await server.emit()
        await asyncio.wait_for(running, 10)  # returns: no exception
    assert bridge.should_exit
    assert len(ids_in(tmp_path / "events.jsonl.1")) == 3
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.depth == 1  # held for the sink that could not take it
