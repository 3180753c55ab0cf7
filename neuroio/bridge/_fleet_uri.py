"""The ``--fleet`` URI: ``nats://[credentials@]host:port?bucket=neuroio-fleet&ttl=10&worker=w1``.

Options of the query: ``bucket`` (the KV bucket, default ``neuroio-fleet``), ``ttl`` (lease
TTL in seconds or with a unit, default 10 s, at least 0.5 s) and ``worker`` (this worker's id,
default ``<hostname>-<pid>``). Every mistake is a one-line
:class:`~neuroio.exceptions.ConfigurationError` showing the URI with its credentials masked.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from .._fleet.plan import name_problem
from ..exceptions import ConfigurationError
from ..sinks._uri import Duration, Option, Text, redact_uri

__all__ = ["DEFAULT_BUCKET", "DEFAULT_TTL", "FleetOptions", "default_worker", "parse_fleet_uri"]

DEFAULT_BUCKET = "neuroio-fleet"
DEFAULT_TTL = 10.0
_BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9_-]+")


def _bucket_problem(name: str) -> str | None:
    return None if _BUCKET_NAME.fullmatch(name) else "be [A-Za-z0-9_-]+"


def _worker_problem(name: str) -> str | None:
    return None if name_problem(name) is None else "be [A-Za-z0-9_.-]+ without empty dot parts"


_BUCKET = Text("bucket", DEFAULT_BUCKET, check=_bucket_problem)
_TTL = Duration("ttl", DEFAULT_TTL, minimum=0.5)
_WORKER = Text("worker", "", check=_worker_problem)
_OPTIONS: tuple[Option[Any], ...] = (_BUCKET, _TTL, _WORKER)


def default_worker() -> str:
    """``<hostname>-<pid>``, the host name's characters a key cannot hold replaced by ``-``."""
    host = _NOT_IN_ID.sub("-", socket.gethostname()).strip("-") or "worker"
    return f"{host}-{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class FleetOptions:
    """A parsed fleet URI.

    Attributes:
        server: the NATS server URL without the query, credentials kept (for connecting only).
        bucket: the KV bucket.
        ttl: lease TTL, seconds.
        worker: this worker's id.
    """

    server: str = dataclasses.field(repr=False)
    bucket: str = DEFAULT_BUCKET
    ttl: float = DEFAULT_TTL
    worker: str = dataclasses.field(default_factory=default_worker)

    @property
    def shown(self) -> str:
        """The server with its credentials masked, for logs and errors."""
        return redact_uri(self.server)


def parse_fleet_uri(uri: str) -> FleetOptions:
    """The options of a ``--fleet`` URI.

    Raises:
        ConfigurationError: not ``nats://`` or ``tls://`` with a host, a port out of range, an
            unknown option (with the closest known one), an option given twice or a bad value.
    """
    try:
        url = URL(uri)
        url.explicit_port  # noqa: B018 - validates the port
    except (ValueError, TypeError) as exc:
        raise _error(uri, f"invalid URL: {exc}") from None
    if url.scheme not in ("nats", "tls") or not url.host:
        raise _error(uri, "expected nats://host:port?bucket=...&ttl=...&worker=...")
    known = {o.name: o for o in _OPTIONS}
    values: dict[str, Any] = {}
    for name, raw in url.query.items():
        option = known.get(name)
        if option is None:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            names = ", ".join(sorted(known))
            raise _error(uri, f"unknown option {name!r}{hint}; known options: {names}")
        if name in values:
            raise _error(uri, f"option {name!r} is given twice")
        try:
            values[name] = option.convert(raw)
        except ValueError as exc:
            shown = raw if len(raw) <= 60 else raw[:60] + "..."
            raise _error(uri, f"{name} must {exc}, got {shown!r}") from None
    # The address as spelled: nats-py reads credentials from it without decoding them.
    spelled = urlsplit(uri)
    server = f"{spelled.scheme}://{spelled.netloc}"
    return FleetOptions(
        server=server,
        bucket=values.get("bucket", DEFAULT_BUCKET),
        ttl=values.get("ttl", DEFAULT_TTL),
        worker=values.get("worker") or default_worker(),
    )


def _error(uri: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"fleet {redact_uri(uri)}: {problem}")
