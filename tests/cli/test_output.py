"""Formatting lines, the status line, and the output worker (real pipes)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from neuroio._protocol.frames import Kind
from neuroio.cli._output import (
    RESULT_CODES,
    RESULT_LEGEND,
    FrameFormatter,
    OutputWorker,
    StatusLine,
    connections_lost,
    decode_frame,
    failed_attempts,
    format_rtt,
    summary_line,
)
from neuroio.emulator import Emulator
from neuroio.messages import Result
from neuroio.stats import ListenerStats, State

from .conftest import clean_env

EVENT = (
    '{"id": 7, "data": {"id": 7, "created": "2019-07-29T13:53:27.306Z", '
    '"pid": "6f1c2a9e-1111-2222-3333-444455556666", "result": "exact", "confidence": 87.30, '
    '"age": 34, "sex": 1, "mood": "happiness", "liveness": "passed", '
    '"source": {"id": 1, "name": "Main entrance"}, "extra_field": [1e400, -0.0]}}'
)


def test_jsonl_keeps_every_value_exactly() -> None:
    """Compact JSON with every number as the server wrote it, even beyond float range."""
    line = FrameFormatter("jsonl").event(decode_frame(EVENT))
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert b'"confidence":87.30' in line and b"[1E+400,-0.0]" in line
    assert json.loads(line)["data"]["pid"] == "6f1c2a9e-1111-2222-3333-444455556666"


def test_pretty_line_has_the_fields_people_look_at() -> None:
    """Time, id, result, short person id, age, sex, mood, liveness, camera, confidence."""
    text = FrameFormatter("pretty").event(decode_frame(EVENT), backfilled=True).decode()
    for part in ("#7", "exact", "6f1c2a9e", "34", " F ", "happiness", "passed", "87.3"):
        assert part in text
    assert "Main entrance" in text and "(recovered)" in text
    assert "\x1b[" not in text  # no colour unless asked
    assert text.count("\n") == 1  # no header off a terminal, unless asked


def columns(header: str) -> dict[str, int]:
    """Where each title of the header line starts."""
    return {m.group(): m.start() for m in re.finditer(r"\S+", header)}


def event_with(**data: object) -> dict[str, object]:
    value = decode_frame(EVENT)
    value["data"].update(data)
    return value  # type: ignore[no-any-return]


def test_pretty_columns_stay_aligned_whatever_the_values() -> None:
    """A header line of titles, then fixed columns: an unknown result, a long or wide
    (CJK) camera name, an unknown liveness, a huge age and a missing confidence are cut to
    their column with "…", so every value starts under its title; escape sequences and
    newlines a server puts in a name are shown as "?", never sent to the terminal."""
    formatter = FrameFormatter("pretty", header=True)
    first = formatter.event(decode_frame(EVENT)).decode().splitlines()
    assert len(first) == 2
    header, normal = first
    where = columns(header)
    assert list(where) == [
        "time", "id", "result", "person", "age", "sex", "mood", "liveness", "camera", "conf"
    ]  # fmt: skip
    odd = [
        event_with(result="match_pending_review"),
        event_with(source={"id": 3, "name": "Main entrance, north side, revolving door 3"}),
        event_with(liveness="spoof-suspected-by-model-v2", mood="bewildered-and-tired"),
        event_with(age=10**30, confidence=None, sex=7, pid=None),
        event_with(source={"name": "\x1b[2J\x1b[31mred\ncam"}),
    ]
    lines = [normal] + [formatter.event(v).decode() for v in odd]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines[1:])
    lines = [line.rstrip("\n") for line in lines]
    for line in lines:
        assert len(line) == len(lines[0]), line
        # Each left-aligned column starts right after two spaces, at its title's position.
        for title, start in where.items():
            if title not in ("time", "age", "conf"):
                assert line[start - 2 : start] == "  " and line[start] != " ", (title, line)
    assert "match…" in lines[1] and "match_" not in lines[1]
    assert "Main entrance, …" in lines[2]
    assert "spoof-suspe…" in lines[3] and "bewilder…" in lines[3]
    assert "…" in lines[4] and lines[4][where["person"] :].startswith("-")
    assert lines[4].rstrip().endswith("?")  # no confidence
    assert "\x1b" not in "".join(lines) and "?[2J?[31mred?cam" in lines[5]
    # A camera name of wide characters takes two cells per character: cut by cells.
    wide = formatter.event(event_with(source={"name": "北京西站入口大厅摄像机"})).decode()
    assert cell_len(wide.rstrip("\n")) == cell_len(lines[0])
    # An id longer than its column is shown whole: a cut id would name another event.
    assert "#1234567890123" in formatter.event({"id": 1234567890123, "data": {}}).decode()


def test_header_only_on_a_terminal_by_default() -> None:
    """The header comes once, before the first event, when colour is on (a terminal) or
    asked; never in JSON lines."""
    coloured = FrameFormatter("pretty", color=True)
    assert b"result" in coloured.event(decode_frame(EVENT)).split(b"\n")[0]
    assert b"result" not in coloured.event(decode_frame(EVENT))
    assert FrameFormatter("pretty").event(decode_frame(EVENT)).count(b"\n") == 1
    assert FrameFormatter("jsonl", header=True).event(decode_frame(EVENT)).count(b"\n") == 1


def test_result_legend_explains_every_result_code_and_docs_agree() -> None:
    """RESULT_LEGEND (for listen --help) names every result of the protocol with its
    meaning, one line each, without a blank line; docs/cli.md's "Result codes" says the same."""
    lines = RESULT_LEGEND.splitlines()
    assert all(lines) and max(map(len, lines)) <= 76  # an 80-column --help, indented
    codes = {line.split()[0] for line in lines[1:]}
    assert codes == {r.value for r in Result} == set(RESULT_CODES)
    docs = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    section = docs.split("## Result codes", 1)[1].split("\n## ", 1)[0]
    for code, meaning in RESULT_CODES.items():
        assert f"| `{code}` | {meaning} |" in section, code


