"""Waiting helpers shared by the asyncio tests: bounded, never a bare sleep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from neuroio import Event, MessageError, parse_message


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, polling a state that has no notification of its own
    (listener stats, a server's records); ``TimeoutError`` after ``timeout`` seconds."""

    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout)


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float
) -> None:
    """Poll ``predicate`` (plain or async) until true; fail naming ``what`` after ``timeout``
    seconds. For conditions outside this process: files, brokers, child processes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


class Frames:
    """A raw handler keeping every frame it is given, waking waiters on each one."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: str | bytes) -> None:
        self.frames.append(message)
        self._changed.set()

    def events(self) -> list[Event]:
        """Every frame that is an event, typed (anything else is skipped)."""
        out = []
        for frame in self.frames:
            try:
                message = parse_message(frame)
            except MessageError:
                continue
            if isinstance(message, Event):
                out.append(message)
        return out

    @property
    def ids(self) -> list[int]:
        """The ids of the events received, in order."""
        return [event.id for event in self.events()]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking it after each frame."""

        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"1m"``) mounted at ``where`` for a test that fills a disk, so
    that no other disk is touched; the test is skipped where mounting is not permitted."""
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
