"""The bridge's options: one typed :class:`BridgeConfig`, validated in one place.

The listener's options are not repeated here: a config embeds one
:class:`~neuroio._config.ConnectionOptions` and one :class:`~neuroio._config.RecoveryOptions`,
the single home of the defaults shared by the listener, the CLI and the bridge. The CLI and
``Bridge(token, sinks, **options)`` speak flat option names (``ping_interval``,
``backfill_max_age``, ``spool_max_bytes``); :meth:`BridgeConfig.from_flat` is the one place that
maps them onto the embedded structs.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import msgspec

from .._config import ConnectionOptions, RecoveryOptions
from .._protocol.gaps import parse_since
from ..exceptions import ConfigurationError
from .spool import DEFAULT_MAX_BYTES

__all__ = [
    "BRIDGE_RECOVERY",
    "DEFAULT_CONNECT_RATE",
    "BridgeConfig",
    "CooldownConfig",
    "FilterConfig",
    "RouteConfig",
    "StreamConfig",
]

DEFAULT_CONNECT_RATE = 20.0
"""Connection attempts per second shared by all the streams of a bridge: a platform-wide
outage ends in a steady climb back, not a reconnect storm."""

# Dots only between other characters: a name is a token of the fleet's NATS keys.
_STREAM_NAME = re.compile(r"(?=.{1,128}\Z)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")

BRIDGE_RECOVERY = RecoveryOptions(backfill=True, backfill_max_events=None, backfill_max_age=None)
"""The bridge's recovery defaults, where they differ from the listener's on purpose: gap
recovery is what makes the bridge lose nothing across reconnects and its own restarts, so it is
on, and no gap is cut short by a count or an age (the listener's defaults bound what a user's
handler is handed at once)."""


class FilterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which events a route takes, in the platform's own vocabulary; every given key must
    hold (``None``: not checked). ``docs/routing.md`` gives each key's meaning.

    Attributes:
        result, mood, liveness: the entry's value is one of these.
        confidence_min, confidence_max, age_min, age_max: inclusive bounds.
        sex: 0 (male) or 1 (female).
        source_id, space_id: the camera's / space's id is one of these.
        source_name: the camera's name matches one of these glob patterns.
        pid: the person id is one of these.
        known: ``True``: the entry has a person id; ``False``: it has none.
        stream: the event's stream (a bridge's ``[[stream]]`` name) matches one of these glob
            patterns; an event of a bridge without streams has none.
        backfilled: ``True``: only events recovered from the REST API; ``False``: only pushed.
        where: a JMESPath expression over the event JSON; the event passes when it is truthy.
    """

    result: tuple[str, ...] | None = None
    mood: tuple[str, ...] | None = None
    liveness: tuple[str, ...] | None = None
    confidence_min: float | None = None
    confidence_max: float | None = None
    age_min: int | None = None
    age_max: int | None = None
    sex: int | None = None
    source_id: tuple[int, ...] | None = None
    source_name: tuple[str, ...] | None = None
    space_id: tuple[int, ...] | None = None
    pid: tuple[str, ...] | None = None
    known: bool | None = None
    stream: tuple[str, ...] | None = None
    backfilled: bool | None = None
    where: str | None = None


class CooldownConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """At most one event per ``key`` per ``seconds`` through a route.

    Attributes:
        key: field paths of the entry (``["pid", "source.id"]``) whose values, together, are
            the key; a missing value is ``unknown`` (all such events share it).
        seconds: the window, from the event let through.
    """

    key: tuple[str, ...]
    seconds: float


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One route: the events its filter and cooldown admit go to the sink ``to`` names.

    Attributes:
        name: names the route in the spool (its cursor), logs and metrics; stable across
            restarts, free of secrets.
        to: the sink URI; topics, subjects, streams, routing keys and file paths in it may be
            templates (:mod:`neuroio._routing.template`).
        filter: which events it takes; ``None``: every event.
        cooldown: at most one event per key per window; ``None``: no cooldown.
    """

    name: str
    to: str
    filter: FilterConfig | None = None
    cooldown: CooldownConfig | None = None


class StreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One event stream of a bridge with several (a ``[[stream]]`` table): a space's token
    and, when it differs from the bridge's, its events and REST URLs.

    Attributes:
        name: names the stream in events (``"stream"``), routes' filters and templates
            (``{stream}``), metrics labels, logs and the fleet's keys; stable across restarts
            (the spool keys the stream's events and its recovery cursor by it). Letters,
            digits, ``_``, ``-`` and ``.``.
        token_file: a file whose first line is the token (read again when it changes).
        token_command: a command (split as a shell would, run without one) printing the
            token; exactly one of ``token_file`` and ``token_command``.
        url, api_url: the events WebSocket and the REST API; ``None``: the bridge's.
    """

    name: str
    token_file: str | None = None
    token_command: str | None = None
    url: str | None = None
    api_url: str | None = None

    def validate(self) -> None:
        """Raise :class:`~neuroio.ConfigurationError` naming what is wrong."""
        if not isinstance(self.name, str) or not _STREAM_NAME.match(self.name):
            raise ConfigurationError(
                f"stream name {self.name!r} must be 1-128 letters, digits, '_', '-' or '.' "
                "(a dot between two others)"
            )
        if (self.token_file is None) == (self.token_command is None):
            raise ConfigurationError(
                f"stream {self.name}: give exactly one of token_file and token_command"
            )


