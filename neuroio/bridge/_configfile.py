"""The bridge's TOML config file: read, expanded, validated, made a :class:`BridgeConfig`.

::

    to = ["file:/var/lib/neuroio/events.jsonl"]      # routes that take every event

    [connection]
    url = "wss://events.neuroio.com"
    token_file = "/etc/neuroio/token"

    [spool]
    path = "/var/lib/neuroio/spool.db"
    max_bytes = "4GiB"

    [[route]]
    name = "doors"
    to = "mqtt://127.0.0.1:1883/neuroio/doors/{source.id}?qos=1"
    filter = { result = ["exact"], confidence_min = 80 }
    cooldown = { key = ["pid", "source.id"], seconds = 30 }

The layout, every key and its default are in ``docs/routing.md``; :data:`KEYS` maps each key of
a table onto the flat option name of :meth:`BridgeConfig.from_flat` (the CLI's). The steps:

1. TOML is parsed (``tomllib``; ``tomli`` before Python 3.11).
2. ``${VAR}`` in every string value is replaced from the environment (``${VAR:-default}``
   when unset or empty; ``$${`` is a literal ``${``); an unset variable without a default
   is an error naming the key and the variable. TOML dates and times become ISO-8601 text.
3. The tables are decoded by msgspec into typed structs that forbid unknown keys. Numbers
   and booleans may be written as strings, so ``${VAR}`` can supply them.
4. Secrets named by ``*_file`` keys are read (``webhook.secret_file``, a route's
   ``to_file``); a secret file other users can read is warned about, as the token file is.
5. What the types cannot say is checked: the filter vocabulary, cooldowns, route names,
   sizes, ``where`` expressions.

Every mistake is one :class:`~neuroio.exceptions.ConfigurationError` line naming the file and
the key: ``bridge.toml: route[0] (doors).filter: unknown key 'confidnce_min' (did you mean
'confidence_min'?)``. Nothing here builds a sink or opens a connection; the CLI's ``--check``
builds the sinks too (:func:`check_sinks`), which validates their URIs and templates.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import logging
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

from .._config import check_api_url, check_events_url
from .._routing.rules import RouteRules
from ..exceptions import ConfigurationError
from .config import BridgeConfig, CooldownConfig, FilterConfig, RouteConfig, StreamConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "KEYS",
    "LOG_LEVELS",
    "ConfigFile",
    "check_sinks",
    "expand",
    "load",
    "parse_size",
]

logger = logging.getLogger("neuroio.bridge")

LOG_LEVELS: dict[str, int] = {"error": -2, "warning": -1, "info": 0, "debug": 1, "trace": 2}
"""``log.level`` → the CLI's verbosity (``-v`` count minus ``-q`` count)."""

