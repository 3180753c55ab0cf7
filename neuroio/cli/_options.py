"""Options shared by the commands, and the API token's resolution.

Each decorator adds a group of options and hands the command one settings object instead of
a dozen arguments::

    @click.command("mine")
    @connection_options          # -> conn: ConnectionSettings (token, token file, URL, CA)
    @listener_options            # -> listener: ListenerSettings (EventListener keywords)
    @loop_option                 # -> use_uvloop: bool | None
    @logging_options             # -> log: LogSettings           (-v, -q, --log-format)
    def command(conn, listener, use_uvloop, log): ...

Every option that takes a value can come from an environment variable; the names follow the
library's keywords (``NEUROIO_API_TOKEN``, ``NEUROIO_EVENTS_URL``, ``NEUROIO_PING_INTERVAL``,
...) and ``--help`` shows them. The command line wins over the environment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shlex
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from .. import _redact
from .._config import (
    DEFAULT_API_URL,
    DEFAULT_EVENTS_URL,
    ConnectionOptions,
    RecoveryOptions,
    check_api_url,
    check_events_url,
)
from .._token import TokenProvider, TokenSource
from .._token import token_command as token_command_provider
from .._token import token_file as token_file_provider
from ..exceptions import ConfigurationError
from . import _logging

__all__ = [
    "ConnectionSettings",
    "ListenerSettings",
    "LogSettings",
    "API_URL_DEFAULT",
    "Secret",
    "check_api_url_option",
    "connection_options",
    "listener_options",
    "logging_options",
    "loop_option",
]

logger = logging.getLogger("neuroio.cli")

F = TypeVar("F", bound=Callable[..., Any])

# The listener's defaults have one home (neuroio._config); the CLI shows and uses them.
_CONNECTION = ConnectionOptions()
_RECOVERY = RecoveryOptions()
# Except this one: `listen` must exit within 5 s of SIGTERM (see cli/listen.py's budget), so
# the frame being written gets less time than a library caller's handler (5.0 there).
CLI_DRAIN_TIMEOUT = 2.0

TOKEN_HINT = (
    "give --token-file FILE (recommended), set NEUROIO_API_TOKEN, "
    "or give --token TOKEN (visible to other users in ps)"
)


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks.

    ``provider``: where a token comes from when it can change while running (a token
    file, read again at each connection); :meth:`source` hands it to the listener.
    """

    __slots__ = ("_value", "_provider")

    def __init__(self, value: str, provider: TokenProvider | None = None) -> None:
        self._value = value
        self._provider = provider

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def source(self) -> TokenSource:
        """What ``api_token=`` is given: the provider if there is one, else the token."""
        return self._provider if self._provider is not None else self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass
class LogSettings:
    """``-v``/``-q`` and ``--log-format``."""

    verbosity: int = 0
    """``-v`` count minus ``-q`` count."""
    log_format: str = "text"

    @property
    def verbose(self) -> bool:
        """Whether tracebacks of unexpected errors are shown."""
        return self.verbosity > 0

    def configure(self) -> None:
        """Install the stderr log handler at these settings."""
        _logging.configure(self.verbosity, self.log_format)


