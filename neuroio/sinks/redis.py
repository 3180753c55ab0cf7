"""``redis://host:port/db?stream=neuroio:events&maxlen=N``: events added to a Redis Stream.

Each event becomes one stream entry with the fields ``id`` (the event id) and ``event`` (its
JSON). The add is exactly-once per event id, across retries and across bridges sharing the
stream: a Lua script, atomic in Redis, sets the key ``<stream>:seen:<id>`` with ``NX`` and an
expiry, and runs ``XADD`` only if that key did not exist. A repeat within the dedupe window
(``dedupe_ttl``, default one day) is dropped. The dedupe keys take roughly 100 bytes of Redis
memory per event for that long.

Query options: ``stream`` (default ``neuroio:events``), ``maxlen`` (trim the stream to about N
entries, ``XADD MAXLEN ~``; default no trim), ``dedupe_ttl`` (seconds), ``name``. ``rediss://``
uses TLS. In Redis Cluster the dedupe keys are not declared to the script: give the stream a
hash tag (``{neuroio}:events``) so they land in its slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..exceptions import ConfigurationError, MissingExtraError, SinkError
from .base import Sink, SpooledEvent, parse_int, redact_uri

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("redis", "the redis:// sink") from exc

__all__ = ["RedisSink"]

DEFAULT_STREAM = "neuroio:events"
DEFAULT_DEDUPE_TTL = 86_400
# Events per script call: long enough to amortise the round trip, short enough not to stall
# Redis (a script blocks the server while it runs).
_CHUNK = 200

# KEYS[1] = stream; ARGV = ttl, maxlen (0 = none), then pairs of (event id, event JSON).
_SCRIPT = """
local ttl = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('SET', KEYS[1] .. ':seen:' .. id, '1', 'NX', 'EX', ttl) then
        if maxlen > 0 then
            redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'id', id, 'event', ARGV[i + 1])
        else
            redis.call('XADD', KEYS[1], '*', 'id', id, 'event', ARGV[i + 1])
        end
        added = added + 1
    end
end
return added
"""


class RedisSink(Sink):
    """Adds events to a Redis Stream, each event id once.

    Args:
        uri: ``redis://[user:password@]host:port/db?stream=...&maxlen=N&dedupe_ttl=S``.

    Attributes:
        added: entries added by this sink; events dropped as repeats are not counted.

    Raises:
        ConfigurationError: the URI or an option is invalid.
    """

    max_batch = 2000

    def __init__(self, uri: str) -> None:
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise ConfigurationError(f"sink {redact_uri(uri)}: invalid URL: {exc}") from None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigurationError(f"sink {redact_uri(uri)}: expected redis://host:port/db")
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigurationError(f"sink {redact_uri(uri)}: the database must be a number")
        self.stream = DEFAULT_STREAM
        self.maxlen = 0
        self.dedupe_ttl = DEFAULT_DEDUPE_TTL
        name: str | None = None
        kept: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "stream":
                if not value:
                    raise ConfigurationError(f"sink {redact_uri(uri)}: stream must not be empty")
                self.stream = value
            elif key == "maxlen":
                self.maxlen = parse_int(value, option="maxlen", uri=uri, minimum=0)
            elif key == "dedupe_ttl":
                self.dedupe_ttl = parse_int(value, option="dedupe_ttl", uri=uri, minimum=1)
            elif key == "name":
                name = value
            else:
                # Connection options (e.g. socket_timeout) go to redis-py.
                kept.append((key, value))
        self._url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", urlencode(kept), ""))
        shown = urlunsplit((parts.scheme, parts.netloc, f"/{db}", f"stream={self.stream}", ""))
        self.name = name or redact_uri(shown)
        self.added = 0
        self._client: Any = None
        self._script: Any = None

    def __repr__(self) -> str:
        return f"<RedisSink {self.name}>"

    async def start(self) -> None:
        """Connect, check the server answers, and load the script."""
        try:
            self._client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
            )
        except (ValueError, RedisError) as exc:
            raise ConfigurationError(f"sink {self.name}: {exc}") from None
        try:
            await self._client.ping()
            self._script = self._client.register_script(_SCRIPT)
        except RedisError as exc:
            raise SinkError(f"sink {self.name}: Redis is unreachable: {exc}") from exc
        except OSError as exc:
            raise SinkError(f"sink {self.name}: Redis is unreachable: {exc}") from exc

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Add the events with one round trip (several script calls pipelined)."""
        if self._client is None or self._script is None:
            raise SinkError(f"sink {self.name}: not started")
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(events), _CHUNK):
                    args: list[Any] = [self.dedupe_ttl, self.maxlen]
                    for event in events[start : start + _CHUNK]:
                        args.append(event.id)
                        args.append(event.payload)
                    await self._script(keys=[self.stream], args=args, client=pipe)
                results = await pipe.execute(raise_on_error=True)
        except ResponseError as exc:
            # WRONGTYPE (the key is not a stream), OOM, a read-only replica: retrying may
            # help once the operator fixes it, and dropping events would be worse.
            raise SinkError(f"sink {self.name}: Redis refused: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise SinkError(f"sink {self.name}: {type(exc).__name__}: {exc}") from exc
        self.added += sum(int(r) for r in results)

    async def aclose(self) -> None:
        """Close the connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
