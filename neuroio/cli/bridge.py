"""``neuroio-events bridge``: every event to files, webhooks, Redis Streams and NATS JetStream.

The command only parses options into a :class:`~neuroio.bridge.BridgeConfig` (its field names
are the options' names) and runs the :class:`~neuroio.bridge.Bridge` until SIGINT/SIGTERM.
Logs go to stderr; stdout stays empty unless a sink is ``file:-``. See ``docs/bridge.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec
from click.core import ParameterSource

from .. import _redact
from .._io import write_all
from .._token import token_file as token_file_provider
from ..bridge import BRIDGE_RECOVERY, Bridge
from ..bridge._configfile import LOG_LEVELS, ConfigFile, check_sinks, parse_size
from ..bridge._configfile import load as load_config
from ..bridge.config import BridgeConfig, FilterConfig
from ..bridge.spool import DEFAULT_MAX_BYTES
from ..exceptions import ConfigurationError
from ..sinks import redact_uri
from ._options import (
    ConnectionSettings,
    ListenerSettings,
    LogSettings,
    Secret,
    connection_options,
    listener_options,
    logging_options,
    loop_option,
)
from ._run import EXIT_OK, EXIT_USAGE, StopSignals, fail, run

__all__ = ["ByteSize", "command", "serve"]

logger = logging.getLogger("neuroio.cli")

# Gap recovery is what makes the bridge lose nothing across its own restarts, so for this
# command it is on, and unbounded, unless the user says otherwise (listen's defaults differ);
# the values are BridgeConfig's own (0 is the CLI's "no limit").
_DEFAULTS = {
    "backfill": BRIDGE_RECOVERY.backfill,
    "backfill_max_events": BRIDGE_RECOVERY.backfill_max_events or 0,
    "backfill_max_age": BRIDGE_RECOVERY.backfill_max_age or 0.0,
}


class ByteSize(click.ParamType[int]):
    """A positive number of bytes: ``1073741824``, ``512MiB``, ``1GiB``, ``2GB``."""

    name = "bytes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Parse ``value`` into a number of bytes."""
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


async def serve(
    token: Secret,
    options: dict[str, Any],
    *,
    ssl_context: ssl.SSLContext | None = None,
    signals: StopSignals | None = None,
) -> int:
    """Run a bridge built from CLI-style ``options`` until SIGINT/SIGTERM.

    The first signal asks the bridge to stop gracefully, a second one to stop at once
    (:meth:`~neuroio.bridge.Bridge.request_stop`); the bridge owns that policy.

    Returns:
        The exit code, 0.

    Raises:
        ConfigurationError: a bad option or sink URI, a missing extra, the metrics port in use.
        SpoolError: the spool is corrupt, unwritable or in use.
        SinkError: a sink is unreachable at start-up.
        AuthenticationError: the token was rejected.
        ConnectionFailedError: ``max_retries`` was exhausted.
    """
    bridge = Bridge.from_options(token.source(), ssl=ssl_context, **options)
    own_signals = signals is None
    if signals is None:
        signals = StopSignals(on_force=bridge.request_stop)
        signals.install()
    requested = signals.requested

    async def first_signal() -> None:
        await requested.wait()
        bridge.request_stop()

    watcher = asyncio.create_task(first_signal(), name="neuroio-cli-stop")
    try:
        await bridge.run()
        return EXIT_OK
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if own_signals:
            signals.remove()


def _hide_drain_timeout(command: click.Command) -> click.Command:
    # The listener's --drain-timeout is a stdout-writing concern of `listen`; the bridge bounds
    # its own shutdown (the handler commits to the spool, sinks get their batch in flight).
    for param in command.params:
        if param.name == "drain_timeout" and isinstance(param, click.Option):
            param.hidden = True
    return command