_Positive = Annotated[float, msgspec.Meta(gt=0)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
_AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A table of the file: every key optional (``None``: not given, the default applies)."""


class _Connection(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None
    api_url: str | None = None
    token_file: str | None = None
    token_command: str | None = None
    ca_file: str | None = None
    insecure: bool | None = None
    timeout: _Positive | None = None
    ping_interval: _Positive | None = None
    ping_timeout: _Positive | None = None
    reconnect_delay: _NonNegative | None = None
    max_reconnect_delay: _NonNegative | None = None
    max_retries: _Count | None = None
    max_queue: _AtLeastOne | None = None
    max_message_size: _AtLeastOne | None = None


class _Backfill(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool | None = None
    since: int | str | None = None
    max_events: _Count | None = None
    max_age: _NonNegative | None = None


class _Spool(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str | None = None
    max_bytes: int | str | None = None
    sync: Literal["full", "normal"] | None = None


class _Metrics(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    port: _Port | None = None
    host: str | None = None


class _Health(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_sink_failure: _Positive | None = None
    max_refused: _Count | None = None


class _Sink(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    retry_delay: _Positive | None = None
    max_retry_delay: _Positive | None = None
    require: bool | None = None


class _Webhook(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    secret: str | None = None
    secret_file: str | None = None


class _Log(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["error", "warning", "info", "debug", "trace"] | None = None
    format: Literal["text", "json"] | None = None


class _Route(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    to: str | None = None
    to_file: str | None = None
    filter: FilterConfig | None = None
    where: str | None = None
    cooldown: CooldownConfig | None = None


class _Stream(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    token_file: str | None = None
    token_command: str | None = None
    url: str | None = None
    api_url: str | None = None


class _Streams(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    connect_rate: _Positive | None = None


class _File(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    to: tuple[str, ...] = ()
    route: tuple[_Route, ...] = ()
    stream: tuple[_Stream, ...] = ()
    streams: _Streams = _Streams()
    connection: _Connection = _Connection()
    backfill: _Backfill = _Backfill()
    spool: _Spool = _Spool()
    metrics: _Metrics = _Metrics()
    health: _Health = _Health()
    sink: _Sink = _Sink()
    webhook: _Webhook = _Webhook()
    log: _Log = _Log()


KEYS: dict[str, str] = {
    "connection.url": "url",
    "connection.api_url": "api_url",
    "connection.timeout": "timeout",
    "connection.ping_interval": "ping_interval",
    "connection.ping_timeout": "ping_timeout",
    "connection.reconnect_delay": "reconnect_delay",
    "connection.max_reconnect_delay": "max_reconnect_delay",
    "connection.max_retries": "max_retries",
    "connection.max_queue": "max_queue",
    "connection.max_message_size": "max_message_size",
    "backfill.enabled": "backfill",
    "backfill.since": "since",
    "backfill.max_events": "backfill_max_events",
    "backfill.max_age": "backfill_max_age",
    "spool.path": "spool",
    "spool.max_bytes": "spool_max_bytes",
    "spool.sync": "spool_sync",
    "metrics.port": "metrics_port",
    "metrics.host": "metrics_host",
    "health.max_sink_failure": "health_max_sink_failure",
    "health.max_refused": "health_max_refused",
    "sink.retry_delay": "sink_retry_delay",
    "sink.max_retry_delay": "sink_max_retry_delay",
    "sink.require": "require_sinks",
    "webhook.secret": "webhook_secret",
    "streams.connect_rate": "connect_rate",
}
"""File key (``table.key``) → the flat option name it sets (the CLI option ``--name``).
``webhook.secret_file`` also sets ``webhook_secret``; the connection's ``token_file``,
``token_command``, ``ca_file``, ``insecure`` and the ``log`` table are the command's own
(:class:`ConfigFile`)."""

_SECRET_KEYS = frozenset({"webhook.secret"})
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: int | str) -> int:
    """A positive number of bytes from ``1073741824``, ``"512MiB"``, ``"1GiB"``, ``"2GB"``.

    Raises:
        ValueError: not a size, or not positive (the message says which).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise ValueError(f"{value!r} is not a size (e.g. 1073741824, 512MiB, 1GiB, 2GB)")
        size = int(float(match.group(1)) * unit)
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive size")
    return size


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """What one config file says.

    Attributes:
        path: the file, as given (errors name it so).
        options: the flat bridge options the file sets (:meth:`BridgeConfig.from_flat`'s
            names), only those it gives.
        keys: for each of :attr:`options`, the file key that set it.
        to: sink URIs of routes that take every event (the file's ``to``).
        routes: the ``[[route]]`` tables, ``where`` merged into each filter.
        streams: the ``[[stream]]`` tables (a bridge serving several spaces).
        token_file, token_command, ca_file, insecure: the connection keys the command
            resolves itself (``None``: not given).
        log_level: ``log.level``: a key of :data:`LOG_LEVELS`; ``log_format``: ``text`` or
            ``json``.
    """

    path: str
    options: dict[str, Any]
    keys: dict[str, str]
    to: tuple[str, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    streams: tuple[StreamConfig, ...] = ()
    token_file: str | None = None
    token_command: str | None = None
    ca_file: str | None = None
    insecure: bool | None = None
    log_level: str | None = None
    log_format: str | None = None

    def __repr__(self) -> str:
        # Never the options' values: one of them may be the webhook secret.
        return (
            f"<ConfigFile {self.path} {sorted(self.options)} routes={len(self.routes)} "
            f"streams={len(self.streams)}>"
        )

    def bridge_config(self, **overrides: Any) -> BridgeConfig:
        """The :class:`BridgeConfig` of this file, ``overrides`` (flat names) winning,
        except ``to``, whose URIs are added to the file's.

        Raises:
            ConfigurationError: a value out of range, naming the file.
        """
        added = tuple(overrides.pop("to", None) or ())
        options = {**self.options, **overrides}
        options["to"] = (*self.to, *added)  # --to adds routes to the file's
        options.setdefault("routes", self.routes)
        options.setdefault("streams", self.streams)
        try:
            return BridgeConfig.from_flat(**options)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.path}: {exc}") from None


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ConfigFile:
    """Read, expand and validate the config file at ``path``.

    Args:
        path: the TOML file.
        environ: where ``${VAR}`` is looked up (default :data:`os.environ`).

    Raises:
        ConfigurationError: one line naming the file, the key and what is wrong: the file
            is missing or unreadable, a TOML syntax error (line and column), an unknown key,
            a value of the wrong type, an unset variable, an unreadable secret file, a filter
            outside the platform's vocabulary, two routes with one name.
        MissingExtraError: a ``where`` expression without the ``routing`` extra (jmespath).
    """
    name = os.fspath(path)
    env = os.environ if environ is None else environ
    try:
        with open(name, "rb") as file:
            raw = tomllib.load(file)
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{name}: {_toml_problem(str(exc))}") from None
    expanded = _expand_tree(name, raw, env, (), raw)
    try:
        data = msgspec.convert(expanded, _File, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"{name}: {_describe(str(exc), expanded)}") from None
    return _build(name, data)


def _toml_problem(message: str) -> str:
    # tomllib and tomli both end their messages with "(at line N, column M)".
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", message)
    if match is None:
        end = re.search(r"\s*\(at end of document\)\s*$", message)
        if end is not None:
            what = message[: end.start()].strip()
            return f"at the end of the file: invalid TOML: {what[:1].lower()}{what[1:]}"
        return f"invalid TOML: {message}"
    what = message[: match.start()].strip()
    what = what[:1].lower() + what[1:]
    return f"line {match.group(1)}, column {match.group(2)}: invalid TOML: {what}"


# -- ${VAR} --------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")


def expand(text: str, environ: Mapping[str, str], where: str = "value") -> str:
    """``text`` with each ``${VAR}`` replaced from ``environ``.

    ``${VAR:-default}`` gives ``default`` when ``VAR`` is unset or empty (as a shell does);
    ``$${`` is a literal ``${``; a ``$`` not followed by ``{`` is kept as it is.

    Raises:
        ConfigurationError: an unset variable without a default, an unclosed ``${``, or a
            name that is not a variable name; the message starts with ``where``.
    """

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        body = match.group(1)
        if body is None:
            raise ConfigurationError(f"{where}: '${{' is not closed (write '$${{' for a literal)")
        var, dash, default = body.partition(":-")
        if _VAR.match(var) is None:
            raise ConfigurationError(f"{where}: ${{{body}}} is not a variable name")
        value = environ.get(var)
        if dash:
            return value if value else default
        if value is None:
            raise ConfigurationError(
                f"{where}: environment variable {var} is not set "
                f"(set it, or write ${{{var}:-default}})"
            )
        return value

    return _REFERENCE.sub(replace, text)


def _expand_tree(
    name: str, value: Any, env: Mapping[str, str], path: tuple[str | int, ...], root: Any
) -> Any:
    if isinstance(value, str):
        return expand(value, env, f"{name}: {_key(path, root)}")
    if isinstance(value, dict):
        return {k: _expand_tree(name, v, env, (*path, k), root) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(name, v, env, (*path, i), root) for i, v in enumerate(value)]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        # TOML has dates (since = 2026-01-01T00:00:00Z); the options take ISO-8601 text.
        return value.isoformat()
    return value


# -- msgspec's errors, as one line about a key ---------------------------------------------

_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
}


