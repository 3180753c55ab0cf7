"""What the soak's sinks hold: event ids read back from the file, Redis and NATS, and cleanup.

Every reader returns the ids in the order the sink stored them, repeats included, so the
caller can count both the missing and the duplicated ones.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
NATS_HOST = "127.0.0.1"
NATS_PORT = 4222
REDIS_DB = 13


@dataclass
class Stored:
    """The event ids one sink holds, in its order, and entries that were not readable."""

    ids: list[int] = field(default_factory=list)
    unreadable: int = 0


def read_file(path: Path) -> Stored:
    """Ids of the JSON lines of the file sink (an unparseable line counts as unreadable)."""
    out = Stored()
    if not path.exists():
        return out
    with path.open("rb") as f:
        for line in f:
            try:
                out.ids.append(int(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                out.unreadable += 1
    return out


def count_file(path: Path) -> int:
    """Complete lines in the file sink (cheap progress check)."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


async def redis_client() -> Any:
    """A client straight to Redis (not through the soak's proxy)."""
    import redis.asyncio as aioredis

    return aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=10)


async def read_redis(client: Any, stream: str) -> Stored:
    """Ids of the entries of a Redis stream, read with ``XRANGE`` in chunks."""
    out = Stored()
    start = "-"
    while True:
        chunk = await client.xrange(stream, min=start, max="+", count=10_000)
        if not chunk:
            return out
        for _entry_id, fields in chunk:
            try:
                out.ids.append(int(fields[b"id"]))
            except (KeyError, ValueError):
                out.unreadable += 1
        last = chunk[-1][0].decode()
        ms, _, seq = last.partition("-")
        start = f"{ms}-{int(seq) + 1}"


async def delete_redis(client: Any, stream: str) -> int:
    """Delete the stream and its dedupe keys; returns how many keys went."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(f"{stream}:seen:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            deleted += int(await client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(await client.unlink(*batch))
    deleted += int(await client.unlink(stream))
    return deleted


async def nats_connect() -> Any:
    """A client straight to NATS (not through the soak's proxy)."""
    import nats

    return await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}", connect_timeout=5)


async def nats_count(nc: Any, stream: str) -> int:
    """Messages held by a JetStream stream (0 if it does not exist yet)."""
    from nats.js.errors import NotFoundError

    try:
        info = await nc.jetstream().stream_info(stream)
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def read_nats(nc: Any, stream: str, subject: str) -> Stored:
    """Event ids (``Nats-Msg-Id``) of every message of the stream, via a pull consumer."""
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    out = Stored()
    total = await nats_count(nc, stream)
    if total == 0:
        return out
    js = nc.jetstream()
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0
    )
    sub = await js.pull_subscribe(subject, durable=None, stream=stream, config=config)
    try:
        seen = 0
        while seen < total:
            try:
                msgs = await sub.fetch(1000, timeout=5)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                seen += 1
                header = (msg.headers or {}).get("Nats-Msg-Id")
                try:
                    out.ids.append(int(str(header)))
                except ValueError:
                    out.unreadable += 1
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def delete_nats(nc: Any, stream: str) -> None:
    """Delete the JetStream stream if it exists."""
    from nats.js.errors import NotFoundError

    with contextlib.suppress(NotFoundError):
        await nc.jetstream().delete_stream(stream)
