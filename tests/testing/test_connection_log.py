"""``Emulator(connection_log=...)`` and the records behind it, with real WebSocket clients."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from neuroio.testing import Emulator, connect_rate, overlaps, read_connection_log

from .conftest import auth_frame, recv_json


async def test_log_lines_and_records_per_space(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Two clients of space 2 at once and one that never authenticates: open, auth and close
    lines with the space and who closed, the records' authenticated_at, space and peer, an
    overlap measured in space 2 only, and no token anywhere in the file."""
    path = tmp_path / "conn.jsonl"
    async with Emulator(spaces=3, connection_log=path) as emu:
        token = emu.space_tokens[1]
        first = await session.ws_connect(emu.url)
        await first.send_str(auth_frame(token))
        assert await recv_json(first) == {"auth": "ok"}
        local = first.get_extra_info("sockname")
        second = await session.ws_connect(emu.url)
        await second.send_str(auth_frame(token))
        assert await recv_json(second) == {"auth": "ok"}
        silent = await session.ws_connect(emu.url)
        await first.close()
        await emu.wait_until(lambda: emu.clients[0].closed_at is not None)
        await emu.abort_clients()  # the second and the silent one: "abort"
        records = list(emu.clients)
        for ws in (second, silent):
            await ws.close()
    one, two, three = records
    assert (one.space, two.space, three.space) == (2, 2, None)
    assert one.authenticated_at is not None and two.authenticated_at is not None
    assert one.connected_at <= one.authenticated_at <= two.authenticated_at
    assert three.authenticated_at is None
    assert local is not None and one.peer == f"127.0.0.1:{local[1]}"
    assert overlaps(records) == {2: one.closed_at - two.authenticated_at}  # type: ignore[operator]

    text = path.read_text()
    assert token not in text and "token" not in text
    lines = read_connection_log(path)
    assert [(x["conn"], x["event"], x["space"], x["by"]) for x in lines] == [
        (1, "open", None, None),
        (1, "auth", 2, None),
        (2, "open", None, None),
        (2, "auth", 2, None),
        (3, "open", None, None),
        (1, "close", 2, "client"),
        (2, "close", 2, "abort"),
        (3, "close", None, "abort"),
    ]
    assert lines[0]["peer"] == one.peer and "peer" not in lines[1]
    assert abs(lines[0]["t"] - time.time()) < 60  # wall clock, not monotonic
    assert list(overlaps(lines)) == [2] and 0 < overlaps(lines)[2] < 60
    assert connect_rate(lines) == 3.0 == connect_rate(records)


async def test_log_appends_across_restarts(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A stopped and started emulator appends to the same file; connection ids go on."""
    path = tmp_path / "conn.jsonl"
    emu = Emulator(connection_log=path)
    for _ in range(2):
        async with emu:
            async with session.ws_connect(emu.url) as ws:
                await ws.send_str(auth_frame("any"))
                assert await recv_json(ws) == {"auth": "ok"}
    events = [(x["conn"], x["event"]) for x in read_connection_log(path)]
    assert events == [(1, "open"), (1, "auth"), (1, "close"), (2, "open"), (2, "auth"),
                      (2, "close")]  # fmt: skip
    assert {x["space"] for x in read_connection_log(path)} == {None}
