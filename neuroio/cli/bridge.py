"""``neuroio-events bridge``: every event to the sinks of its routes (files, webhooks, Redis, NATS,
MQTT, AMQP, PostgreSQL, SQLite).

The command only parses options into a :class:`~neuroio.bridge.BridgeConfig` (its field names
are the options' names) and runs the :class:`~neuroio.bridge.Bridge` until SIGINT/SIGTERM.
Logs go to stderr; stdout stays empty unless a sink is ``file:-``. See ``docs/bridge.md``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from typing import Any

import click
from click.core import ParameterSource

from .. import _redact
from .._io import write_all
from ..bridge import BRIDGE_RECOVERY, Bridge
from ..bridge._configfile import ConfigFile, check_sinks, parse_size
from ..bridge._configfile import load as load_config
from ..bridge.spool import DEFAULT_MAX_BYTES
from ..exceptions import ConfigurationError
from ._bridge_config import (
    Resolved,
    check_report,
    check_stream_tokens,
    file_log_settings,
    usage_exit,
)
from ._options import (
    ConnectionSettings,
    ListenerSettings,
    LogSettings,
    Secret,
    connection_options,
    listener_options,
    logging_options,
    loop_option,
    spool_option,
)
from ._run import EXIT_OK, StopSignals, run

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
    token: Secret | None,
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
        SinkError: a sink is unreachable at start-up (with ``require_sinks`` only).
        AuthenticationError: the token was rejected.
        ConnectionFailedError: ``max_retries`` was exhausted.
    """
    source = token.source() if token is not None else None
    bridge = Bridge.from_options(source, ssl=ssl_context, **options)
    reopening: set[asyncio.Task[None]] = set()

    def hangup() -> None:  # SIGHUP: the files are reopened (logrotate), the bridge runs on
        logger.info("SIGHUP received: reopening the sinks' files")
        task = asyncio.create_task(bridge.reopen(), name="neuroio-cli-reopen")
        reopening.add(task)
        task.add_done_callback(reopening.discard)

    own_signals = signals is None
    if signals is None:
        signals = StopSignals(on_force=bridge.request_stop, on_hangup=hangup)
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
    short_help="Route every event to files, webhooks, brokers, databases (durable spool).",
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
    "redis://host:port/db?stream=NAME, nats://host:port?subject=S&stream=NAME, "
    "mqtt://host:port/TOPIC?qos=1, amqp://user:pass@host/vhost?exchange=X&routing_key=K, "
    "postgresql://user@host/db?table=T, sqlite:PATH?table=T, images:DIR (docs/bridge.md). "
    "The variable takes several separated by spaces.",
)
@spool_option("The spool (SQLite) holding events until every sink confirmed them.")
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
    "--health-max-refused",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    envvar="NEUROIO_BRIDGE_HEALTH_MAX_REFUSED",
    show_envvar=True,
    help="/healthz fails once a sink refused this many events in a row (dead letters); 0: never.",
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
@click.option(
    "--require-sinks",
    is_flag=True,
    default=False,
    envvar="NEUROIO_BRIDGE_REQUIRE_SINKS",
    show_envvar=True,
    help="Stop at start-up (status 1) when a sink is unreachable. Default: start without it, "
    "spool its events, report it on /healthz, and deliver once it answers.",
)
@click.option(
    "--fleet",
    metavar="URI",
    default=None,
    envvar="NEUROIO_BRIDGE_FLEET",
    show_envvar=True,
    help="Share the config file's [[stream]]s with the other bridges of this NATS JetStream "
    "key-value bucket, each stream held by one of them: nats://HOST:PORT?bucket=NAME"
    "[&ttl=SECONDS][&worker=ID] (docs/scaling.md).",
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
    health_max_refused: int,
    sink_retry_delay: float,
    sink_max_retry_delay: float,
    require_sinks: bool,
    fleet: str | None,
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
    (spool; an unreachable sink with --require-sinks), 2 on a usage error (a sink refusing
    its credentials too), 3 if the token is rejected, 4 if --max-retries is exhausted. A
    sink unreachable at start-up does not stop the bridge unless --require-sinks: its events
    are spooled and delivered once it answers.

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
            usage_exit(str(exc), log)
        log = file_log_settings(ctx, log, file)
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
        "health_max_refused": health_max_refused,
        "sink_retry_delay": sink_retry_delay,
        "sink_max_retry_delay": sink_max_retry_delay,
        "require_sinks": require_sinks,
        "fleet": fleet,
        "url": conn.url,
        **settings,
    }
    resolved = Resolved(ctx, file, given, to)
    if file is not None:
        conn = resolved.connection(conn)
    if not resolved.options["to"] and not resolved.options["routes"]:
        if file is None and not check:
            raise click.UsageError(
                "no sink: give at least one --to URI (e.g. --to file:events.jsonl); see --help"
            )
        where = f"{file.path}: " if file is not None else ""
        usage_exit(
            f"{where}no route: give [[route]] tables, to = [...] in the file, or --to URI", log
        )
    try:
        config = resolved.bridge_config()
        names = check_sinks(config, origin=resolved.origins())
    except ConfigurationError as exc:
        usage_exit(str(exc), log)
    if check:
        try:
            if config.streams:
                check_stream_tokens(resolved, config)
                token_line = ""
            else:
                token_line = resolved.token_description(conn)
        except ConfigurationError as exc:
            usage_exit(str(exc), log)
        write_all(
            sys.stdout.fileno(),
            check_report(resolved, config, names, token_line).encode("utf-8", "replace"),
        )
        sys.exit(EXIT_OK)
    # A bridge of named streams has no token of its own: each [[stream]] brings its own.
    token = None if config.streams else resolved.token(conn, log)
    ssl_context = resolved.ssl_context(conn, log)
    options = resolved.options
    run(lambda: serve(token, options, ssl_context=ssl_context), log=log, use_uvloop=use_uvloop)
