"""``emulate`` and ``demo`` as real subprocesses; recording with listen, replaying with emulate."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from neuroio._times import parse_time
from neuroio.emulator import Emulator
from neuroio.recording import RecordingWriter

from ..helpers import eventually
from .conftest import TOKEN, StartCli


async def test_emulate_prints_its_urls_and_stops_on_sigint(cli: StartCli) -> None:
    """--port 0: the real URLs on stdout; a listener gets events; Ctrl-C exits 0."""
    emu = await cli("emulate", "--port", "0", "--rate", "50", "--token", TOKEN)
    url = (await emu.line()).decode().strip()
    api_url = (await emu.line()).decode().strip()
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/")
    assert api_url == "http://" + url.removeprefix("ws://").rstrip("/")
    listener = await cli("listen", "--url", url, "--token", TOKEN, "--count", "3")
    assert await listener.finish() == 0
    assert len(listener.stdout.splitlines()) == 3
    emu.send(signal.SIGINT)
    assert await emu.finish() == 0


async def test_emulate_refuses_a_public_address_without_public(cli: StartCli) -> None:
    """Binding beyond loopback needs --public: a usage error otherwise."""
    proc = await cli("emulate", "--host", "0.0.0.0", "--port", "0")
    assert await proc.finish() == 2
    assert "--public" in proc.err
    assert proc.stdout == b""


async def test_record_then_replay_gives_the_same_events(
    cli: StartCli, emulator: Emulator, token_file: Path, tmp_path: Path
) -> None:
    """listen --record, then emulate --replay: a new listener prints the same events."""
    recording = tmp_path / "incident.rec"
    recorder = await cli(
        "listen",
        "--url",
        emulator.url,
        "--token-file",
        str(token_file),
        "--record",
        str(recording),
        "--count",
        "10",
    )
    await emulator.wait_for_clients(1)
    await emulator.burst(10)
    assert await recorder.finish() == 0
    original = recorder.stdout.splitlines()

    replayer = await cli("emulate", "--port", "0", "--replay", str(recording), "--speed", "0")
    url = (await replayer.line()).decode().strip()
    await replayer.line()
    listener = await cli("listen", "--url", url, "--token", TOKEN, "--count", "10")
    assert await listener.finish() == 0
    assert listener.stdout.splitlines() == original
    replayer.send(signal.SIGTERM)
    assert await replayer.finish() == 0


async def test_demo_prints_events_with_no_token(cli: StartCli) -> None:
    """demo --count 5: five events on stdout (JSON lines off a terminal), from loopback only."""
    proc = await cli("demo", "--count", "5", "--rate", "50")
    assert await proc.finish() == 0
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(events) == 5
    assert all(e["id"] == e["data"]["id"] for e in events)
    assert "ws://127.0.0.1:" in proc.err


async def test_demo_pretty_format(cli: StartCli) -> None:
    """--format pretty: one readable line per event (no colour off a terminal)."""
    proc = await cli("demo", "--count", "3", "--rate", "50", "--format", "pretty", "--seed", "1")
    assert await proc.finish() == 0
    lines = proc.out.splitlines()
    assert len(lines) == 3
    assert all("#" in line and "\x1b[" not in line for line in lines)


async def test_replay_accepts_a_recording_torn_by_a_killed_recorder(
    cli: StartCli, tmp_path: Path
) -> None:
    """emulate --replay plays a recording whose last line a killed recorder cut short (the
    frames before it), instead of refusing the file the recording reader accepts."""
    recording = tmp_path / "torn.rec"
    with RecordingWriter(recording) as writer:
        for i in (1, 2, 3):
            writer.write(json.dumps({"id": i, "data": {"id": i, "result": "exact"}}), float(i))
    with recording.open("ab") as f:
        f.write(b'{"t": 4.0, "frame": "{\\"id\\":4,')
    replayer = await cli("emulate", "--port", "0", "--replay", str(recording), "--speed", "0")
    url = (await replayer.line()).decode().strip()
    await replayer.line()
    listener = await cli("listen", "--url", url, "--token", TOKEN, "--count", "3")
    assert await listener.finish() == 0
    assert [json.loads(line)["id"] for line in listener.stdout.splitlines()] == [1, 2, 3]
    await replayer.wait_stderr("incomplete last record skipped")
    replayer.send(signal.SIGTERM)
    assert await replayer.finish() == 0


async def test_emulate_clock_offset_rest_order_and_shape_flags(cli: StartCli) -> None:
    """--clock-offset -600 --rest-order asc --rest-shape list: entries created ten minutes
    in the past, served oldest first as a bare list."""
    emu = await cli(
        "emulate", "--port", "0", "--rate", "100", "--token", TOKEN,
        "--clock-offset", "-600", "--rest-order", "asc", "--rest-shape", "list",
    )  # fmt: skip
    await emu.line()
    api_url = (await emu.line()).decode().strip()
    headers = {"Authorization": f"Token {TOKEN}"}
    got: list[Any] = []
    async with aiohttp.ClientSession() as session:

        async def three() -> bool:
            async with session.get(f"{api_url}/v1/entries/?limit=3", headers=headers) as resp:
                got[:] = [await resp.json()]
            return isinstance(got[0], list) and len(got[0]) == 3

        await eventually(three, "three entries served", 5.0)
    entries = got[0]
    assert [e["id"] for e in entries] == [1, 2, 3]
    for entry in entries:
        created = parse_time(entry["created"])
        assert created is not None
        assert 540 < time.time() - created.timestamp() < 660
    emu.send(signal.SIGINT)
    assert await emu.finish() == 0


async def test_emulate_refuses_a_bad_clock_offset_in_one_line(cli: StartCli) -> None:
    """A clock offset that is not a finite number is a usage error, not a traceback."""
    proc = await cli("emulate", "--port", "0", "--clock-offset", "nan")
    assert await proc.finish() == 2
    assert "clock_offset" in proc.err and "Traceback" not in proc.err


async def test_emulate_spaces_prints_a_token_per_space_and_serves_each(cli: StartCli) -> None:
    """--spaces 3: three tokens after the URLs; a listener with the second gets that space's
    events only (ids from 2 * 10**9 + 1)."""
    emu = await cli("emulate", "--port", "0", "--rate", "50", "--spaces", "3")
    url = (await emu.line()).decode().strip()
    await emu.line()
    tokens = [line.decode().strip() for line in await emu.lines(3)]
    assert len(set(tokens)) == 3 and all(tokens)
    listener = await cli("listen", "--url", url, "--token", tokens[1], "--count", "3")
    assert await listener.finish() == 0
    events = [json.loads(line) for line in listener.stdout.splitlines()]
    assert len(events) == 3
    for event in events:
        entry = event.get("data", event)
        assert 2 * 10**9 < entry["id"] < 3 * 10**9
        assert entry["space"]["id"] == 2
    emu.send(signal.SIGINT)
    assert await emu.finish() == 0


async def test_emulate_spaces_refuses_given_tokens(cli: StartCli) -> None:
    """--spaces with --token is a usage error in one line."""
    proc = await cli("emulate", "--port", "0", "--spaces", "2", "--token", TOKEN)
    assert await proc.finish() == 2
    assert "--spaces" in proc.err and "Traceback" not in proc.err
