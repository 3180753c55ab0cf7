"""Replaying a recording through the one recording reader."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from neuroio.exceptions import ConfigurationError
from neuroio.recording import RecordingWriter
from neuroio.testing import Emulator

from .conftest import AUTH, STEP, TOKEN, connected, recv, recv_json, rest

# ---------------------------------------------------------------- replay


def write_recording(path: Path, items: list[tuple[float, str | bytes]]) -> Path:
    with path.open("w") as f:
        for t, frame in items:
            if isinstance(frame, bytes):
                line = {"t": t, "frame_b64": base64.b64encode(frame).decode()}
            else:
                line = {"t": t, "frame": frame}
            f.write(json.dumps(line) + "\n")
    return path


def event_frame(entry_id: int) -> str:
    return json.dumps({"id": entry_id, "data": {"id": entry_id, "result": "exact"}})


async def test_replay_keeps_order_and_timing(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A recording is played after the first AUTH: events (also into the history) with
    their relative timing divided by the speed; AUTH answers and PONGs skipped; other
    frames sent as they were."""
    recording = write_recording(
        tmp_path / "rec.jsonl",
        [
            (1000.0, '{"auth":"ok"}'),
            (1000.1, event_frame(101)),
            (1000.2, '{"PING":"PONG"}'),
            (1000.3, event_frame(102)),
            (1000.4, '{"error":"something odd"}'),
            (1000.5, event_frame(103)),
            (1000.5, b"\x00binary"),
        ],
    )
    async with Emulator(tokens={TOKEN}, replay=recording, replay_speed=2.0) as emu:
        async with connected(session, emu, token=None) as ws:
            assert emu.emitted == 0  # nothing before the first AUTH
            await ws.send_str(AUTH)
            assert await recv_json(ws) == {"auth": "ok"}
            got: list[tuple[float, Any]] = []
            for _ in range(5):
                msg = await recv(ws)
                got.append((time.monotonic(), msg))
            await emu.wait_replayed(timeout=STEP)
        page = await rest(session, emu)
    texts = [m.data for _, m in got]
    assert [json.loads(t)["id"] for t in (texts[0], texts[1], texts[3])] == [101, 102, 103]
    assert json.loads(texts[2]) == {"error": "something odd"}
    assert got[4][1].type is WSMsgType.BINARY and got[4][1].data == b"\x00binary"
    # Recorded 0.2 s apart, played at speed 2: at least 0.1 s apart.
    assert got[1][0] - got[0][0] >= 0.09
    assert got[3][0] - got[1][0] >= 0.09
    assert [e["id"] for e in page["results"]] == [103, 102, 101]
    assert emu.emitted == 3


async def test_replay_as_fast_as_possible(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """replay_speed=0 plays the whole recording at once, however far apart it was."""
    recording = write_recording(
        tmp_path / "rec.jsonl", [(i * 3600.0, event_frame(i)) for i in range(1, 201)]
    )
    async with Emulator(replay=recording, replay_speed=0) as emu:
        async with connected(session, emu, token="t") as ws:
            await emu.wait_replayed(timeout=STEP)
            ids = [(await recv_json(ws))["id"] for _ in range(200)]
    assert ids == list(range(1, 201))


@pytest.mark.parametrize(
    "content",
    ['{"t": 1}\n', "not json\n", '{"t": "x", "frame": "{}"}\n', '{"t": 1, "frame_b64": "@@"}\n'],
)
async def test_replay_file_errors(tmp_path: Path, content: str) -> None:
    """A bad recording is refused at start with the line number."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 0, "frame": "{}"}\n' + content)
    emu = Emulator(replay=path)
    with pytest.raises(ConfigurationError, match="line 2"):
        await emu.start()
    with pytest.raises(ConfigurationError):
        await Emulator(replay=tmp_path / "missing.jsonl").start()
    with pytest.raises(ConfigurationError):
        await Emulator().wait_replayed()


async def test_replay_plays_a_recording_whose_last_line_was_torn(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A recorder killed mid-line leaves half a record at the end: the emulator plays every
    whole record before it, as the recording reader reads it, instead of refusing the file."""
    path = write_recording(tmp_path / "torn.rec", [(float(i), event_frame(i)) for i in (1, 2, 3)])
    with path.open("a") as f:
        f.write('{"t": 4.0, "frame": "{\\"id\\":4,\\"da')
    async with Emulator(replay=path, replay_speed=0) as emu:
        async with connected(session, emu, token="t") as ws:
            await emu.wait_replayed(timeout=STEP)
            ids = [(await recv_json(ws))["id"] for _ in range(3)]
    assert ids == [1, 2, 3]
    assert emu.emitted == 3


async def test_replay_reads_what_the_recorder_writes(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A file written by RecordingWriter (text, binary, backfilled frames) plays back."""
    path = tmp_path / "written.rec"
    with RecordingWriter(path) as writer:
        writer.write('{"auth":"ok"}', 1.0)
        writer.write(event_frame(7), 1.1)
        writer.write(event_frame(8), 1.2, backfilled=True)
        writer.write(b"\x00\xffbin", 1.3)
    async with Emulator(replay=path, replay_speed=0) as emu:
        async with connected(session, emu, token="t") as ws:
            await emu.wait_replayed(timeout=STEP)
            first = [(await recv_json(ws))["id"] for _ in range(2)]
            last = await recv(ws)
    assert first == [7, 8]
    assert last.type is WSMsgType.BINARY and last.data == b"\x00\xffbin"
