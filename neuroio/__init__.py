"""neuroio-events: a client for the NeuroIO real-time events stream.

The public surface is what this module exports; everything in a module whose name starts with
an underscore is internal and may change in any release::

    from neuroio import EventListener, Event, Backfilled, parse_message
    from neuroio import AuthenticationError, ConnectionFailedError, NeuroIOError

Beside it: :mod:`neuroio.testing` (the emulator and entry factory for users' own tests),
:mod:`neuroio.bridge` (the durable bridge), :mod:`neuroio.sinks` (its outputs) and
:mod:`neuroio.recording` (the recording format). See ``README.md`` and ``docs/``.
"""

from __future__ import annotations

from ._protocol.frames import parse_message
from ._protocol.session import LossReason
from ._token import token_file
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
    SpoolFullError,
)
from .listener import EventListener, Handler
from .messages import (
    AuthOk,
    Backfilled,
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
from .stats import ListenerStats, State

__version__ = "0.1.0"

__all__ = [
    "AuthOk",
    "AuthenticationError",
    "BackfillError",
    "Backfilled",
    "ConfigurationError",
    "ConnectionFailedError",
    "Entry",
    "Event",
    "EventListener",
    "Handler",
    "ListenerStats",
    "Liveness",
    "LossReason",
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
    "SpoolFullError",
    "Sex",
    "State",
    "UnknownMessage",
    "token_file",
    "__version__",
    "parse_message",
]
