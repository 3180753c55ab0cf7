"""Formatting lines, the status line, and the output worker (real pipes)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest

from neuroio._protocol.frames import Kind
from neuroio.cli._output import FrameFormatter, OutputWorker, StatusLine, decode_frame
from neuroio.stats import ListenerStats, State

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
    """Time, id, result, short person id, age/sex/mood, liveness, camera, confidence."""
    text = FrameFormatter("pretty").event(decode_frame(EVENT), backfilled=True).decode()
    for part in ("#7", "exact", "6f1c2a9e", "34 F happiness", "passed", "Main entrance", "87.3"):
        assert part in text
    assert "(recovered)" in text
    assert "\x1b[" not in text  # no colour unless asked


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
