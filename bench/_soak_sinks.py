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
    deleted += int(await client.unlink(stream, stream + ASIDE))
    return deleted


# The stream is moved aside and a string put in its place in one script run (atomic in
# Redis), so no XADD of the sink can land between the two steps and create a new stream.
_WRONG_TYPE = """
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
_RIGHT_TYPE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RENAME', KEYS[2], KEYS[1])
return 1
"""
ASIDE = ":aside"
"""Suffix of the key the stream is kept under while its own key has the wrong type."""


async def redis_wrong_type(client: Any, stream: str) -> bool:
    """Move the stream to ``<stream>:aside`` and make its key a string, atomically; False when
    the key is not a stream (nothing is done)."""
    done = await client.eval(_WRONG_TYPE, 2, stream, stream + ASIDE, "not a stream")
    return bool(done)


async def redis_right_type(client: Any, stream: str) -> bool:
    """Undo :func:`redis_wrong_type` atomically (the string goes, the stream comes back with
    every entry it had); False when there was nothing aside."""
    done = await client.eval(_RIGHT_TYPE, 2, stream, stream + ASIDE)
    return bool(done)


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


class Tails:
    """Every id each sink has stored so far, read incrementally (the file from where the last
    read stopped, Redis with ``XRANGE`` after the last entry, NATS with one pull consumer).

    Used while the soak runs, to tell when a given set of ids (a gap) has reached every sink;
    :meth:`missing` polls each sink once.
    """

    def __init__(self, path: Path, redis: Any, redis_stream: str, nc: Any, nats_stream: str,
                 nats_subject: str) -> None:  # fmt: skip
        self.path = path
        self.redis = redis
        self.redis_stream = redis_stream
        self.nc = nc
        self.nats_stream = nats_stream
        self.nats_subject = nats_subject
        self.seen: dict[str, set[int]] = {"file": set(), "redis": set(), "nats": set()}
        self._file_offset = 0
        self._file_partial = b""
        self._redis_after = "-"
        self._nats_sub: Any = None
        self._nats_seq = 0

    async def missing(self, ids: set[int]) -> dict[str, set[int]]:
        """Poll every sink once; the ids of ``ids`` each sink does not hold yet."""
        self._poll_file()
        await self._poll_redis()
        await self._poll_nats()
        return {name: ids - seen for name, seen in self.seen.items()}

    async def aclose(self) -> None:
        """Drop the NATS consumer."""
        if self._nats_sub is not None:
            with contextlib.suppress(Exception):
                await self._nats_sub.unsubscribe()
            self._nats_sub = None

    def _poll_file(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._file_offset)
            data = f.read()
        self._file_offset += len(data)
        *lines, self._file_partial = (self._file_partial + data).split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.seen["file"].add(int(json.loads(line)["id"]))

    async def _poll_redis(self) -> None:
        while True:
            start = self._redis_after
            if start != "-":
                ms, _, seq = start.partition("-")
                start = f"{ms}-{int(seq) + 1}"
            chunk = await self.redis.xrange(self.redis_stream, min=start, max="+", count=10_000)
            if not chunk:
                return
            for _entry_id, fields in chunk:
                with contextlib.suppress(KeyError, ValueError):
                    self.seen["redis"].add(int(fields[b"id"]))
            self._redis_after = chunk[-1][0].decode()

    async def _poll_nats(self) -> None:
        import nats.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        if self._nats_sub is None:
            if await nats_count(self.nc, self.nats_stream) == 0:
                return
            # The consumer starts after the last message read, so one that went away (idle
            # past its threshold) is replaced without reading anything twice.
            config = ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._nats_seq + 1,
                inactive_threshold=300.0,
            )
            self._nats_sub = await self.nc.jetstream().pull_subscribe(
                self.nats_subject, durable=None, stream=self.nats_stream, config=config
            )
        while True:
            try:
                msgs = await self._nats_sub.fetch(1000, timeout=0.5)
            except nats.errors.TimeoutError:
                return
            except Exception:
                await self.aclose()
                return
            for msg in msgs:
                self._nats_seq = max(self._nats_seq, int(msg.metadata.sequence.stream))
                header = (msg.headers or {}).get("Nats-Msg-Id")
                with contextlib.suppress(ValueError):
                    self.seen["nats"].add(int(str(header)))
            if len(msgs) < 1000:
                return