def _path_tokens(path: str) -> tuple[str | int, ...]:
    tokens: list[str | int] = []
    for match in _TOKEN.finditer(path[1:]):
        key, index = match.groups()
        tokens.append(int(index) if index is not None else key)
    return tuple(tokens)


def _key(path: Sequence[str | int], raw: Any) -> str:
    """``route[0] (doors).filter`` for ``("route", 0, "filter")``."""
    out = ""
    node = raw
    for token in path:
        if isinstance(token, int):
            out += f"[{token}]"
        else:
            out += f".{token}" if out else token
        node = node[token] if _has(node, token) else None
        if isinstance(token, int) and isinstance(node, dict) and isinstance(node.get("name"), str):
            out += f" ({node['name']})"
    return out


def _has(node: Any, token: str | int) -> bool:
    if isinstance(token, int):
        return isinstance(node, list) and 0 <= token < len(node)
    return isinstance(node, dict) and token in node


def _value_at(raw: Any, path: Sequence[str | int]) -> Any:
    node = raw
    for token in path:
        if not _has(node, token):
            return None
        node = node[token]
    return node


def _type_at(path: Sequence[str | int]) -> Any:
    """The msgspec type info of the key at ``path`` (``None`` when unknown)."""
    info: Any = msgspec.inspect.type_info(_File)
    for token in path:
        info = _unwrap(info)
        if isinstance(token, int):
            info = getattr(info, "item_type", None)
        elif isinstance(info, msgspec.inspect.StructType):
            fields = {f.encode_name: f for f in info.fields}
            info = fields[token].type if token in fields else None
        else:
            return None
        if info is None:
            return None
    return _unwrap(info)