@dataclass
class ConnectionSettings:
    """Where to connect and with which token and CA certificates."""

    url: str = DEFAULT_EVENTS_URL
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False
    token_source: ParameterSource | None = None
    token_file_source: ParameterSource | None = None
    token_command: str | None = None

    def api_token(self) -> Secret:
        """Resolve the token: ``--token-file``, ``--token`` or ``NEUROIO_API_TOKEN``.

        The command line wins over the environment. Call after logging is configured: a
        token file others can read is reported as a warning. The token is registered for
        redaction from every log line from then on.

        Raises:
            click.UsageError: no token, both given, or an unreadable or empty token file.
        """
        if self.token_command:
            return self._command_token()
        token = (self.token or "").strip() or None
        token_file = self.token_file
        if token is not None and token_file is not None:
            if self.token_source == self.token_file_source:
                raise click.UsageError("give either --token or --token-file, not both")
            if self.token_file_source == ParameterSource.COMMANDLINE:
                token = None
            else:
                token_file = None
        if token_file is not None:
            provider = token_file_provider(token_file)
            try:
                # Read once now: a file unreadable at start-up is a usage error, not retries.
                return Secret(provider(), provider)
            except ConfigurationError as exc:
                raise click.UsageError(str(exc)) from None
        if not token:
            raise click.UsageError(f"no API token: {TOKEN_HINT}")
        _redact.guard(token)
        return Secret(token)

    def _command_token(self) -> Secret:
        """``--token-command``: run once now (a failure is a usage error), again later."""
        if ParameterSource.COMMANDLINE in (self.token_source, self.token_file_source) and (
            self.token or self.token_file
        ):
            raise click.UsageError("give only one of --token, --token-file, --token-command")
        assert self.token_command is not None
        try:
            argv = shlex.split(self.token_command)
            provider = token_command_provider(argv)
            return Secret(asyncio.run(provider()), provider)
        except ValueError as exc:
            raise click.UsageError(f"--token-command: {exc}") from None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context trusting ``--ca-file`` too; ``None`` without it.

        With ``--insecure``, a context that verifies nothing, and a warning each time: it
        exists for local tests against a self-signed certificate, never for the platform.

        Raises:
            click.BadParameter: the CA file cannot be loaded.
            click.UsageError: ``--insecure`` and ``--ca-file`` together.
        """
        if self.insecure:
            if self.ca_file is not None:
                raise click.UsageError("give either --ca-file or --insecure, not both")
            logger.warning(
                "--insecure: TLS certificates are NOT verified; anyone on the path can read "
                "the token and the events. Use it only against a local test server."
            )
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.ca_file is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise click.BadParameter(
                f"cannot load CA certificates from {self.ca_file}: {exc}", param_hint="--ca-file"
            ) from exc


@dataclass
class ListenerSettings:
    """The :class:`~neuroio.EventListener` keywords the CLI exposes."""

    timeout: float = _CONNECTION.timeout
    ping_interval: float = _CONNECTION.ping_interval
    ping_timeout: float = _CONNECTION.ping_timeout
    reconnect_delay: float = _CONNECTION.reconnect_delay
    max_reconnect_delay: float = _CONNECTION.max_reconnect_delay
    max_retries: int | None = _CONNECTION.max_retries
    max_queue: int = _CONNECTION.max_queue
    max_message_size: int = _CONNECTION.max_message_size
    drain_timeout: float = CLI_DRAIN_TIMEOUT
    backfill: bool = _RECOVERY.backfill
    api_url: str | None = None
    since: str | None = None
    backfill_max_events: int | None = _RECOVERY.backfill_max_events
    backfill_max_age: float | None = _RECOVERY.backfill_max_age

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~neuroio.EventListener` (besides token, URL, TLS)."""
        out = dict(vars(self))
        if out["backfill_max_events"] == 0:
            out["backfill_max_events"] = None
        if out["backfill_max_age"] == 0:
            out["backfill_max_age"] = None
        return out


def _gather(target: str, factory: Callable[..., Any], names: tuple[str, ...]) -> Callable[[F], F]:
    """Wrap a command so the options ``names`` arrive as one ``target=factory(...)`` argument."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return func(*args, **{target: factory(**values)}, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    # click lists options in the order their decorators appear, top first.
    for option in reversed(options):
        func = option(func)
    return func


_POSITIVE = click.FloatRange(min=0, min_open=True)


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--url``: refused at parse time (exit 2) when it can never connect."""
    try:
        check_events_url(value, "the URL")
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def check_api_url_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """``--api-url``: refused at parse time (exit 2) when it can never be reached."""
    if value is not None:
        try:
            check_api_url(value, "the URL")
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


API_URL_DEFAULT = f"the --url origin when on this machine, else {DEFAULT_API_URL}"


