"""``redis://host:port/db?stream=neuroio:events&maxlen=N``: events added to a Redis Stream.

Each event becomes one stream entry with the fields ``id`` (the event id) and ``event`` (its
JSON). The add is exactly-once per event id, across retries and across bridges sharing the
stream: a Lua script, atomic in Redis, skips an event whose key ``<stream>:seen:<id>`` exists,
and otherwise runs ``XADD`` and only then sets that key, with an expiry. A repeat within the
dedupe window (``dedupe_ttl``, default one day) is dropped. The dedupe keys take roughly 100
bytes of Redis memory per event for that long.

The order inside the script is what makes a failure safe. Redis does not undo the writes of a
script that fails part-way, so the script never writes a mark before the entry it vouches for:

* ``XADD`` fails (the key is not a stream, out of memory): that event and those after it in
  the script have neither entry nor mark, and the retry adds them;
* ``SET`` fails after its ``XADD`` (out of memory): the entry exists without its mark, and the
  retry adds it a second time: a repeat, never a loss;
* a script cannot be stopped part-way once it has written (``SCRIPT KILL`` refuses it), so
  there is no other half-done state.

The stream name may be a template (:mod:`neuroio._routing.template`):
``stream=neuroio:{source.id}`` adds each event to its camera's stream. The events of a batch
are then grouped per stream (in order within each), and each stream has its own dedupe keys
(``<stream>:seen:<id>``), so an event is once in the stream it belongs to. A rendered value
holds no whitespace, ``{`` or ``}`` (each becomes ``_``: braces would change a Redis
Cluster hash tag). A name without placeholders is written without decoding events.

Query options: ``stream`` (default ``neuroio:events``; a template), ``maxlen`` (trim the
stream to about N entries, ``XADD MAXLEN ~``; default no trim), ``dedupe_ttl`` (seconds or
``1d``, ``12h``...),
``name``, and the redis-py connection options ``socket_timeout``, ``socket_connect_timeout``
(seconds), ``socket_keepalive``, ``retry_on_timeout`` (true/false), ``health_check_interval``
(seconds), ``max_connections``, ``socket_read_size``, ``protocol`` (2 or 3), ``client_name``,
``username``, ``password``, ``db``; with ``rediss://`` (TLS) also ``ssl_cert_reqs``
(none/optional/required), ``ssl_check_hostname``, ``ssl_ca_certs``, ``ssl_ca_path``,
``ssl_certfile``, ``ssl_keyfile``. In Redis Cluster the dedupe keys are not declared to the
script: give the stream a hash tag (``{neuroio}:events``) so they land in its slot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .._routing.template import Template
from ..exceptions import ConfigurationError, MissingExtraError, SinkError
from ._render import Renderer
from ._uri import Bool, Choice, Duration, Int, Option, Text, parse_options, parse_url, redact_uri
from .base import Sink, SpooledEvent

try:
    import redis.asyncio as aioredis
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        InvalidResponse,
        RedisError,
        ResponseError,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("redis", "the redis:// sink") from exc

__all__ = ["RedisSink", "clean_stream_value"]

_UNSAFE = re.compile(r"[\s{}]")


def _first_bytes(exc: InvalidResponse, limit: int = 40) -> str:
    """The start of what a non-Redis server sent, from redis-py's ``Protocol Error: b'...'``."""
    text = str(exc).removeprefix("Protocol Error: ")
    return text if len(text) <= limit else text[:limit] + "…'"


def clean_stream_value(value: str) -> str:
    """One rendered value as part of a stream name: whitespace, ``{`` and ``}`` become ``_``."""
    return _UNSAFE.sub("_", value)


DEFAULT_STREAM = "neuroio:events"
DEFAULT_DEDUPE_TTL = 86_400
# Events per script call: long enough to amortise the round trip, short enough not to stall
# Redis (a script blocks the server while it runs).
_CHUNK = 200

# KEYS[1] = stream; ARGV = ttl, maxlen (0 = none), then pairs of (event id, event JSON).
# XADD before SET, never the reverse: see the module documentation.
_SCRIPT = """
local ttl = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 2 do
    local id = ARGV[i]
    local seen = KEYS[1] .. ':seen:' .. id
    if redis.call('EXISTS', seen) == 0 then
        if maxlen > 0 then
            redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'id', id, 'event', ARGV[i + 1])
        else
            redis.call('XADD', KEYS[1], '*', 'id', id, 'event', ARGV[i + 1])
        end
        redis.call('SET', seen, '1', 'EX', ttl)
        added = added + 1
    end
end
return added
"""


def _not_empty(value: str) -> str | None:
    return None if value else "not be empty"


def _database(value: str) -> str | None:
    return None if value.isdigit() else "be a number"


