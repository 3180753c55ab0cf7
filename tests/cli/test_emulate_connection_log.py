"""``emulate --connection-log FILE`` and ``--count``, the real command in a subprocess."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import aiohttp

from neuroio.testing import read_connection_log

from .conftest import StartCli


async def test_emulate_writes_the_connection_log_and_ends_its_stream(
    cli: StartCli, tmp_path: Path
) -> None:
    """--spaces 2 --rate 200 --count 3 --connection-log F: a client of space 2 gets its open,
    auth and close lines (no token in the file), and each space's REST history holds
    exactly 3 entries once the stream has ended."""
    path = tmp_path / "conn.jsonl"
    emu = await cli("emulate", "--port", "0", "--spaces", "2", "--rate", "200", "--count", "3",
                    "--connection-log", str(path))  # fmt: skip
    url, api_url, *tokens = [line.decode().strip() for line in await emu.lines(4)]
    await emu.wait_stderr("the stream has ended: 6 events")
    async with aiohttp.ClientSession() as http:
        for token in tokens:
            headers = {"Authorization": f"Token {token}"}
            async with http.get(f"{api_url}/v1/entries/", headers=headers) as answer:
                assert (await answer.json())["count"] == 3
        async with http.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"action": "AUTH", "data": {"token": tokens[1]}}))
            assert json.loads((await ws.receive(timeout=5)).data) == {"auth": "ok"}
    # The client closed first; the emulator writes its close line before it exits.
    emu.send(signal.SIGTERM)
    assert await emu.finish() == 0
    text = path.read_text()
    assert all(token not in text for token in tokens)
    lines = read_connection_log(path)
    assert [(x["conn"], x["event"], x["space"], x["by"]) for x in lines] == [
        (1, "open", None, None),
        (1, "auth", 2, None),
        (1, "close", 2, "client"),
    ]
    assert lines[0]["peer"].startswith("127.0.0.1:")
    assert lines[0]["t"] <= lines[1]["t"] <= lines[2]["t"]


async def test_emulate_refuses_an_unwritable_connection_log(cli: StartCli, tmp_path: Path) -> None:
    """A connection log in a missing directory is one line and a failure, not a traceback."""
    emu = await cli("emulate", "--port", "0", "--connection-log", str(tmp_path / "no" / "f"))
    assert await emu.finish() == 2
    assert "cannot open the connection log" in emu.err and "Traceback" not in emu.err