def test_pretty_colour_only_when_asked() -> None:
    line = FrameFormatter("pretty", color=True).event(decode_frame(EVENT))
    assert b"\x1b[" in line


def test_control_messages_only_with_include_control() -> None:
    assert FrameFormatter("jsonl").control({"auth": "ok"}, Kind.AUTH_OK) is None
    shown = FrameFormatter("jsonl", include_control=True).control({"PING": "PONG"}, Kind.PONG)
    assert shown == b'{"PING":"PONG"}\n'
    pretty = FrameFormatter("pretty", include_control=True)
    error = pretty.control({"error": "Authentication failed"}, Kind.ERROR)
    assert error is not None and b"error: Authentication failed" in error


def rendered(text: Text, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(text)
    return out.getvalue()


def test_round_trips_below_a_millisecond_are_shown_as_such() -> None:
    """A sub-millisecond PONG round trip is "<1 ms", never "0.0 ms"."""
    assert [format_rtt(s) for s in (0.0, 0.00004, 0.000999, 0.001, 0.0123)] == [
        "<1 ms", "<1 ms", "<1 ms", "1.0 ms", "12.3 ms"
    ]  # fmt: skip
    status = StatusLine(ListenerStats(state=State.LIVE, last_rtt=0.00004))
    shown = rendered(status.text(now=1.0))
    assert "rtt <1 ms" in shown and "0.0 ms" not in shown


def test_reconnects_count_connections_lost_not_failed_attempts() -> None:
    """Five refused connects and an AUTH timeout are failed attempts, shown apart; a closed
    and a reset connection are the two reconnects."""
    stats = ListenerStats(state=State.BACKOFF, events=3)
    stats.reconnects.update(connect_failed=5, auth_timeout=1, closed=1, reset=1)
    assert (connections_lost(stats), failed_attempts(stats)) == (2, 6)
    shown = rendered(StatusLine(stats).text(now=1.0))
    assert "reconnects 2" in shown and "failed attempts 6" in shown
    quiet = ListenerStats(state=State.LIVE)
    assert "failed" not in rendered(StatusLine(quiet).text(now=1.0))


def test_summary_line() -> None:
    """One line at exit: events, how long, reconnects (connections lost); recovered events
    and failed attempts only when there were some; singulars and long runs read well."""
    stats = ListenerStats(events=73)
    assert summary_line(stats, 14.3) == "73 events in 14 s, 0 reconnects"
    stats = ListenerStats(events=1, backfilled_events=4)
    stats.reconnects.update(closed=1, connect_failed=2)
    assert summary_line(stats, 0.42) == (
        "1 event and 4 recovered in 0.4 s, 1 reconnect, 2 failed connection attempts"
    )
    assert summary_line(ListenerStats(), 3725) == "0 events in 1 h 2 min, 0 reconnects"
    assert summary_line(ListenerStats(), 125) == "0 events in 2 min 5 s, 0 reconnects"


def test_status_line_shows_state_counts_rate_and_rtt() -> None:
    """The status text and its event rate over the sampling window."""
    stats = ListenerStats(state=State.LIVE, events=10, last_rtt=0.0123)
    stats.reconnects["closed"] = 2
    status = StatusLine(stats, window=5.0)
    assert status.rate(now=100.0) == 0.0
    stats.events = 30
    assert status.rate(now=102.0) == pytest.approx(10.0)
    text = status.text(now=103.0).plain
    for part in ("live", "events 30", "reconnects 2", "rtt 12.3 ms"):
        assert part in text
    assert len(status.render(width=20)) < 200  # cut to the width, plus ANSI codes


class Pipe:
    """A pipe whose ends are closed once, by :meth:`close_reader` or at the end."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._open = {self.read_fd, self.write_fd}

    def close_reader(self) -> None:
        os.close(self.read_fd)
        self._open.discard(self.read_fd)

    def close(self) -> None:
        for fd in self._open:
            os.close(fd)
        self._open.clear()


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close()


async def test_worker_writes_in_order_and_reports_errors(pipe: Pipe) -> None:
    """Writes land in submission order; a write to a closed pipe raises BrokenPipeError."""
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    worker = OutputWorker()
    worker.start()
    await asyncio.gather(*(worker.write(write_fd, b"%d\n" % i) for i in range(100)))
    worker.write_nowait(write_fd, b"last\n")
    assert await worker.aclose()
    data = os.read(read_fd, 65536)
    assert data == b"".join(b"%d\n" % i for i in range(100)) + b"last\n"

    pipe.close_reader()
    worker = OutputWorker()
    worker.start()
    with pytest.raises(BrokenPipeError):
        await worker.write(write_fd, b"x\n")
    assert await worker.aclose()


async def test_status_line_is_wiped_before_other_output(pipe: Pipe) -> None:
    """On a shared terminal the status is erased before a line and redrawn after it."""
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    # The same pipe stands for stderr (status) and stdout: the order of bytes is what counts.
    os.set_blocking(read_fd, False)
    worker = OutputWorker(status_fd=write_fd, shared_tty_fds=(write_fd,))
    worker.start()
    worker.set_status("STATUS")
    assert await read_some(read_fd) == b"\rSTATUS\x1b[K"
    await worker.write(write_fd, b"event\n")
    assert await worker.aclose()
    rest = await read_some(read_fd)
    assert rest.startswith(b"\r\x1b[Kevent\n")
    # Redrawn after the line unless the stop was already queued; wiped at the end either way.
    assert rest.removeprefix(b"\r\x1b[Kevent\n") in (b"", b"\rSTATUS\x1b[K\r\x1b[K")


async def read_some(fd: int, timeout: float = 5.0) -> bytes:
    """What a non-blocking pipe holds once it is readable."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 65536)


async def test_room_waits_while_the_reader_is_behind(pipe: Pipe) -> None:
    """More queued than max_pending: room() waits until the reader catches up."""
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    os.set_blocking(read_fd, False)
    worker = OutputWorker(max_pending=1000)
    worker.start()
    for _ in range(4):
        worker.submit(write_fd, b"x" * 50_000)  # more than a pipe holds: the thread blocks
    waiter = asyncio.create_task(worker.room())
    done, _ = await asyncio.wait({waiter}, timeout=0.2)
    assert not done  # still 100+ kB queued
    received = 0
    while received < 200_000:
        received += len(await read_some(read_fd))
    await asyncio.wait_for(waiter, 5)
    assert await worker.aclose()


async def test_a_failed_write_is_reported_once(pipe: Pipe) -> None:
    """The first failure of a descriptor goes to on_error; later lines to it are dropped."""
    write_fd = pipe.write_fd
    pipe.close_reader()
    errors: list[tuple[int, OSError]] = []
    reported = asyncio.Event()

    def on_error(fd: int, exc: OSError) -> None:
        errors.append((fd, exc))
        reported.set()

    worker = OutputWorker(on_error=on_error)
    worker.start()
    worker.submit(write_fd, b"one\n")
    await asyncio.wait_for(reported.wait(), 5)
    worker.submit(write_fd, b"two\n")
    assert await worker.aclose()
    assert len(errors) == 1
    assert errors[0][0] == write_fd and isinstance(errors[0][1], BrokenPipeError)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def test_listen_on_a_terminal_prints_a_header_and_sums_up_at_exit(
    emulator: Emulator, token_file: Path
) -> None:
    """The real CLI with stdout on a terminal: a header line, then one coloured line per
    event in the header's columns (a long camera name cut with …); on SIGINT, exit 0 and
    one line on stderr summing up the run: 3 events, 0 reconnects."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "neuroio",
        "listen",
        "--url",
        emulator.url,
        "--token-file",
        str(token_file),
        "--no-status",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    os.close(slave)
    os.set_blocking(master, False)
    terminal = bytearray()
    loop = asyncio.get_running_loop()

    async def lines_on_terminal(n: int, timeout: float = 5.0) -> list[str]:
        deadline = loop.time() + timeout
        while terminal.count(b"\n") < n:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(master, _wake, ready)
            try:
                await asyncio.wait_for(ready, max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                pytest.fail(f"not {n} lines on the terminal: {bytes(terminal)!r}")
            finally:
                loop.remove_reader(master)
            with contextlib.suppress(BlockingIOError):
                terminal.extend(os.read(master, 65536))
        plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal.decode())  # colours and bold
        return plain.replace("\r\n", "\n").splitlines()

    try:
        await emulator.wait_for_clients(1)
        await emulator.emit(result="exact")
        await emulator.emit(source={"id": 9, "name": "Loading dock, far end, camera 12"})
        await emulator.emit(result="brand-new-result")
        header, *events = await lines_on_terminal(4)
        assert b"\x1b[" in terminal
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert list(columns(header))[:3] == ["time", "id", "result"]
    assert len(events) == 3 and len({len(line) for line in events}) == 1
    assert "Loading dock, f…" in events[1] and "brand…" in events[2]
    summary = [line for line in err.decode().splitlines() if "events in" in line]
    assert len(summary) == 1, err
    assert re.search(r": 3 events in \d+\.\d s, 0 reconnects$", summary[0]), summary