def _unwrap(info: Any) -> Any:
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return info


def _shown(key_path: Sequence[str | int], value: Any) -> str:
    last = next((t for t in reversed(key_path) if isinstance(t, str)), "")
    if "secret" in last or "token" in last:
        return "'***'"
    if isinstance(value, str):
        if last in ("to", "to_file"):
            from ..sinks import redact_uri

            value = redact_uri(value)
        return msgspec.json.encode(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _expected(text: str) -> str:
    words = [_TYPE_WORDS.get(t.strip(), t.strip()) for t in text.split("|")]
    words = [w for w in words if w != "null"]
    return " or ".join(words)


def _describe(message: str, raw: Any) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.metrics.port``` as
    ``metrics.port: expected an integer, got "abc"``."""
    match = _AT.match(message)
    assert match is not None  # the pattern matches any text
    text, path = match.group("message"), _path_tokens(match.group("path") or "$")
    key = _key(path, raw)
    head = f"{key}: " if key else ""
    value = _value_at(raw, path)
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
    if unknown is not None:
        field = unknown.group(1)
        info = _type_at(path)
        known = (
            [f.encode_name for f in info.fields]
            if isinstance(info, msgspec.inspect.StructType)
            else []
        )
        close = difflib.get_close_matches(field, known, n=1)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        elif known:
            hint = f"; known keys: {', '.join(known)}"
        else:
            hint = ""
        return f"{head}unknown key '{field}'{hint}"
    missing = re.fullmatch(r"Object missing required field `(.+)`", text)
    if missing is not None:
        return f"{head}missing required key '{missing.group(1)}'"
    if re.fullmatch(r"Invalid enum value .*", text):
        info = _type_at(path)
        values = getattr(info, "values", ())
        choices = ", ".join(repr(v) for v in values)
        return f"{head}must be one of {choices}, got {_shown(path, value)}"
    wrong = re.fullmatch(r"Expected `([^`]+)`, got `([^`]+)`", text)
    if wrong is not None:
        problem = f"expected {_expected(wrong.group(1))}, got {_shown(path, value)}"
        if path == ("route",) and isinstance(value, dict):
            problem += " (write [[route]] for each route)"
        return head + problem
    bound = re.fullmatch(r"Expected `([^`]+)` (.+)", text)
    if bound is not None:
        limit = re.sub(r"\b(\d+)\.0\b", r"\1", bound.group(2))
        return f"{head}expected {_expected(bound.group(1))} {limit}, got {_shown(path, value)}"
    return f"{head}{text[:1].lower()}{text[1:]}"


# -- from the decoded tables to a ConfigFile ------------------------------------------------


def _build(name: str, data: _File) -> ConfigFile:
    options, keys = _options(name, data)
    webhook = data.webhook
    if webhook.secret_file is not None:
        if webhook.secret is not None:
            raise ConfigurationError(f"{name}: webhook: give secret or secret_file, not both")
        options["webhook_secret"] = _read_secret(name, "webhook.secret_file", webhook.secret_file)
        keys["webhook_secret"] = "webhook.secret_file"
    elif webhook.secret is not None:
        from .. import _redact

        _redact.guard(webhook.secret)
    conn = data.connection
    _check_connection(name, conn)
    for index, uri in enumerate(data.to):
        if not uri.strip():
            raise ConfigurationError(f"{name}: to[{index}]: must not be empty")
    routes = tuple(_route(name, index, route) for index, route in enumerate(data.route))
    seen: dict[str, int] = {}
    for index, route in enumerate(routes):
        if route.name in seen:
            raise ConfigurationError(
                f"{name}: route[{index}] ({route.name}).name: route[{seen[route.name]}] has "
                "the same name (a name keys the route's place in the spool)"
            )
        seen[route.name] = index
    streams = _streams(name, data.stream)
    return ConfigFile(
        path=name,
        options=options,
        keys=keys,
        to=tuple(u.strip() for u in data.to),
        routes=routes,
        streams=streams,
        token_file=conn.token_file,
        token_command=conn.token_command,
        ca_file=conn.ca_file,
        insecure=conn.insecure,
        log_level=data.log.level,
        log_format=data.log.format,
    )


def _options(name: str, data: _File) -> tuple[dict[str, Any], dict[str, str]]:
    """The flat options the file's tables give, and the key that gave each."""
    options: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, flat in KEYS.items():
        table, _, field = key.partition(".")
        value = getattr(getattr(data, table), field)
        if value is None:
            continue
        if flat == "spool_max_bytes":
            try:
                value = parse_size(value)
            except ValueError as exc:
                raise ConfigurationError(f"{name}: {key}: {exc}") from None
        elif flat == "since":
            value = str(value)
        elif flat in ("backfill_max_events", "backfill_max_age") and value == 0:
            value = None  # 0 is "no limit", as on the command line
        elif flat in ("url", "api_url", "spool", "metrics_host") and not value.strip():
            raise ConfigurationError(f"{name}: {key}: must not be empty")
        options[flat] = value
        keys[flat] = key
    if "url" in options:
        check_events_url(options["url"], f"{name}: connection.url:")
    if "api_url" in options:
        check_api_url(options["api_url"], f"{name}: {keys['api_url']}:")
    return options, keys


def _check_connection(name: str, conn: _Connection) -> None:
    if conn.token_file is not None and conn.token_command is not None:
        raise ConfigurationError(f"{name}: connection: give token_file or token_command, not both")
    if conn.token_command is not None and not conn.token_command.strip():
        raise ConfigurationError(f"{name}: connection.token_command: must not be empty")
    if conn.ca_file is not None and not os.path.isfile(conn.ca_file):
        raise ConfigurationError(f"{name}: connection.ca_file: no such file: {conn.ca_file}")


def _route(name: str, index: int, route: _Route) -> RouteConfig:
    where = f"{name}: route[{index}] ({route.name})"
    if not route.name.strip():
        raise ConfigurationError(f"{name}: route[{index}].name: must not be empty")
    if route.to is not None and route.to_file is not None:
        raise ConfigurationError(f"{where}: give to or to_file, not both")
    if route.to_file is not None:
        to = _read_secret(name, f"route[{index}] ({route.name}).to_file", route.to_file)
    elif route.to is not None and route.to.strip():
        to = route.to.strip()
    else:
        raise ConfigurationError(f"{where}: missing required key 'to' (the sink URI)")
    filter_ = route.filter
    if route.where is not None:
        if filter_ is not None and filter_.where is not None:
            # Both must hold: JMESPath's && is truthy only when both sides are.
            merged = f"({filter_.where}) && ({route.where})"
        else:
            merged = route.where
        filter_ = msgspec.structs.replace(filter_ or FilterConfig(), where=merged)
    config = RouteConfig(name=route.name.strip(), to=to, filter=filter_, cooldown=route.cooldown)
    try:
        # The engine's own validation, so the file and the running bridge agree on every value.
        RouteRules.from_config(config)
    except ConfigurationError as exc:
        problem = str(exc).removeprefix(f"route {config.name}: ")
        raise ConfigurationError(f"{where}.{problem}") from None
    return config


def _streams(name: str, tables: Sequence[_Stream]) -> tuple[StreamConfig, ...]:
    streams: list[StreamConfig] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"{name}: stream[{index}]"
        stream = StreamConfig(
            name=table.name.strip(),
            token_file=table.token_file,
            token_command=table.token_command,
            url=table.url,
            api_url=table.api_url,
        )
        try:
            stream.validate()
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        where = f"{where} ({stream.name})"
        if stream.name in seen:
            raise ConfigurationError(
                f"{where}.name: stream[{seen[stream.name]}] has the same name (a name keys the "
                "stream's events and recovery in the spool)"
            )
        seen[stream.name] = index
        if stream.token_command is not None and not stream.token_command.strip():
            raise ConfigurationError(f"{where}.token_command: must not be empty")
        for key in ("url", "api_url"):
            value = getattr(stream, key)
            if value is not None and not value.strip():
                raise ConfigurationError(f"{where}.{key}: must not be empty")
        if stream.url is not None:
            check_events_url(stream.url, f"{where}.url:")
        if stream.api_url is not None:
            check_api_url(stream.api_url, f"{where}.api_url:")
        streams.append(stream)
    return tuple(streams)


def _read_secret(name: str, key: str, path: str) -> str:
    """The first line of the secret file ``path``, stripped (warned about when others can
    read it, as the token file is)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as file:
            value = file.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"{name}: {key}: cannot read {path}: {reason}") from None
    if not value:
        raise ConfigurationError(f"{name}: {key}: {path} is empty (the secret is its first line)")
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning(
            "the secret file %s can be read by other users (mode %03o); run: chmod 600 %s",
            path,
            stat.S_IMODE(info.st_mode),
            path,
        )
    from .. import _redact

    _redact.guard(value)
    return value


def check_sinks(config: BridgeConfig, *, origin: Mapping[str, str] | None = None) -> list[str]:
    """Build every sink of ``config`` (routes and ``to``) without starting any, so their
    URIs, options and templates are checked; return their names, in order.

    Args:
        config: the resolved config.
        origin: for each route name and ``to`` URI, how an error names it (e.g.
            ``"bridge.toml: route[0] (doors).to"``).

    Raises:
        ConfigurationError: a URI a sink refuses (shown redacted), a sink whose extra is
            not installed (with its ``pip install`` line), prefixed by its origin; or a
            ``to`` sink named as a route.
    """
    from ..sinks import from_uri

    origin = origin or {}
    names: list[str] = []
    for key, uri in [*((r.name, r.to) for r in config.routes), *((u, u) for u in config.to)]:
        try:
            sink = from_uri(uri, webhook_secret=config.webhook_secret)
        except ConfigurationError as exc:  # MissingExtraError too: its pip line, prefixed
            where = origin.get(key)
            raise ConfigurationError(f"{where}: {exc}" if where else str(exc)) from None
        names.append(sink.name)
    routes = {r.name for r in config.routes}
    for uri, name in zip(config.to, names[len(config.routes) :], strict=True):
        if name in routes:
            # Both would keep their place in the spool under one name.
            where = origin.get(uri) or "--to"
            raise ConfigurationError(
                f"{where}: the sink {name} has the name of a route; give it ?name=... or "
                "rename the route"
            )
    return names
