"""The bridge CLI writing to SQLite (and PostgreSQL), SIGKILLed mid-stream and restarted on the
same spool: every event in the table, each id once (batches sent again after a kill are
skipped by ``ON CONFLICT (id) DO NOTHING``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from neuroio.testing import Emulator

from ..helpers import eventually

TOKEN = "tok-sql-kill-5b2d4f60a8e1c3b5"
FAST = [
    "--ping-interval", "0.2", "--reconnect-delay", "0.01", "--max-reconnect-delay", "0.1",
    "--sink-retry-delay", "0.01", "--sink-max-retry-delay", "0.1", "--no-uvloop",
]  # fmt: skip


class Bridges:
    """Starts ``python -m neuroio bridge`` processes; kills any left at the end."""

    def __init__(self, server: Emulator, tmp_path: Path, sinks: list[str]) -> None:
        self.args = ["-m", "neuroio", "bridge", "--url", server.url, "--api-url", server.api_url]
        self.args += ["--spool", str(tmp_path / "spool.db")]
        for sink in sinks:
            self.args += ["--to", sink]
        self.args += FAST
        self.log = tmp_path / "bridge.log"
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
        env["NEUROIO_API_TOKEN"] = TOKEN
        with open(self.log, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def sqlite_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM neuroio_events ORDER BY id")]
    except sqlite3.OperationalError:  # the table is not created yet
        return []
    finally:
        conn.close()


async def kill_and_restart_cycles(
    server: Emulator, bridges: Bridges, count: Callable[[], Awaitable[int]]
) -> list[int]:
    """Three runs SIGKILLed mid-stream, with events emitted while no bridge runs; then a last
    run that is stopped with SIGTERM once every event is stored. Returns the ids emitted."""
    sent: list[int] = []
    for cycle in range(3):
        proc = await bridges.start()
        await server.wait_for_clients(cycle + 1, timeout=15)
        for _ in range(150):
            sent.append((await server.emit())["id"])

        async def enough(target: int = len(sent) - 100) -> bool:
            return await count() >= target

        await eventually(enough, "most events stored before the kill", 15)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        sent += [e["id"] for e in await server.burst(50)]  # only gap recovery brings these
    proc = await bridges.start()

    async def everything() -> bool:
        return await count() >= len(sent)

    await eventually(everything, "every event stored", 20)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0, bridges.log.read_text()
    return sent


@pytest.fixture
async def server() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as emulator:
        yield emulator


async def test_sigkills_leave_each_id_once_in_sqlite(server: Emulator, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    bridges = Bridges(server, tmp_path, [f"sqlite:{db}"])

    async def count() -> int:
        return len(sqlite_ids(db))

    try:
        sent = await kill_and_restart_cycles(server, bridges, count)
    finally:
        await bridges.close()
    assert len(sent) == 600
    assert sqlite_ids(db) == sorted(sent)


@pytest.mark.postgres
async def test_sigkills_leave_each_id_once_in_postgres_and_sqlite(
    server: Emulator, tmp_path: Path, postgres_url: str
) -> None:
    import asyncpg

    table = f"t_{uuid.uuid4().hex[:12]}"
    db = tmp_path / "history.db"
    bridges = Bridges(server, tmp_path, [f"{postgres_url}?table={table}", f"sqlite:{db}"])
    conn = await asyncpg.connect(postgres_url)

    async def pg_ids() -> list[int]:
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            return []
        return [r["id"] for r in await conn.fetch(f'SELECT id FROM "{table}" ORDER BY id')]

    async def count() -> int:
        return min(len(await pg_ids()), len(sqlite_ids(db)))

    try:
        sent = await kill_and_restart_cycles(server, bridges, count)
        assert await pg_ids() == sorted(sent)
        assert sqlite_ids(db) == sorted(sent)
    finally:
        await bridges.close()
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()
