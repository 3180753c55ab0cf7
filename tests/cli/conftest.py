"""Running ``python -m neuroio`` as a real subprocess, reading its output with timeouts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from neuroio.emulator import Emulator

# Long and distinctive, so that finding it in any output can only mean a leak.
TOKEN = "tok-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any NEUROIO_* variable, plus ``extra``.

    Every Python warning is shown (unclosed sockets, unawaited coroutines, deprecations),
    so that :meth:`Cli.finish` can require that there is none.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
    env["PYTHONWARNINGS"] = "default"
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
        self._stderr_grew = asyncio.Event()
        assert proc.stderr is not None
        # stderr is drained all the time so a chatty child never blocks on a full pipe.
        self._stderr_task = asyncio.create_task(self._drain(proc.stderr))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr.extend(chunk)
            self._stderr_grew.set()
        self._stderr_grew.set()

    async def wait_stderr(self, text: str, timeout: float = 5.0) -> None:
        """Wait until ``text`` has appeared on stderr."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.stderr:
            if self._stderr_task.done():
                pytest.fail(f"stderr ended without {text!r}:\n{self.err}")
            self._stderr_grew.clear()
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._stderr_grew.wait(), max(remaining, 0.001))
            except asyncio.TimeoutError:
                pytest.fail(f"{text!r} not on stderr within {timeout} s:\n{self.err}")

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

    async def stderr_closed(self, timeout: float = 5.0) -> None:
        """Wait until the child's stderr is closed, i.e. the child has exited.

        Unlike ``Process.wait()``, this does not also wait for unread stdout to be read.
        """
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr_task), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"{self.args} still running after {timeout} s; stderr:\n{self.err}")

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child."""
        self.proc.send_signal(sig)

    async def finish(self, timeout: float = 5.0) -> int:
        """Wait for the exit (reading the rest of stdout); return the exit code.

        Also checks that the API token never appeared on stdout or stderr.
        """
        try:
            rest = b""
            if self.proc.stdout is not None:
                rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
            code = await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(self._stderr_task, timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"{self.args} did not exit within {timeout} s; stderr:\n{self.err}")
        self.stdout.extend(rest)
        assert TOKEN.encode() not in self.stdout, "the token leaked to stdout"
        assert TOKEN.encode() not in self.stderr, "the token leaked to stderr"
        warnings = re.findall(rb"\w+Warning: .*", self.stderr)
        assert not warnings, f"Python warnings in the child: {warnings}"
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
    """Start ``python -m neuroio *args`` (stdout a pipe read with :meth:`Cli.line`, or a
    descriptor given as ``stdout=``); every child is killed at the end of the test."""
    started: list[Cli] = []

    async def start(
        *args: str, env: dict[str, str] | None = None, stdout: int = asyncio.subprocess.PIPE
    ) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "neuroio",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
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


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority of our own, for wss:// tests."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA's certificate as a PEM file (for --ca-file)."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_emulator(ca: trustme.CA) -> AsyncIterator[Emulator]:
    """A wss:// emulator (certificate for 127.0.0.1 from :func:`ca`) streaming 50 events/s."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with Emulator(tokens={TOKEN}, ssl=context, rate=50) as emu:
        yield emu


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator on a free loopback port that accepts :data:`TOKEN` only."""
    async with Emulator(tokens={TOKEN}, seed=7) as emu:
        yield emu
