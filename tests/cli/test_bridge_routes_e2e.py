"""Routing end to end: ``neuroio-events bridge --config`` as a subprocess against the independent
server, SIGKILLed three times and disconnected three times, with four routes into the real
Mosquitto, RabbitMQ, PostgreSQL and a SQLite file: each holds exactly the events its filter
admits, PostgreSQL and SQLite each id once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.independent_server import IndependentServer

from ..helpers import eventually
from .conftest import TOKEN, StartCli, clean_env
from .test_bridge_cli import FAST

aiomqtt = pytest.importorskip("aiomqtt")
aio_pika = pytest.importorskip("aio_pika")
asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.mqtt, pytest.mark.amqp, pytest.mark.postgres, pytest.mark.slow]


def fields(event_id: int) -> dict[str, Any]:
    """A mix of exact matches, unknown faces and weaker matches over four cameras."""
    kind = event_id % 3
    source = {"id": event_id % 4 + 1, "name": f"camera {event_id % 4 + 1}"}
    if kind == 0:
        return {"result": "exact", "source": source}
    if kind == 1:
        return {"result": "new", "pid": None, "source": source}
    return {"result": "ha", "confidence": 77.0, "source": source}


async def emit_spread(server: IndependentServer, total: int) -> list[int]:
    """Emit ``total`` mixed events in chunks, letting the loop run between chunks."""
    ids: list[int] = []
    while len(ids) < total:
        ids += await server.emit(min(25, total - len(ids)), fields)
        await asyncio.sleep(0)
    return ids


def is_exact(event_id: int) -> bool:
    return event_id % 3 == 0


def is_unknown(event_id: int) -> bool:
    return event_id % 3 == 1


class Received:
    """What a real MQTT subscriber and a real AMQP consumer got, as (id, topic or key)."""

    def __init__(self) -> None:
        self.mqtt: list[tuple[int, str]] = []
        self.amqp: list[tuple[int, str]] = []


@contextlib.asynccontextmanager
async def consumers(mqtt_url: str, amqp_url: str, tag: str) -> AsyncIterator[tuple[Received, str]]:
    """Subscribed before the bridge starts, so nothing it publishes goes unseen; yields the
    AMQP exchange name."""
    got = Received()
    exchange_name = f"e2e-{tag}"
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(exchange_name, "topic", durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "#")

    async def on_message(message: Any) -> None:
        got.amqp.append((json.loads(message.body)["id"], message.routing_key))
        await message.ack()

    await queue.consume(on_message)
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        await client.subscribe(f"e2e/{tag}/#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = bytes(message.payload)
                if message.topic.value.endswith("/available"):
                    continue
                got.mqtt.append((json.loads(payload)["id"], message.topic.value))

        reader = asyncio.create_task(read())
        try:
            yield got, exchange_name
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader
            await client.publish(f"e2e/{tag}/available", b"", qos=1, retain=True)
    await channel.exchange_delete(exchange_name)
    await connection.close()


def config(tmp_path: Path, tag: str, exchange: str, table: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        f"""
[[route]]
name = "doors"
to = "mqtt://127.0.0.1:1883/e2e/{tag}/doors/{{source.id}}?qos=1&availability=e2e/{tag}/available"
filter = {{ result = ["exact"] }}

[[route]]
name = "cameras"
to = "amqp://guest:guest@127.0.0.1:5672/?exchange={exchange}&routing_key=cam.{{source.id}}"

[[route]]
name = "archive"
to = "postgresql://postgres@127.0.0.1:5432/test?table={table}"

[[route]]
name = "unknown"
to = "sqlite:{tmp_path / "unknown.db"}?table=unknown_faces"
filter = {{ known = false }}
"""
    )
    return path


async def postgres_ids(url: str, table: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        exists = await connection.fetchval("SELECT to_regclass($1)", table)
        if exists is None:
            return []
        rows = await connection.fetch(f"SELECT id FROM {table} ORDER BY id")
        return [row["id"] for row in rows]
    finally:
        await connection.close()


def sqlite_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return [row[0] for row in db.execute("SELECT id FROM unknown_faces ORDER BY id")]
        except sqlite3.OperationalError:  # the table is not created yet
            return []


async def test_four_routes_through_sigkills_and_disconnects_hold_their_subsets(
    cli: StartCli, tmp_path: Path, mqtt_url: str, amqp_url: str, postgres_url: str
) -> None:
    """2,000 events, three SIGKILLs and three forced disconnects with events emitted while the
    bridge is away: MQTT holds the exact matches (at least once), AMQP every event with the
    camera's routing key (at least once), PostgreSQL every event once, SQLite the unknown
    persons once."""
    tag = uuid.uuid4().hex[:10]
    table = f"e2e_{tag}"
    env = clean_env(NEUROIO_API_TOKEN=TOKEN)
    sent: list[int] = []
    try:
        async with (
            IndependentServer(TOKEN) as server,
            consumers(mqtt_url, amqp_url, tag) as (got, exchange),
        ):
            path = config(tmp_path, tag, exchange, table)
            args = [
                "bridge", "--config", str(path), "--url", server.url, "--api-url",
                server.api_url, "--spool", str(tmp_path / "spool.db"), *FAST,
            ]  # fmt: skip
            connections = 0
            for _ in range(3):
                proc = await cli(*args, env=env)
                connections += 1
                await server.wait_live(connections, timeout=15)
                sent += await emit_spread(server, 200)
                await server.drop_all()
                sent += await server.emit(100, fields)  # only the REST API has these
                connections += 1
                await server.wait_live(connections, timeout=15)
                sent += await emit_spread(server, 200)
                await eventually(
                    lambda: len(sqlite_ids(tmp_path / "unknown.db")) > 0, "a first delivery", 15
                )
                proc.proc.send_signal(signal.SIGKILL)
                await proc.kill()
                sent += await server.emit(100, fields)  # while no bridge runs
            proc = await cli(*args, env=env)
            await server.wait_live(connections + 1, timeout=15)
            sent += await emit_spread(server, 200)
            assert len(sent) == 2000

            exact = {i for i in sent if is_exact(i)}
            unknown = [i for i in sent if is_unknown(i)]

            async def all_delivered() -> bool:
                return (
                    {i for i, _ in got.mqtt} >= exact
                    and {i for i, _ in got.amqp} >= set(sent)
                    and len(await postgres_ids(postgres_url, table)) >= len(sent)
                    and len(sqlite_ids(tmp_path / "unknown.db")) >= len(unknown)
                )

            await eventually(all_delivered, "every route's subset delivered", 40)
            proc.send(signal.SIGTERM)
            assert await proc.finish() == 0, proc.stderr.decode(errors="replace")[-2000:]

        assert {i for i, _ in got.mqtt} == exact  # at least once, and nothing else
        assert all(topic == f"e2e/{tag}/doors/{i % 4 + 1}" for i, topic in got.mqtt)
        assert {i for i, _ in got.amqp} == set(sent)
        assert all(key == f"cam.{i % 4 + 1}" for i, key in got.amqp)
        assert await postgres_ids(postgres_url, table) == sorted(sent)  # each id once
        assert sqlite_ids(tmp_path / "unknown.db") == sorted(unknown)  # each id once
    finally:
        connection = await asyncpg.connect(postgres_url)
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()
