"""neuroio-events: a client for the NeuroIO real-time events stream.

The public surface::

    from neuroio import EventListener, AuthenticationError, NeuroIOError, MessageError
    from neuroio import parse_message

See ``README.md`` for the listener, the CLI (``neuroio-events``), the emulator and the bridge.
"""

from __future__ import annotations

from .backoff import Backoff
from .exceptions import (
    AuthenticationError,
    BackfillError,
    ConfigurationError,
    ConnectionFailedError,
    MessageError,
    MissingExtraError,
    NeuroIOError,
    PermanentSinkError,
    SinkError,
    SpoolError,
)
from .heartbeat import Heartbeat
from .listener import EventListener
from .messages import (
    AuthOk,
    Entry,
    Event,
    Liveness,
    Message,
    Mood,
    Named,
    Pong,
    Result,
    ServerError,
    Sex,
    UnknownMessage,
)
from .protocol import encode_auth, encode_ping, parse_message
from .stats import ListenerStats, State

__version__ = "0.1.0"

__all__ = [
    "AuthOk",
    "AuthenticationError",
    "Backoff",
    "BackfillError",
    "ConfigurationError",
    "ConnectionFailedError",
    "Entry",
    "Event",
    "EventListener",
    "Heartbeat",
    "ListenerStats",
    "Liveness",
    "Message",
    "MessageError",
    "MissingExtraError",
    "Mood",
    "Named",
    "NeuroIOError",
    "PermanentSinkError",
    "Pong",
    "Result",
    "ServerError",
    "SinkError",
    "SpoolError",
    "Sex",
    "State",
    "UnknownMessage",
    "__version__",
    "encode_auth",
    "encode_ping",
    "parse_message",
]