_CONNECTION_FIELDS = frozenset(ConnectionOptions.__struct_fields__)
_RECOVERY_FIELDS = frozenset(RecoveryOptions.__struct_fields__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    """Every option of the bridge, named as the CLI options (``--spool-max-bytes`` is
    ``spool_max_bytes``). ``None`` disables an optional feature. Built valid or not at all.

    Attributes:
        to: sink URIs (see :mod:`neuroio.sinks`); each is a route that takes every event,
            named as its sink.
        streams: the event streams of a bridge serving several spaces, each with its own
            token (``docs/scaling.md``); empty: the one stream of the bridge's own token.
        connect_rate: connection attempts per second shared by all the streams.
        fleet: ``nats://host:port?bucket=...``: share the streams with the other bridges of
            that NATS JetStream key-value bucket, each stream held by one of them
            (``docs/scaling.md``); ``None``: this bridge runs every stream.
        routes: routes with their own filters and cooldowns (``docs/routing.md``).
        spool: spool file; ``None`` for the default in the user's data directory.
        spool_max_bytes: size of stored events at which the socket is paused.
        spool_sync: ``"normal"`` (default: a commit survives the process being killed; a
            power loss may lose the last seconds of commits, which gap recovery fetches again
            from the REST API) or ``"full"`` (survives a power loss too, at several times the
            disk writes).
        webhook_secret: HMAC key for webhook signatures (never in the repr).
        metrics_port: serve ``/metrics`` and ``/healthz`` on this port; ``None``: no server.
        metrics_host: address the metrics server binds.
        health_max_sink_failure: ``/healthz`` fails once a sink has failed this many seconds
            in a row.
        health_max_refused: ``/healthz`` fails once a sink refused this many events for good
            (dead-lettered) in a row, none confirmed between; one confirmed event ends the
            run. ``0``: never.
        sink_retry_delay, sink_max_retry_delay: backoff of a failing sink, and of failing
            spool commits (seconds); also of the start of a sink unreachable at start-up.
        require_sinks: ``True``: a sink unreachable at start-up stops the bridge
            (:class:`~neuroio.exceptions.SinkError`); ``False`` (default): the bridge starts
            without it, spools, reports it on ``/healthz`` and starts it with backoff.
        shutdown_timeout: after a stop request, seconds the bridge may take to commit what it
            received and let each sink finish its batch in flight; past it the rest is
            abandoned (the spool still holds it for the next start).
        connection: how the events connection is made and kept (the listener's options).
        recovery: how gaps are recovered from the REST API (the socket never replays): at
            start-up the entries after the last event the spool committed, and after each
            reconnect those after the last event received. Defaults: :data:`BRIDGE_RECOVERY`.
    """

    to: tuple[str, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    streams: tuple[StreamConfig, ...] = ()
    connect_rate: float = DEFAULT_CONNECT_RATE
    fleet: str | None = dataclasses.field(default=None, repr=False)
    spool: str | None = None
    spool_max_bytes: int | None = DEFAULT_MAX_BYTES
    spool_sync: Literal["full", "normal"] = "normal"
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    health_max_sink_failure: float = 60.0
    health_max_refused: int = 10
    sink_retry_delay: float = 0.5
    sink_max_retry_delay: float = 30.0
    require_sinks: bool = False
    shutdown_timeout: float = 10.0
    connection: ConnectionOptions = ConnectionOptions()
    recovery: RecoveryOptions = BRIDGE_RECOVERY

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_flat(cls, **options: Any) -> BridgeConfig:
        """A config from flat option names (the CLI's): the listener's go into
        :attr:`connection` and :attr:`recovery`, the rest are the bridge's own.

        Raises:
            ConfigurationError: an unknown option name, or a value out of range.
        """
        own: dict[str, Any] = {}
        connection: dict[str, Any] = {}
        recovery: dict[str, Any] = {}
        unknown: list[str] = []
        for name, value in options.items():
            if name in _CONNECTION_FIELDS:
                connection[name] = value
            elif name in _RECOVERY_FIELDS:
                recovery[name] = value
            elif name in _OWN_FIELDS:
                own[name] = value
            else:
                unknown.append(name)
        if unknown:
            raise ConfigurationError(f"invalid bridge option: unknown {', '.join(sorted(unknown))}")
        if "to" in own:
            own["to"] = tuple(own["to"] or ())
        if "routes" in own:
            own["routes"] = tuple(own["routes"] or ())
        if "streams" in own:
            own["streams"] = tuple(own["streams"] or ())
        return cls(
            **own,
            connection=msgspec.structs.replace(ConnectionOptions(), **connection),
            recovery=msgspec.structs.replace(BRIDGE_RECOVERY, **recovery),
        )

    def to_flat(self) -> dict[str, Any]:
        """Every option by its flat (CLI) name, the inverse of :meth:`from_flat`: the
        connection's, then the recovery's, then the bridge's own."""
        flat: dict[str, Any] = msgspec.structs.asdict(self.connection)
        flat.update(msgspec.structs.asdict(self.recovery))
        flat.update((name, getattr(self, name)) for name in _OWN_FIELDS)
        return flat

    def validate(self) -> None:
        """Raise :class:`~neuroio.ConfigurationError` naming the first option out of range."""
        self.connection.validate()
        self.recovery.validate()
        try:
            parse_since(self.recovery.since)  # the listener's own check, made before any I/O
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if self.spool_max_bytes is not None and self.spool_max_bytes <= 0:
            raise ConfigurationError("spool_max_bytes must be positive")
        if self.spool_sync not in ("full", "normal"):
            raise ConfigurationError(
                f"spool_sync must be 'full' or 'normal', got {self.spool_sync!r}"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(f"metrics_port must be 0..65535, got {self.metrics_port}")
        if self.health_max_sink_failure <= 0:
            raise ConfigurationError("health_max_sink_failure must be positive")
        if self.health_max_refused < 0:
            raise ConfigurationError("health_max_refused must be >= 0 (0: never)")
        if self.sink_retry_delay <= 0 or self.sink_max_retry_delay < self.sink_retry_delay:
            raise ConfigurationError("need 0 < sink_retry_delay <= sink_max_retry_delay")
        if self.shutdown_timeout < 0:
            raise ConfigurationError("shutdown_timeout must be >= 0")
        self._validate_streams()

    def _validate_streams(self) -> None:
        if not self.connect_rate > 0:
            raise ConfigurationError("connect_rate must be positive")
        if self.fleet is not None:
            if not self.streams:
                raise ConfigurationError(
                    "a fleet shares named streams: give [[stream]] tables in the config file"
                )
            from ._fleet_uri import parse_fleet_uri

            parse_fleet_uri(self.fleet)  # its mistakes before anything starts (--check too)
        seen: set[str] = set()
        for stream in self.streams:
            stream.validate()
            if stream.name in seen:
                raise ConfigurationError(f"two streams are named {stream.name!r}")
            seen.add(stream.name)


_OWN_FIELDS = tuple(  # in their order of declaration
    f.name for f in dataclasses.fields(BridgeConfig) if f.name not in ("connection", "recovery")
)
