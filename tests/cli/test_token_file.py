"""``--token-file`` is read again at each connection: a rotation needs no restart."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from neuroio.emulator import Emulator

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
    await emulator.wait_for_clients(1)
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
