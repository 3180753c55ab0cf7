"""``neuroio-events listen`` as a real subprocess against the emulator, with real signals."""

from __future__ import annotations

import json
import signal
import stat
import time
from pathlib import Path

import msgspec

from neuroio.emulator import Emulator

from .conftest import TOKEN, StartCli, clean_env, free_port


def wire(entry: dict[str, object]) -> bytes:
    """The frame the emulator sends for ``entry``, as one line."""
    return b'{"id":%d,"data":' % entry["id"] + msgspec.json.encode(entry) + b"}\n"


async def test_jsonl_is_every_event_exactly_as_sent(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """Each event is one line holding the JSON the server sent, byte for byte; nothing else."""
    proc = await cli("listen", "--url", emulator.url, "--token-file", str(token_file))
    await emulator.wait_for_clients(1)
    sent = await emulator.burst(30)
    # Unknown fields, exact decimals, non-ASCII text and nesting survive untouched.
    sent.append(
        await emulator.emit(
            confidence=87.30,
            camera_note="Café ☕ «entrée»",
            future_field={"nested": [1, 2.50, None, True]},
        )
    )
    lines = await proc.lines(len(sent))
    assert lines == [wire(e) for e in sent]
    for line, entry in zip(lines, sent, strict=True):
        assert json.loads(line) == {"id": entry["id"], "data": entry}
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    assert proc.stdout == b"".join(lines)  # nothing else on stdout


async def test_multiline_frame_becomes_one_line(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """A frame the server pretty-printed over several lines is still one JSON line."""
    proc = await cli("listen", "--url", emulator.url, "--token-file", str(token_file))
    await emulator.wait_for_clients(1)
    await emulator.send_raw(
        '{\n  "id": 4242,\n  "data": {\n    "id": 4242, "confidence": 1.50\n  }\n}'
    )
    assert await proc.line() == b'{"id":4242,"data":{"id":4242,"confidence":1.50}}\n'
    proc.send(signal.SIGINT)
    assert await proc.finish() == 0


async def test_count_exits_zero_after_n_events(cli: StartCli, emulator: Emulator) -> None:
    """--count N prints exactly N events and exits 0 (token from NEUROIO_API_TOKEN)."""
    proc = await cli(
        "listen",
        "--url",
        emulator.url,
        "--count",
        "5",
        env=clean_env(NEUROIO_API_TOKEN=TOKEN),
    )
    await emulator.wait_for_clients(1)
    sent = await emulator.burst(12)
    assert await proc.finish() == 0
    assert proc.stdout.splitlines(keepends=True) == [wire(e) for e in sent[:5]]


async def test_signals_exit_zero_promptly_with_whole_lines(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """SIGTERM and SIGINT during a fast stream: exit 0 within 5 s, every line whole JSON."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = await cli("listen", "--url", emulator.url, "--token-file", str(token_file))
        before = len(emulator.clients)
        await emulator.wait_for_clients(before + 1)
        emulator.start_stream(2000)
        await proc.lines(50)
        sent_at = time.monotonic()
        proc.send(sig)
        assert await proc.finish() == 0
        assert time.monotonic() - sent_at < 5.0
        await emulator.stop_stream()
        assert proc.stdout.endswith(b"\n")
        ids = [json.loads(line)["id"] for line in proc.stdout.splitlines()]
        assert ids == sorted(ids) and len(ids) == len(set(ids)) >= 50
        assert "Traceback" not in proc.err


async def test_rejected_token_exits_3_with_one_line(cli: StartCli, token_file: Path) -> None:
    """A rejected token: exit 3, one stderr line about authentication, no traceback."""
    async with Emulator(tokens={"another-token"}) as emulator:
        proc = await cli("listen", "--url", emulator.url, "--token-file", str(token_file))
        assert await proc.finish() == 3
    mentions = [line for line in proc.err.splitlines() if "authentication" in line.lower()]
    assert len(mentions) == 1, proc.err
    assert mentions[0].startswith("Error: authentication failed")
    assert "Traceback" not in proc.err
    assert proc.stdout == b""


async def test_missing_token_is_a_usage_error(cli: StartCli) -> None:
    """No token at all: exit 2 with the ways to give one, no traceback."""
    proc = await cli("listen", "--url", "ws://127.0.0.1:9/")
    assert await proc.finish() == 2
    for hint in ("--token-file", "NEUROIO_API_TOKEN", "--token"):
        assert hint in proc.err
    assert "Traceback" not in proc.err


async def test_max_retries_against_a_closed_port_exits_4(cli: StartCli, tmp_path: Path) -> None:
    """--max-retries exhausted: exit 4; a token file others can read is warned about."""
    loose = tmp_path / "loose-token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    proc = await cli(
        "listen",
        "--url",
        f"ws://127.0.0.1:{free_port()}/",
        "--token-file",
        str(loose),
        "--max-retries",
        "2",
        "--reconnect-delay",
        "0.01",
        "--timeout",
        "1",
    )
    assert await proc.finish() == 4
    assert "3 attempts" in proc.err
    assert "chmod 600" in proc.err
    assert "Traceback" not in proc.err


async def test_json_logs_are_one_object_per_line(cli: StartCli, token_file: Path) -> None:
    """--log-format json: every stderr line is an object with ts, level, logger, message."""
    proc = await cli(
        "listen",
        "--url",
        f"ws://127.0.0.1:{free_port()}/",
        "--token-file",
        str(token_file),
        "--max-retries",
        "0",
        "--log-format",
        "json",
        "-v",
    )
    assert await proc.finish() == 4
    records = [json.loads(line) for line in proc.err.splitlines()]
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert records[-1]["level"] == "error" and "attempts" in records[-1]["message"]


async def test_bad_frames_are_skipped_with_a_warning(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """Malformed frames never stop the listener: warnings on stderr, the events go on."""
    proc = await cli("listen", "--url", emulator.url, "--token-file", str(token_file))
    await emulator.wait_for_clients(1)
    await emulator.send_hostile(
        ["not_json", "unexpected_shapes", "huge_numbers", "binary_invalid_utf8"]
    )
    after = await emulator.emit()
    # The 400-digit id is a valid integer id: that event is printed, digits intact.
    huge = "1" + "0" * 400
    assert await proc.line() == f'{{"id":{huge},"data":{{"id":{huge}}}}}\n'.encode()
    assert await proc.line() == wire(after)
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    assert "WARNING" in proc.err and "Traceback" not in proc.err


async def test_include_control_prints_auth_and_pong(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """--include-control also prints the AUTH answer and the PONGs, compact."""
    proc = await cli(
        "listen",
        "--url",
        emulator.url,
        "--token-file",
        str(token_file),
        "--include-control",
        "--ping-interval",
        "0.1",
    )
    assert await proc.line() == b'{"auth":"ok"}\n'
    assert await proc.line() == b'{"PING":"PONG"}\n'
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0


async def test_output_file_and_recording(
    cli: StartCli, emulator: Emulator, token_file: Path, tmp_path: Path
) -> None:
    """--output appends JSON lines to a file (not stdout); --record keeps every frame."""
    output, record = tmp_path / "events.jsonl", tmp_path / "stream.rec"
    output.write_bytes(b'{"id":0,"data":{}}\n')  # appended to, not replaced
    proc = await cli(
        "listen",
        "--url",
        emulator.url,
        "--token-file",
        str(token_file),
        "--output",
        str(output),
        "--record",
        str(record),
        "--count",
        "4",
    )
    await emulator.wait_for_clients(1)
    sent = await emulator.burst(4)
    assert await proc.finish() == 0
    assert proc.stdout == b""
    assert output.read_bytes() == b'{"id":0,"data":{}}\n' + b"".join(wire(e) for e in sent)
    frames = [json.loads(line) for line in record.read_bytes().splitlines()]
    assert [f["frame"] for f in frames] == ['{"auth":"ok"}'] + [wire(e)[:-1].decode() for e in sent]
    assert all(isinstance(f["t"], float) for f in frames)
    assert TOKEN not in record.read_text()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


async def test_keeps_printing_after_the_server_drops_the_connection(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """A closed connection is replaced; events after it are printed too."""
    proc = await cli(
        "listen",
        "--url",
        emulator.url,
        "--token-file",
        str(token_file),
        "--reconnect-delay",
        "0.01",
    )
    await emulator.wait_for_clients(1)
    first = await emulator.emit()
    assert await proc.line() == wire(first)
    await emulator.close_clients(1012)
    await emulator.wait_for_clients(2)
    second = await emulator.emit()
    assert await proc.line() == wire(second)
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
