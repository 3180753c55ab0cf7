"""Where the protocol's frames used to live; they are now in :mod:`neuroio._protocol.frames`.

Kept so that code importing ``neuroio.protocol`` still runs; import from the new home.
"""

from __future__ import annotations

from ._config import DEFAULT_API_URL, DEFAULT_EVENTS_URL
from ._protocol.frames import (
    EVENT_PREFIX,
    PING_FRAME,
    Kind,
    classify,
    decode_json,
    encode_auth,
    encode_ping,
    event_decoder,
    event_from_dict,
    event_key,
    event_to_json,
    is_event_id,
    message_from_dict,
    parse_message,
)

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_EVENTS_URL",
    "EVENT_PREFIX",
    "PING_FRAME",
    "Kind",
    "classify",
    "decode_json",
    "encode_auth",
    "encode_ping",
    "event_decoder",
    "event_from_dict",
    "event_key",
    "event_to_json",
    "is_event_id",
    "message_from_dict",
    "parse_message",
]
