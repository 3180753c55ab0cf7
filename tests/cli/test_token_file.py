"""``--token-file`` and ``--token-command`` are read again when needed: a rotation needs no
restart."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
from pathlib import Path

import pytest

from neuroio._token import token_command
from neuroio.emulator import Emulator
from neuroio.exceptions import ConfigurationError

from .conftest import TOKEN, StartCli

NEW_TOKEN = "tok-rotated-4b8e2d6f0a1c3e5f7a9b1d3f5e7c9a0b"


async def test_listen_follows_a_rewritten_token_file(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """The file rewritten and the old token revoked: the listener reconnects and prints on."""
    proc = await cli(
        "listen", "--url", emulator.url, "--token-file", str(token_file),
        "--reconnect-delay", "0.01",
    )  # fmt: skip
    await emulator.wait_for_clients(1)
    first = await emulator.emit()
    assert json.loads(await proc.line())["id"] == first["id"]
    emulator.accept(NEW_TOKEN)
    token_file.write_text(NEW_TOKEN + "\n")
    await emulator.revoke(TOKEN)
    await emulator.wait_for_clients(2)
    second = await emulator.emit()
    assert json.loads(await proc.line())["id"] == second["id"]
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    assert NEW_TOKEN not in proc.err and NEW_TOKEN not in proc.out
    assert [c.auth_tokens[-1] for c in emulator.clients if c.authenticated] == [TOKEN, NEW_TOKEN]


async def test_listen_exits_3_when_the_revoked_token_is_not_replaced(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """The token revoked and the file left as it is: exit 3 with one line, no traceback."""
    proc = await cli(
        "listen", "--url", emulator.url, "--token-file", str(token_file),
        "--reconnect-delay", "0.01",
    )  # fmt: skip
    await emulator.wait_for_clients(1)
    await emulator.revoke(TOKEN)
    assert await proc.finish() == 3
    mentions = [line for line in proc.err.splitlines() if "authentication" in line.lower()]
    assert len(mentions) == 1, proc.err
    assert mentions[0].startswith("Error: authentication failed")
    assert "Traceback" not in proc.err
    refused = [c for c in emulator.clients if c.auth_tokens and not c.authenticated]
    assert 1 <= len(refused) <= 2


SCRIPT = """
import sys
try:
    with open(sys.argv[1]) as f:
        print(f.read().strip())
except OSError:
    print("vault sealed", file=sys.stderr)
    sys.exit(1)
"""


def _command(tmp_path: Path, token_path: Path) -> str:
    script = tmp_path / "get_token.py"
    script.write_text(SCRIPT)
    return shlex.join([sys.executable, str(script), str(token_path)])


async def test_listen_token_command_failing_then_rotated(
    cli: StartCli, emulator: Emulator, tmp_path: Path
) -> None:
    """--token-command: run again after a refusal; a non-zero exit (its stderr logged) is a
    failed attempt retried with backoff; once it prints the new token, events flow again."""
    source = tmp_path / "current"
    source.write_text(TOKEN + "\n")
    proc = await cli(
        "listen", "--url", emulator.url, "--token-command", _command(tmp_path, source),
        "--reconnect-delay", "0.01", "--max-reconnect-delay", "0.05",
    )  # fmt: skip
    await emulator.wait_for_clients(1)
    emulator.accept(NEW_TOKEN)
    source.unlink()
    await emulator.revoke(TOKEN)
    await proc.wait_stderr("exited with status 1")
    await proc.wait_stderr("vault sealed")
    source.write_text(NEW_TOKEN + "\n")
    await emulator.wait_for_clients(2, timeout=10)
    entry = await emulator.emit()
    assert json.loads(await proc.line())["id"] == entry["id"]
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    assert NEW_TOKEN not in proc.err and "Traceback" not in proc.err


async def test_listen_token_command_failing_at_start_is_a_usage_error(
    cli: StartCli, emulator: Emulator, tmp_path: Path
) -> None:
    """A command that fails before the first connection: exit 2 with one line."""
    command = _command(tmp_path, tmp_path / "missing")
    proc = await cli("listen", "--url", emulator.url, "--token-command", command)
    assert await proc.finish() == 2
    assert "exited with status 1" in proc.err and "Traceback" not in proc.err


def test_token_command_that_hangs_is_killed_after_its_timeout() -> None:
    """A command slower than its timeout is killed; the error says so, without output."""
    provider = token_command([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)
    with pytest.raises(ConfigurationError, match="did not finish within 0.2 s"):
        asyncio.run(provider())


async def test_emulate_tokens_file_is_followed_and_listen_rotates_with_it(
    cli: StartCli, tmp_path: Path
) -> None:
    """Both sides rotate by rewriting files: emulate revokes the token removed from its
    --tokens-file (dropping the connection), listen reads its --token-file again and goes on
    printing events; neither exits."""
    accepted = tmp_path / "accepted"
    accepted.write_text(f"# accepted tokens\n{TOKEN}\n")
    mine = tmp_path / "mine"
    mine.write_text(TOKEN + "\n")
    mine.chmod(0o600)
    emu = await cli("emulate", "--port", "0", "--rate", "50", "--tokens-file", str(accepted))
    url = (await emu.line()).decode().strip()
    await emu.line()
    proc = await cli(
        "listen", "--url", url, "--token-file", str(mine), "--reconnect-delay", "0.01",
    )  # fmt: skip
    await proc.lines(3)
    mine.write_text(NEW_TOKEN + "\n")
    accepted.write_text(NEW_TOKEN + "\n")
    await emu.wait_stderr("tokens file")
    await proc.wait_stderr("reconnecting in")
    before = len(proc.stdout)
    await proc.lines(5)
    assert len(proc.stdout) > before
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    emu.send(signal.SIGTERM)
    assert await emu.finish() == 0
    assert NEW_TOKEN not in proc.err + emu.err
