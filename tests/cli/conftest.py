"""Running ``python -m neuroio`` as a real subprocess, reading its output with timeouts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from neuroio.emulator import Emulator

# Long and distinctive, so that finding it in any output can only mean a leak.
TOKEN = "tok-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any NEUROIO_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
    env.update(extra)
    return env


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cli:
    """One ``python -m neuroio ...`` subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.proc = proc
        self.args = args
        self.started = time.monotonic()
        self.stdout = bytearray()  # everything read from stdout so far
        self.stderr = bytearray()
        assert proc.stderr is not None
        # stderr is drained all the time so a chatty child never blocks on a full pipe.
        self._stderr_task = asyncio.create_task(self._drain(proc.stderr, self.stderr))

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            into.extend(chunk)

    async def line(self, timeout: float = 5.0) -> bytes:
        """The next stdout line (with its newline). Fails on timeout or end of output."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"no stdout line within {timeout} s; stderr so far:\n{self.err}")
        if not line:
            pytest.fail(f"stdout ended; stderr:\n{self.err}")
        self.stdout.extend(line)
        return line

    async def lines(self, n: int, timeout: float = 5.0) -> list[bytes]:
        """The next ``n`` stdout lines, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        return [await self.line(max(deadline - time.monotonic(), 0.01)) for _ in range(n)]

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child."""
        self.proc.send_signal(sig)

    async def finish(self, timeout: float = 5.0) -> int:
        """Wait for the exit (reading the rest of stdout); return the exit code.

        Also checks that the API token never appeared on stdout or stderr.
        """
        assert self.proc.stdout is not None
        try:
            rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
            code = await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(self._stderr_task, timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"{self.args} did not exit within {timeout} s; stderr:\n{self.err}")
        self.stdout.extend(rest)
        assert TOKEN.encode() not in self.stdout, "the token leaked to stdout"
        assert TOKEN.encode() not in self.stderr, "the token leaked to stderr"
        return code

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        self._stderr_task.cancel()
        await asyncio.gather(self._stderr_task, return_exceptions=True)


StartCli = Callable[..., Awaitable[Cli]]


@pytest.fixture
async def cli() -> AsyncIterator[StartCli]:
    """Start ``python -m neuroio *args``; every child is killed at the end of the test."""
    started: list[Cli] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "neuroio",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env if env is not None else clean_env(),
        )
        child = Cli(proc, args)
        started.append(child)
        return child

    yield start
    for child in started:
        await child.kill()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A file holding :data:`TOKEN`, readable by its owner only."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator on a free loopback port that accepts :data:`TOKEN` only."""
    async with Emulator(tokens={TOKEN}, seed=7) as emu:
        yield emu