_STREAM = Text("stream", DEFAULT_STREAM, check=_not_empty)
_MAXLEN = Int("maxlen", 0, minimum=0)
_DEDUPE_TTL = Duration("dedupe_ttl", float(DEFAULT_DEDUPE_TTL), minimum=1, whole=True)
_NAME = Text("name", "")
_DB = Text("db", "", check=_database)
_SINK_OPTIONS: tuple[Option[Any], ...] = (_STREAM, _MAXLEN, _DEDUPE_TTL, _NAME, _DB)
# Connection options handed to redis-py by name; the defaults are the sink's own.
_CONNECTION: tuple[Option[Any], ...] = (
    Duration("socket_timeout", 30.0),
    Duration("socket_connect_timeout", 5.0),
    Duration("health_check_interval", 30.0, whole=True),
    Bool("socket_keepalive", False),
    Bool("retry_on_timeout", False),
    Int("max_connections", 0, minimum=1),
    Int("socket_read_size", 0, minimum=1),
    Choice("protocol", "2", choices=("2", "3")),
    Text("client_name", ""),
    Text("username", ""),
    Text("password", ""),
)
_TLS: tuple[Option[Any], ...] = (
    Choice("ssl_cert_reqs", "required", choices=("none", "optional", "required")),
    Bool("ssl_check_hostname", True),
    Text("ssl_ca_certs", ""),
    Text("ssl_ca_path", ""),
    Text("ssl_certfile", ""),
    Text("ssl_keyfile", ""),
)
# Always passed: the sink's defaults differ from redis-py's (which waits forever).
_ALWAYS = ("socket_timeout", "socket_connect_timeout", "health_check_interval")


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
        url = parse_url(uri, schemes=("redis", "rediss"), expected="redis://host:port/db")
        connection = _CONNECTION + (_TLS if url.scheme == "rediss" else ())
        options = parse_options(
            url.raw_query_string, _SINK_OPTIONS + connection, uri=uri, sink="Redis"
        )
        db = options[_DB] or url.path.strip("/") or "0"
        if _database(db) is not None:
            raise ConfigurationError(f"sink {redact_uri(uri)}: the database must be a number")
        self.stream = options[_STREAM]
        self.template = Template(self.stream, what=f"sink {redact_uri(uri)}: stream")
        """The stream name as a template (static when it has no placeholder)."""
        self._renderer = Renderer(self.template, clean_stream_value)
        self.maxlen = options[_MAXLEN]
        self.dedupe_ttl = int(options[_DEDUPE_TTL])
        self._connection = {o.name: o.default for o in connection if o.name in _ALWAYS}
        self._connection.update(options.chosen(connection))
        if "protocol" in self._connection:
            self._connection["protocol"] = int(self._connection["protocol"])
        # The address as the user spelled it: the name keys the sink's cursor in the spool,
        # so it must not change when a library normalises URLs differently.
        base = f"{url.scheme}://{urlsplit(uri).netloc}/{db}"
        self._url = base
        self.name = options[_NAME] or redact_uri(f"{base}?stream={self.stream}")
        self.added = 0
        self._client: Any = None
        self._script: Any = None

    def __repr__(self) -> str:
        return f"<RedisSink {self.name}>"

    async def start(self) -> None:
        """Connect, check the server answers, and load the script.

        Raises:
            SinkError: Redis is unreachable.
            ConfigurationError: Redis rejected the credentials.
        """
        try:
            self._client = aioredis.Redis.from_url(self._url, **self._connection)
        except (ValueError, RedisError) as exc:
            raise ConfigurationError(f"sink {self.name}: {exc}") from None
        try:
            await self._client.ping()
            self._script = self._client.register_script(_SCRIPT)
        except (AuthenticationError, AuthorizationError) as exc:
            # Redis answered and refused us: retrying will not help, the URI must change.
            given = "password" in self._connection or urlsplit(self._url).password is not None
            hint = "" if given else " (the URI gives no password)"
            raise ConfigurationError(
                f"sink {self.name}: Redis rejected the credentials{hint}: {exc}"
            ) from None
        except InvalidResponse as exc:
            # Something else answered (a NATS banner, an HTTP error page): say so in one
            # short line instead of quoting its whole greeting.
            where = urlsplit(self._url).netloc.rpartition("@")[2]
            raise ConfigurationError(
                f"sink {self.name}: {where} does not speak Redis (it sent {_first_bytes(exc)})"
            ) from None
        except RedisError as exc:
            raise SinkError(f"sink {self.name}: Redis is unreachable: {exc}") from exc
        except OSError as exc:
            raise SinkError(f"sink {self.name}: Redis is unreachable: {exc}") from exc

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Add the events with one round trip (several script calls pipelined)."""
        if self._client is None or self._script is None:
            raise SinkError(f"sink {self.name}: not started")
        if self.template.is_static:
            groups: dict[str, Sequence[SpooledEvent]] = {self.stream: events}
        else:
            groups = self._by_stream(events)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, members in groups.items():
                    for start in range(0, len(members), _CHUNK):
                        args: list[Any] = [self.dedupe_ttl, self.maxlen]
                        for event in members[start : start + _CHUNK]:
                            args.append(event.id)
                            args.append(event.payload)
                        await self._script(keys=[stream], args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise SinkError(f"sink {self.name}: {type(exc).__name__}: {exc}") from exc
        # Calls that ran added their entries even when another call of the batch failed.
        self.added += sum(r for r in results if isinstance(r, int))
        for result in results:
            if isinstance(result, ResponseError):
                # WRONGTYPE (the key is not a stream), OOM, a read-only replica: retrying
                # may help once the operator fixes it, and dropping events would be worse.
                raise SinkError(f"sink {self.name}: Redis refused: {result}") from result
            if isinstance(result, BaseException):
                raise SinkError(f"sink {self.name}: {type(result).__name__}: {result}")

    def _by_stream(self, events: Sequence[SpooledEvent]) -> dict[str, Sequence[SpooledEvent]]:
        groups: dict[str, list[SpooledEvent]] = {}
        render = self._renderer.render
        for event in events:
            groups.setdefault(render(event.payload), []).append(event)
        return dict(groups)

    async def aclose(self) -> None:
        """Close the connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