def connection_options(func: F) -> F:
    """``--token``, ``--token-file``, ``--url``, ``--ca-file``, ``--insecure`` as ``conn``."""

    def make(**values: Any) -> ConnectionSettings:
        ctx = click.get_current_context()
        return ConnectionSettings(
            url=values["url"],
            token=values["token"],
            token_file=values["token_file"],
            token_command=values["token_command"],
            ca_file=values["ca_file"],
            insecure=values["insecure"],
            token_source=ctx.get_parameter_source("token"),
            token_file_source=ctx.get_parameter_source("token_file"),
        )

    options: list[Callable[[F], F]] = [
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="NEUROIO_API_TOKEN_FILE",
            show_envvar=True,
            help="File whose first line is the API token (recommended; chmod 600).",
        ),
        click.option(
            "--token-command",
            metavar="CMD",
            envvar="NEUROIO_TOKEN_COMMAND",
            show_envvar=True,
            help="Run CMD (split like a shell would, but run without one) at each "
            "connection that needs a token; its first line of stdout is the token.",
        ),
        click.option(
            "--token",
            metavar="TOKEN",
            envvar="NEUROIO_API_TOKEN",
            show_envvar=True,
            help="The API token. On the command line it is visible to other users in ps: "
            "prefer --token-file or the environment variable.",
        ),
        click.option(
            "--url",
            default=DEFAULT_EVENTS_URL,
            show_default=True,
            envvar="NEUROIO_EVENTS_URL",
            show_envvar=True,
            callback=_check_url,
            help="The events service (ws:// or wss://, a host, a port 1-65535).",
        ),
        click.option(
            "--ca-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar="NEUROIO_CA_FILE",
            show_envvar=True,
            help="Also trust the CA certificates in this PEM file (for wss://).",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            envvar="NEUROIO_INSECURE",
            show_envvar=True,
            help="Do not verify the TLS certificate. Only for a local test server with a "
            "self-signed certificate: logs a warning.",
        ),
    ]
    names = ("token_file", "token_command", "token", "url", "ca_file", "insecure")
    return _apply(_gather("conn", make, names)(func), options)


def listener_options(func: F) -> F:
    """The listener's timing, retry, queue and gap-recovery options as ``listener``."""
    options: list[Callable[[F], F]] = [
        click.option(
            "--timeout",
            type=_POSITIVE,
            default=_CONNECTION.timeout,
            show_default=True,
            envvar="NEUROIO_TIMEOUT",
            show_envvar=True,
            help="Seconds to connect and get the answer to AUTH.",
        ),
        click.option(
            "--ping-interval",
            type=_POSITIVE,
            default=_CONNECTION.ping_interval,
            show_default=True,
            envvar="NEUROIO_PING_INTERVAL",
            show_envvar=True,
            help="Seconds between PINGs.",
        ),
        click.option(
            "--ping-timeout",
            type=_POSITIVE,
            default=_CONNECTION.ping_timeout,
            show_default=True,
            envvar="NEUROIO_PING_TIMEOUT",
            show_envvar=True,
            help="A PING unanswered this long means the connection is dead; it is replaced.",
        ),
        click.option(
            "--reconnect-delay",
            type=click.FloatRange(min=0),
            default=_CONNECTION.reconnect_delay,
            show_default=True,
            envvar="NEUROIO_RECONNECT_DELAY",
            show_envvar=True,
            help="Cap of the first reconnect delay, seconds (doubles per failed attempt).",
        ),
        click.option(
            "--max-reconnect-delay",
            type=click.FloatRange(min=0),
            default=_CONNECTION.max_reconnect_delay,
            show_default=True,
            envvar="NEUROIO_MAX_RECONNECT_DELAY",
            show_envvar=True,
            help="Largest reconnect delay, seconds.",
        ),
        click.option(
            "--max-retries",
            type=click.IntRange(min=0),
            default=None,
            show_default="retry forever",
            envvar="NEUROIO_MAX_RETRIES",
            show_envvar=True,
            help="Give up (exit 4) after this many consecutive failed connection attempts.",
        ),
        click.option(
            "--max-queue",
            type=click.IntRange(min=1),
            default=_CONNECTION.max_queue,
            show_default=True,
            envvar="NEUROIO_MAX_QUEUE",
            show_envvar=True,
            help="Recovered (--backfill) frames waiting their turn to be written.",
        ),
        click.option(
            "--max-message-size",
            type=click.IntRange(min=1),
            default=_CONNECTION.max_message_size,
            show_default=True,
            envvar="NEUROIO_MAX_MESSAGE_SIZE",
            show_envvar=True,
            help="Largest frame accepted, bytes.",
        ),
        click.option(
            "--drain-timeout",
            type=click.FloatRange(min=0, max=3),
            default=CLI_DRAIN_TIMEOUT,
            show_default=True,
            envvar="NEUROIO_DRAIN_TIMEOUT",
            show_envvar=True,
            help="On stop, seconds allowed for the frame being handled to be written.",
        ),
        click.option(
            "--backfill/--no-backfill",
            default=False,
            show_default=True,
            envvar="NEUROIO_BACKFILL",
            show_envvar=True,
            help="After each reconnect, fetch the entries missed meanwhile from the REST API.",
        ),
        click.option(
            "--api-url",
            default=None,
            show_default=API_URL_DEFAULT,
            envvar="NEUROIO_API_URL",
            show_envvar=True,
            callback=check_api_url_option,
            help="The REST API used by --backfill and --since.",
        ),
        click.option(
            "--since",
            metavar="ID|TIME",
            default=None,
            envvar="NEUROIO_SINCE",
            show_envvar=True,
            help="First recover the entries after this event id, or from this ISO-8601 time.",
        ),
        click.option(
            "--backfill-max-events",
            type=click.IntRange(min=0),
            default=_RECOVERY.backfill_max_events,
            show_default=True,
            envvar="NEUROIO_BACKFILL_MAX_EVENTS",
            show_envvar=True,
            help="Recover at most this many entries per gap (the newest); 0: no limit.",
        ),
        click.option(
            "--backfill-max-age",
            type=click.FloatRange(min=0),
            default=_RECOVERY.backfill_max_age,
            show_default=True,
            envvar="NEUROIO_BACKFILL_MAX_AGE",
            show_envvar=True,
            help="Skip recovered entries older than this many seconds; 0: no limit.",
        ),
    ]
    names = (
        "timeout",
        "ping_interval",
        "ping_timeout",
        "reconnect_delay",
        "max_reconnect_delay",
        "max_retries",
        "max_queue",
        "max_message_size",
        "drain_timeout",
        "backfill",
        "api_url",
        "since",
        "backfill_max_events",
        "backfill_max_age",
    )
    return _apply(_gather("listener", ListenerSettings, names)(func), options)