@_hide_drain_timeout
@click.command(
    "bridge",
    short_help="Deliver every event to files, webhooks, Redis, NATS (durable spool).",
    context_settings={"default_map": _DEFAULTS},
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    default=None,
    envvar="NEUROIO_BRIDGE_CONFIG",
    show_envvar=True,
    help="Read the options and [[route]] tables from this TOML file (docs/routing.md); "
    "options given on the command line or in their environment variables win over it.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Validate the configuration (file, --to URIs, templates, secret files), print the "
    "resolved routes and options with secrets masked, and exit 0; or 2 with one line.",
)
@connection_options
@click.option(
    "--to",
    "to",
    metavar="URI",
    multiple=True,
    envvar="NEUROIO_BRIDGE_TO",
    show_envvar=True,
    help="A sink (repeatable): file:PATH, file:- (stdout), http(s)://..., "
    "redis://host:port/db?stream=NAME&maxlen=N, nats://host:port?subject=S&stream=NAME. "
    "The variable takes several separated by spaces.",
)
@click.option(
    "--spool",
    metavar="PATH",
    default=None,
    show_default="$XDG_DATA_HOME/neuroio-events/spool.db, ~/.local/share/... when unset",
    envvar="NEUROIO_BRIDGE_SPOOL",
    show_envvar=True,
    help="The spool (SQLite) holding events until every sink confirmed them.",
)
@click.option(
    "--spool-max-bytes",
    type=ByteSize(),
    default=DEFAULT_MAX_BYTES,
    show_default="1GiB",
    envvar="NEUROIO_BRIDGE_SPOOL_MAX_BYTES",
    show_envvar=True,
    help="When the spool holds this much, stop reading the socket until sinks catch up "
    "(nothing is dropped). Accepts 512MiB, 4GiB, ...",
)
@click.option(
    "--spool-sync",
    type=click.Choice(["full", "normal"]),
    default="normal",
    show_default=True,
    envvar="NEUROIO_BRIDGE_SPOOL_SYNC",
    show_envvar=True,
    help="normal: survives a crash; a power loss may lose the last seconds of commits, which "
    "gap recovery fetches again. full: survives power loss, at several times the disk writes.",
)
@click.option(
    "--webhook-secret",
    metavar="SECRET",
    default=None,
    envvar="NEUROIO_WEBHOOK_SECRET",
    show_envvar=True,
    help="Sign webhook requests with HMAC-SHA256 of this key (prefer the variable: a command "
    "line is visible in ps).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    show_default="no metrics server",
    envvar="NEUROIO_BRIDGE_METRICS_PORT",
    show_envvar=True,
    help="Serve Prometheus /metrics and /healthz on this port (0: a free port, logged).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="NEUROIO_BRIDGE_METRICS_HOST",
    show_envvar=True,
    help="Address the metrics server listens on.",
)
@click.option(
    "--health-max-sink-failure",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    envvar="NEUROIO_BRIDGE_HEALTH_MAX_SINK_FAILURE",
    show_envvar=True,
    help="/healthz fails once a sink has failed this many seconds in a row.",
)
@click.option(
    "--sink-retry-delay",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    envvar="NEUROIO_BRIDGE_SINK_RETRY_DELAY",
    show_envvar=True,
    help="Cap of the first retry delay of a failing sink, seconds (doubles per failure).",
)
@click.option(
    "--sink-max-retry-delay",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    envvar="NEUROIO_BRIDGE_SINK_MAX_RETRY_DELAY",
    show_envvar=True,
    help="Largest retry delay of a failing sink, seconds.",
)
@listener_options
@loop_option
@logging_options
def command(
    config_path: str | None,
    check: bool,
    conn: ConnectionSettings,
    to: tuple[str, ...],
    spool: str | None,
    spool_max_bytes: int,
    spool_sync: str,
    webhook_secret: str | None,
    metrics_port: int | None,
    metrics_host: str,
    health_max_sink_failure: float,
    sink_retry_delay: float,
    sink_max_retry_delay: float,
    listener: ListenerSettings,
    use_uvloop: bool | None,
    log: LogSettings,
) -> None:
    """Deliver every event to each --to sink through a durable spool, losing nothing.

    Each event is committed to the spool (SQLite) before it counts as received, then
    delivered to every sink at that sink's pace, retried with backoff until confirmed. Missed
    entries are recovered from the REST API at start-up and after reconnects. Logs go to
    stderr; stdout is empty unless a sink is file:-. Stops with status 0 on Ctrl-C or SIGTERM
    (what was received is delivered now or after the next start); 1 on a start-up error
    (spool, unreachable sink), 2 on a usage error, 3 if the token is rejected, 4 if
    --max-retries is exhausted.

    With --config FILE, the options and the routes (each with its own filter, cooldown and
    sink) come from a TOML file; every mistake in it is one line naming the file and the key,
    status 2. --to URI adds a route that takes every event.

    \b
    Examples:
      NEUROIO_API_TOKEN=... neuroio-events bridge --to file:/var/lib/neuroio/events.jsonl
      neuroio-events bridge --token-file token \\
          --to 'redis://127.0.0.1:6379/0?stream=neuroio:events' \\
          --to 'nats://127.0.0.1:4222?subject=neuroio.events&stream=NEUROIO' \\
          --metrics-port 9464
      neuroio-events bridge --config /etc/neuroio/bridge.toml --check
    """
    ctx = click.get_current_context()
    log.configure()
    file: ConfigFile | None = None
    if config_path is not None:
        try:
            file = load_config(config_path)
        except ConfigurationError as exc:
            _usage_exit(str(exc), log)
        log = _file_log_settings(ctx, log, file)
        log.configure()
    if webhook_secret is not None:
        _redact.guard(webhook_secret)
        if ctx.get_parameter_source("webhook_secret") == ParameterSource.COMMANDLINE:
            logger.warning(
                "--webhook-secret on the command line is visible to other users in ps; "
                "prefer NEUROIO_WEBHOOK_SECRET"
            )
    settings = listener.kwargs()
    del settings["drain_timeout"]
    given: dict[str, Any] = {
        "spool": spool,
        "spool_max_bytes": spool_max_bytes,
        "spool_sync": spool_sync,
        "webhook_secret": webhook_secret or None,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
        "health_max_sink_failure": health_max_sink_failure,
        "sink_retry_delay": sink_retry_delay,
        "sink_max_retry_delay": sink_max_retry_delay,
        "url": conn.url,
        **settings,
    }
    resolved = _Resolved(ctx, file, given, to)
    if file is not None:
        conn = resolved.connection(conn)
    if not resolved.options["to"] and not resolved.options["routes"]:
        if file is None and not check:
            raise click.UsageError(
                "no sink: give at least one --to URI (e.g. --to file:events.jsonl); see --help"
            )
        where = f"{file.path}: " if file is not None else ""
        _usage_exit(
            f"{where}no route: give [[route]] tables, to = [...] in the file, or --to URI", log
        )
    try:
        config = resolved.bridge_config()
        names = check_sinks(config, origin=resolved.origins())
    except ConfigurationError as exc:
        _usage_exit(str(exc), log)
    if check:
        try:
            token_line = resolved.token_description(conn)
        except ConfigurationError as exc:
            _usage_exit(str(exc), log)
        write_all(
            sys.stdout.fileno(),
            _check_report(resolved, config, names, token_line).encode("utf-8", "replace"),
        )
        sys.exit(EXIT_OK)
    token = resolved.token(conn, log)
    ssl_context = resolved.ssl_context(conn, log)
    options = resolved.options
    run(lambda: serve(token, options, ssl_context=ssl_context), log=log, use_uvloop=use_uvloop)


