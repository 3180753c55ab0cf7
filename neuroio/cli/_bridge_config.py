"""``bridge --config``: the config file merged with the command line, and ``--check``'s report.

The file says what it sets (:class:`~neuroio.bridge._configfile.ConfigFile`); here each
option takes, in this order, the command line, the option's environment variable, the file,
the default. ``--to`` adds routes to the file's. A mistake is one line and status 2
(:func:`usage_exit`): no usage text, no traceback.
"""

from __future__ import annotations

import dataclasses
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec
from click.core import ParameterSource

from .._token import token_file as token_file_provider
from ..bridge._configfile import LOG_LEVELS, ConfigFile
from ..bridge.config import BridgeConfig, FilterConfig
from ..exceptions import ConfigurationError
from ..sinks import redact_uri
from ._options import ConnectionSettings, LogSettings, Secret
from ._run import EXIT_USAGE, fail

__all__ = ["Resolved", "check_report", "file_log_settings", "usage_exit"]


def usage_exit(message: str, log: LogSettings) -> NoReturn:
    """A configuration mistake: one line on stderr, status 2 (no usage text, no traceback)."""
    fail(message, log)
    sys.exit(EXIT_USAGE)


_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
_SOURCE_WORDS = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
}


def file_log_settings(ctx: click.Context, log: LogSettings, file: ConfigFile) -> LogSettings:
    """``log.level`` and ``log.format`` of the file, unless -v/-q or --log-format say."""
    verbosity, log_format = log.verbosity, log.log_format
    flags = (ctx.get_parameter_source("verbose"), ctx.get_parameter_source("quiet"))
    if file.log_level is not None and not any(s in _GIVEN for s in flags):
        verbosity = LOG_LEVELS[file.log_level]
    if file.log_format is not None and ctx.get_parameter_source("log_format") not in _GIVEN:
        log_format = file.log_format
    return LogSettings(verbosity=verbosity, log_format=log_format)


class Resolved:
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
        if file is not None:
            for name, value in file.options.items():  # keys with no option of their own
                if name not in options:
                    options[name] = value
                    self.sources[name] = f"{file.path}: {file.keys[name]}"
        # --to adds routes that take every event to the file's own.
        options["to"] = (*(file.to if file is not None else ()), *to)
        options["routes"] = file.routes if file is not None else ()
        options["streams"] = file.streams if file is not None else ()
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
            usage_exit(f"{self.file.path}: {key}: {exc.message}", log)

    def ssl_context(self, conn: ConnectionSettings, log: LogSettings) -> ssl.SSLContext | None:
        """The TLS context (a file's unloadable ``ca_file`` is one line)."""
        file = self.file
        try:
            return conn.ssl_context()
        except click.BadParameter as exc:
            if file is None or file.ca_file is None or conn.ca_file != Path(file.ca_file):
                raise
            usage_exit(f"{file.path}: connection.ca_file: {exc.message}", log)

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


def check_report(
    resolved: Resolved, config: BridgeConfig, names: list[str], token_line: str
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
        elif isinstance(value, str) and name in ("url", "api_url", "fleet"):
            shown = redact_uri(value)
        elif value is None:
            shown = "none"
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        source = resolved.sources.get(name, "default")
        lines.append(f"  {name:<{width}}  {shown}  ({source})")
    if config.streams:
        lines.append(f"  {'token':<{width}}  none: each stream has its own")
        lines += _stream_lines(config)
    else:
        lines.append(f"  {'token':<{width}}  {token_line}")
    return "\n".join(lines) + "\n"


def check_stream_tokens(resolved: Resolved, config: BridgeConfig) -> None:
    """Read each stream's token file, as ``--check`` does the bridge's own (a token command
    is not run).

    Raises:
        ConfigurationError: a file cannot be read or is empty, naming the stream's key.
    """
    where = f"{resolved.file.path}: " if resolved.file is not None else ""
    for index, stream in enumerate(config.streams):
        if stream.token_file is None:
            continue
        try:
            token_file_provider(stream.token_file)()
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{where}stream[{index}] ({stream.name}).token_file: {exc}"
            ) from None


def _stream_lines(config: BridgeConfig) -> list[str]:
    lines = [f"streams: {len(config.streams)}"]
    for stream in config.streams:
        if stream.token_file is not None:
            token = f"token file {stream.token_file}"
        else:
            program = (stream.token_command or "").split()[:1]
            token = f"token command {program[0] if program else ''} ... (not run by --check)"
        lines.append(f"  {stream.name}: {token}")
        if stream.url is not None:
            lines.append(f"    url:     {redact_uri(stream.url)}")
        if stream.api_url is not None:
            lines.append(f"    api_url: {redact_uri(stream.api_url)}")
    return lines


# Not among --check's options: the routes and streams, listed apart, and what the command has
# no option for.
_NOT_SHOWN = frozenset(
    {"to", "routes", "streams", "drain_timeout", "dedupe_window", "shutdown_timeout"}
)


def _flat_values(config: BridgeConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_flat().items() if k not in _NOT_SHOWN}


def _show_filter(f: FilterConfig | None) -> str:
    if f is None:
        return "every event"
    parts = []
    for name in f.__struct_fields__:
        value = getattr(f, name)
        if value is not None:
            parts.append(f"{name} = {msgspec.json.encode(value).decode()}")
    return ", ".join(parts) or "every event"