def spool_option(help: str) -> Callable[[F], F]:
    """``--spool PATH`` (``NEUROIO_BRIDGE_SPOOL``): the bridge's, and the ``deadletters``
    command's, which must find the same file."""
    return click.option(
        "--spool",
        metavar="PATH",
        default=None,
        show_default="$XDG_DATA_HOME/neuroio-events/spool.db, ~/.local/share/... when unset",
        envvar="NEUROIO_BRIDGE_SPOOL",
        show_envvar=True,
        help=help,
    )


def loop_option(func: F) -> F:
    """``--uvloop/--no-uvloop`` as ``use_uvloop`` (``None``: use it when installed)."""
    return click.option(
        "--uvloop/--no-uvloop",
        "use_uvloop",
        default=None,
        show_default="on when installed",
        envvar="NEUROIO_UVLOOP",
        show_envvar=True,
        help="Run on uvloop (faster; pip install 'neuroio-events[uvloop]').",
    )(func)


def logging_options(func: F) -> F:
    """``-v``, ``-q`` and ``--log-format`` as ``log: LogSettings``."""

    def make(verbose: int, quiet: int, log_format: str) -> LogSettings:
        return LogSettings(verbosity=verbose - quiet, log_format=log_format)

    options: list[Callable[[F], F]] = [
        click.option(
            "-v",
            "--verbose",
            count=True,
            help="More logs (repeat for more); shows tracebacks of unexpected errors.",
        ),
        click.option("-q", "--quiet", count=True, help="Fewer logs (repeat for fewer)."),
        click.option(
            "--log-format",
            type=click.Choice(_logging.LOG_FORMATS),
            default="text",
            show_default=True,
            envvar="NEUROIO_LOG_FORMAT",
            show_envvar=True,
            help="Logs on stderr as text, or as JSON objects (ts, level, logger, message).",
        ),
    ]
    names = ("verbose", "quiet", "log_format")
    return _apply(_gather("log", make, names)(func), options)