def _usage_exit(message: str, log: LogSettings) -> NoReturn:
    """A configuration mistake: one line on stderr, status 2 (no usage text, no traceback)."""
    fail(message, log)
    sys.exit(EXIT_USAGE)


_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
_SOURCE_WORDS = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
}


def _file_log_settings(ctx: click.Context, log: LogSettings, file: ConfigFile) -> LogSettings:
    """``log.level`` and ``log.format`` of the file, unless -v/-q or --log-format say."""
    verbosity, log_format = log.verbosity, log.log_format
    flags = (ctx.get_parameter_source("verbose"), ctx.get_parameter_source("quiet"))
    if file.log_level is not None and not any(s in _GIVEN for s in flags):
        verbosity = LOG_LEVELS[file.log_level]
    if file.log_format is not None and ctx.get_parameter_source("log_format") not in _GIVEN:
        log_format = file.log_format
    return LogSettings(verbosity=verbosity, log_format=log_format)


class _Resolved:
    """The options once the file and the command line are merged: the command line and the
    options' environment variables win, then the file, then the defaults."""

    def __init__(
        self,
        ctx: click.Context,
        file: ConfigFile | None,
        given: dict[str, Any],
        to: tuple[str, ...],
    ) -> None:
        self.ctx = ctx
        self.file = file
        self.sources: dict[str, str] = {}
        options: dict[str, Any] = {}
        for name, value in given.items():
            source = ctx.get_parameter_source(name)
            if file is not None and name in file.options and source not in _GIVEN:
                options[name] = file.options[name]
                self.sources[name] = f"{file.path}: {file.keys[name]}"
            else:
                options[name] = value
                self.sources[name] = _SOURCE_WORDS.get(source, "default")  # type: ignore[arg-type]
        # --to adds routes that take every event to the file's own.
        options["to"] = (*(file.to if file is not None else ()), *to)
        options["routes"] = file.routes if file is not None else ()
        self.cli_to = to
        self.options = options

    def bridge_config(self) -> BridgeConfig:
        """The resolved config.

        Raises:
            ConfigurationError: a value out of range (naming the file when it set one).
        """
        try:
            return BridgeConfig.from_flat(**self.options)
        except ConfigurationError as exc:
            if self.file is not None:
                raise ConfigurationError(f"{self.file.path}: {exc}") from None
            raise

    def origins(self) -> dict[str, str]:
        """How an error names each route (by name) and each ``to`` URI."""
        out: dict[str, str] = {}
        file = self.file
        if file is not None:
            for index, route in enumerate(file.routes):
                out[route.name] = f"{file.path}: route[{index}] ({route.name}).to"
            for index, uri in enumerate(file.to):
                out[uri] = f"{file.path}: to[{index}]"
        return out

    def _token_given(self) -> bool:
        names = ("token", "token_file", "token_command")
        return any(self.ctx.get_parameter_source(n) in _GIVEN for n in names)

    def connection(self, conn: ConnectionSettings) -> ConnectionSettings:
        """``conn`` with the file's CA file, ``insecure`` and token source where the command
        line and environment give none."""
        file = self.file
        assert file is not None
        changes: dict[str, Any] = {}
        if file.ca_file is not None and self.ctx.get_parameter_source("ca_file") not in _GIVEN:
            changes["ca_file"] = Path(file.ca_file)
        if file.insecure is not None and self.ctx.get_parameter_source("insecure") not in _GIVEN:
            changes["insecure"] = file.insecure
        if not self._token_given():
            if file.token_file is not None:
                changes["token_file"] = Path(file.token_file)
            if file.token_command is not None:
                changes["token_command"] = file.token_command
        return dataclasses.replace(conn, **changes)

    def _file_token_key(self, conn: ConnectionSettings) -> str | None:
        file = self.file
        if file is None or self._token_given():
            return None
        if file.token_file is not None:
            return "connection.token_file"
        if file.token_command is not None:
            return "connection.token_command"
        return None

    def token(self, conn: ConnectionSettings, log: LogSettings) -> Secret:
        """The token (a file's ``token_file`` or ``token_command`` mistake is one line)."""
        key = self._file_token_key(conn)
        if key is None:
            return conn.api_token()
        assert self.file is not None
        try:
            return conn.api_token()
        except click.UsageError as exc:
            _usage_exit(f"{self.file.path}: {key}: {exc.message}", log)

    def ssl_context(self, conn: ConnectionSettings, log: LogSettings) -> ssl.SSLContext | None:
        """The TLS context (a file's unloadable ``ca_file`` is one line)."""
        file = self.file
        try:
            return conn.ssl_context()
        except click.BadParameter as exc:
            if file is None or file.ca_file is None or conn.ca_file != Path(file.ca_file):
                raise
            _usage_exit(f"{file.path}: connection.ca_file: {exc.message}", log)

    def token_description(self, conn: ConnectionSettings) -> str:
        """Where the token comes from, for ``--check``; a token file is read (it must be
        readable), a token command is not run."""
        key = self._file_token_key(conn)
        where = f" ({self.file.path}: {key})" if key is not None and self.file else ""
        if conn.token_command:
            program = conn.token_command.split()[0] if conn.token_command.split() else ""
            return f"token command {program} ...{where} (not run by --check)"
        if conn.token_file is not None:
            provider = token_file_provider(conn.token_file)
            try:
                provider()
            except ConfigurationError as exc:
                if key is not None and self.file is not None:
                    raise ConfigurationError(f"{self.file.path}: {key}: {exc}") from None
                raise
            return f"token file {conn.token_file}{where}"
        if conn.token:
            source = _SOURCE_WORDS.get(self.ctx.get_parameter_source("token"), "default")  # type: ignore[arg-type]
            return f"*** ({source})"
        return "none given: running needs connection.token_file, --token-file or NEUROIO_API_TOKEN"


