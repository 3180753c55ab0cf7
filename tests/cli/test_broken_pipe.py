"""``listen | head -1``: a reader that closes stdout is the end, as for every Unix tool:
status 0, nothing on stderr but the logs, no traceback, no "Exception ignored" at exit."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from neuroio.emulator import Emulator

from .conftest import TOKEN, StartCli, clean_env


def assert_quiet(stderr: str) -> None:
    assert "Error" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "BrokenPipe" not in stderr and "Exception ignored" not in stderr, stderr


@pytest.mark.parametrize("fmt", ["jsonl", "pretty"])
async def test_listen_piped_into_head_exits_quietly(fmt: str, token_file: Path) -> None:
    async with Emulator(tokens={TOKEN}, rate=50) as emu:
        listen = shlex.join(
            [sys.executable, "-m", "neuroio", "listen", "--url", emu.url,
             "--token-file", str(token_file), "--format", fmt, "--no-status"]
        )  # fmt: skip
        # The shell's pipeline, as a user types it; the exit status of listen itself.
        script = f'{listen} | head -1; exit "${{PIPESTATUS[0]}}"'
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=20,
            env=clean_env(),
        )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert_quiet(result.stderr)


async def test_closing_the_read_end_is_the_end(cli: StartCli, token_file: Path) -> None:
    async with Emulator(tokens={TOKEN}, rate=None) as emu:
        read_fd, write_fd = os.pipe()
        try:
            child = await cli(
                "listen", "--url", emu.url, "--token-file", str(token_file), stdout=write_fd
            )
        finally:
            os.close(write_fd)
        await emu.wait_for_clients(1)
        await emu.emit()
        with open(read_fd, "rb") as reader:  # closes read_fd
            loop = asyncio.get_running_loop()
            line = await asyncio.wait_for(loop.run_in_executor(None, reader.readline), 5)
            assert line.startswith(b'{"id":')
        await emu.emit()  # written to a pipe without a reader: EPIPE
        assert await child.finish() == 0
    assert_quiet(child.err)
