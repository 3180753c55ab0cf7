"""``neuroio-events listen`` as a real subprocess against the emulator, with real signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from neuroio.emulator import Emulator

from .conftest import TOKEN, StartCli, clean_env, free_port


def wire(entry: dict[str, object]) -> bytes:
    """The frame the emulator sends for ``entry``, as one line."""
    event_id = entry["id"]
    assert isinstance(event_id, int)
    return b'{"id":%d,"data":' % event_id + msgspec.json.encode(entry) + b"}\n"


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
    """--count N prints exactly N events and exits 0 (token from NEUROIO_API_TOKEN; the
    standard asyncio loop instead of uvloop)."""
    proc = await cli(
        "listen",
        "--url",
        emulator.url,
        "--count",
        "5",
        "--no-uvloop",
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
    assert records[-1]["level"] == "error" and "after 1 attempt " in records[-1]["message"]


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


async def test_sigterm_while_reconnecting_exits_zero(cli: StartCli, token_file: Path) -> None:
    """Stopped while waiting to reconnect to a dead service: exit 0 at once."""
    proc = await cli(
        "listen",
        "--url",
        f"ws://127.0.0.1:{free_port()}/",
        "--token-file",
        str(token_file),
        "--reconnect-delay",
        "30",
        "--max-reconnect-delay",
        "30",
    )
    await proc.wait_stderr("reconnecting in")
    sent_at = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    assert time.monotonic() - sent_at < 2.0


@pytest.fixture
async def unresponsive_server() -> AsyncIterator[str]:
    """A service that accepts the token, then never reads again (not even a close frame)."""
    holding: list[web.WebSocketResponse] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False)
        await ws.prepare(request)
        await ws.receive()  # the AUTH frame
        await ws.send_str('{"auth":"ok"}')
        await ws.send_str('{"id":1,"data":{"id":1}}')
        holding.append(ws)
        await asyncio.Event().wait()  # silence until the test ends
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_sigterm_exits_within_5s_when_the_server_never_answers(
    cli: StartCli, unresponsive_server: str, token_file: Path
) -> None:
    """Even when the close handshake never completes, SIGTERM exits 0 within 5 s."""
    proc = await cli(
        "listen",
        "--url",
        unresponsive_server,
        "--token-file",
        str(token_file),
        "--timeout",
        "30",  # the listener alone would wait this long for the close answer
        "--ping-interval",
        "30",
    )
    assert await proc.line() == b'{"id":1,"data":{"id":1}}\n'
    sent_at = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.finish(timeout=6.0) == 0
    assert time.monotonic() - sent_at < 5.0


async def test_status_line_on_a_terminal_only(emulator: Emulator, token_file: Path) -> None:
    """With stderr on a terminal the live status is drawn there (and wiped at exit);
    stdout, a pipe, still gets plain JSON lines only."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "neuroio",
        "listen",
        "--url",
        emulator.url,
        "--token-file",
        str(token_file),
        "--ping-interval",
        "0.1",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=slave,
        env=clean_env(COLUMNS="200"),
    )
    os.close(slave)
    os.set_blocking(master, False)
    terminal = bytearray()
    loop = asyncio.get_running_loop()

    async def read_terminal_until(marker: bytes, timeout: float = 5.0) -> None:
        deadline = loop.time() + timeout
        while marker not in terminal:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(master, _wake, ready)
            try:
                await asyncio.wait_for(ready, max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                pytest.fail(f"{marker!r} not on the terminal: {bytes(terminal)!r}")
            finally:
                loop.remove_reader(master)
            try:
                terminal.extend(os.read(master, 65536))
            except OSError:  # EIO: the child closed the terminal
                pytest.fail(f"{marker!r} not on the terminal: {bytes(terminal)!r}")

    try:
        await emulator.wait_for_clients(1)
        await emulator.burst(3)
        await read_terminal_until(b"events 3")
        assert b"live" in terminal and b"rtt" in terminal
        assert proc.stdout is not None
        lines = [await asyncio.wait_for(proc.stdout.readline(), 5) for _ in range(3)]
        assert all(line.startswith(b'{"id":') and b"\x1b" not in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        with contextlib.suppress(OSError):
            terminal.extend(os.read(master, 65536))
        # The status line is transient: its last drawing is erased (the summary after it).
        assert terminal.rfind(b"\r\x1b[K") > terminal.rfind(b"/s  reconnects ")
        assert TOKEN.encode() not in terminal
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def test_sigterm_exits_within_5s_when_stdout_is_not_read(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """A reader of stdout that stopped reading does not hold the exit past 5 s."""
    proc = await cli("listen", "--url", emulator.url, "--token-file", str(token_file))
    await emulator.wait_for_clients(1)
    # Far more than a pipe holds: the writes block, the queue fills, reading pauses.
    await emulator.burst(3000)
    await proc.line()  # from here on, stdout is left unread
    sent_at = time.monotonic()
    proc.send(signal.SIGTERM)
    await proc.stderr_closed(timeout=6.0)
    assert time.monotonic() - sent_at < 5.0
    assert await proc.finish() == 0
    assert "output still blocked at exit" in proc.err
    assert "Traceback" not in proc.err


async def test_wss_with_a_private_ca(
    cli: StartCli, tls_emulator: Emulator, ca_file: Path, token_file: Path
) -> None:
    """wss:// verified against --ca-file; without it the certificate is refused (exit 4)."""
    proc = await cli(
        "listen",
        "--url",
        tls_emulator.url,
        "--token-file",
        str(token_file),
        "--ca-file",
        str(ca_file),
        "--count",
        "3",
    )
    assert await proc.finish() == 0
    assert len(proc.stdout.splitlines()) == 3
    refused = await cli(
        "listen",
        "--url",
        tls_emulator.url,
        "--token-file",
        str(token_file),
        "--max-retries",
        "0",
    )
    assert await refused.finish() == 4
    assert "certificate" in refused.err.lower()


async def test_insecure_accepts_a_self_signed_certificate_with_a_warning(
    cli: StartCli, tls_emulator: Emulator, ca_file: Path, token_file: Path
) -> None:
    """--insecure is for local tests: it connects without verifying, and says so loudly."""
    proc = await cli(
        "listen",
        "--url",
        tls_emulator.url,
        "--token-file",
        str(token_file),
        "--insecure",
        "--count",
        "2",
    )
    assert await proc.finish() == 0
    assert len(proc.stdout.splitlines()) == 2
    assert "NOT verified" in proc.err
    both = await cli(
        "listen",
        "--url",
        tls_emulator.url,
        "--token-file",
        str(token_file),
        "--insecure",
        "--ca-file",
        str(ca_file),
    )
    assert await both.finish() == 2
    assert "not both" in both.err


async def test_backfill_prints_and_records_what_was_missed(
    cli: StartCli, token_file: Path, tmp_path: Path
) -> None:
    """--backfill: an event pushed while the connection was dead is fetched from the REST
    API after the reconnect, printed in order, and recorded as backfilled."""
    record = tmp_path / "gap.rec"
    async with Emulator(tokens={TOKEN}, push_while_disconnected=False) as emulator:
        proc = await cli(
            "listen",
            "--url",
            emulator.url,
            "--api-url",
            emulator.api_url,
            "--token-file",
            str(token_file),
            "--backfill",
            "--record",
            str(record),
            "--ping-interval",
            "0.1",
            "--ping-timeout",
            "0.3",
            "--timeout",
            "0.5",
            "--reconnect-delay",
            "0.05",
        )
        await emulator.wait_for_clients(1)
        first = await emulator.emit()
        assert await proc.line() == wire(first)
        # The connection goes silent: the next event is lost for it, as on a dead network.
        emulator.freeze(new_clients=True)
        missed = await emulator.emit()
        await emulator.wait_until(lambda: not emulator.clients[0].open)
        emulator.unfreeze()
        await emulator.wait_for_clients(2)
        assert await proc.line() == wire(missed)
        after = await emulator.emit()
        assert await proc.line() == wire(after)
        proc.send(signal.SIGTERM)
        assert await proc.finish() == 0
    recorded = [json.loads(line) for line in record.read_bytes().splitlines()]
    backfilled = [r for r in recorded if r.get("backfilled")]
    assert [json.loads(r["frame"])["id"] for r in backfilled] == [missed["id"]]