def _check_report(
    resolved: _Resolved, config: BridgeConfig, names: list[str], token_line: str
) -> str:
    """What ``--check`` prints: the routes, then the options, secrets masked."""
    file = resolved.file
    lines = [f"{file.path}: valid" if file is not None else "configuration: valid", "routes:"]
    for route, sink in zip(config.routes, names, strict=False):
        lines.append(f"  {route.name}")
        lines.append(f"    to:       {redact_uri(route.to)}")
        if sink not in (route.name, redact_uri(route.to)):
            lines.append(f"    sink:     {sink}")
        lines.append(f"    filter:   {_show_filter(route.filter)}")
        cooldown = route.cooldown
        if cooldown is not None:
            lines.append(f"    cooldown: {cooldown.seconds:g} s per {', '.join(cooldown.key)}")
    for uri, sink in zip(config.to, names[len(config.routes) :], strict=True):
        source = "--to"
        if file is not None and uri in file.to:
            source = f"{file.path}: to[{file.to.index(uri)}]"
        lines.append(f"  {sink}")
        lines.append(f"    to:       {redact_uri(uri)}  ({source})")
        lines.append("    filter:   every event")
    lines.append("options:")
    values = _flat_values(config)
    width = max(len(n) for n in values)
    for name, value in values.items():
        if name == "webhook_secret":
            shown = "***" if value else "none"
        elif isinstance(value, str) and name in ("url", "api_url"):
            shown = redact_uri(value)
        elif value is None:
            shown = "none"
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        source = resolved.sources.get(name, "default")
        lines.append(f"  {name:<{width}}  {shown}  ({source})")
    lines.append(f"  {'token':<{width}}  {token_line}")
    return "\n".join(lines) + "\n"


def _flat_values(config: BridgeConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (
        "url",
        "api_url",
        "timeout",
        "ping_interval",
        "ping_timeout",
        "reconnect_delay",
        "max_reconnect_delay",
        "max_retries",
        "max_queue",
        "max_message_size",
    ):
        holder: Any = config.recovery if name == "api_url" else config.connection
        out[name] = getattr(holder, name)
    for name in ("backfill", "since", "backfill_max_events", "backfill_max_age"):
        out[name] = getattr(config.recovery, name)
    for name in (
        "spool",
        "spool_max_bytes",
        "spool_sync",
        "metrics_port",
        "metrics_host",
        "health_max_sink_failure",
        "sink_retry_delay",
        "sink_max_retry_delay",
        "webhook_secret",
    ):
        out[name] = getattr(config, name)
    return out


def _show_filter(f: FilterConfig | None) -> str:
    if f is None:
        return "every event"
    parts = []
    for name in f.__struct_fields__:
        value = getattr(f, name)
        if value is not None:
            parts.append(f"{name} = {msgspec.json.encode(value).decode()}")
    return ", ".join(parts) or "every event"
