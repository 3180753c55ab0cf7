"""The frames the emulator writes: what a client's send queue holds, and the fixed answers.

A queue item is ``bytes`` for an event frame (the hot path, written as text), :class:`Frame`
for any other text or binary frame, and :class:`Close` for the closing handshake.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TypeAlias

import msgspec
from aiohttp import WSMsgType

__all__ = [
    "AUTH_FAILED_FRAME",
    "AUTH_OK_FRAME",
    "AUTH_TIMEOUT_FRAME",
    "PONG_FRAME",
    "REDACTED_AUTH",
    "Close",
    "Frame",
    "Item",
    "close_payload",
    "decoder",
    "encoder",
]

AUTH_OK_FRAME = b'{"auth":"ok"}'
PONG_FRAME = b'{"PING":"PONG"}'
AUTH_FAILED_FRAME = b'{"error":"Authentication failed: invalid token"}'
AUTH_TIMEOUT_FRAME = b'{"error":"Authentication timeout"}'
REDACTED_AUTH = '{"action":"AUTH","data":{"token":"<redacted>"}}'

encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder()


class Frame:
    """A text or binary frame to write as is."""

    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: WSMsgType, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload


class Close:
    """A close frame to write; :attr:`sent` is set once it is on the socket."""

    __slots__ = ("code", "reason", "sent")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        self.sent = asyncio.Event()


Item: TypeAlias = "bytes | Frame | Close"


def close_payload(code: int, reason: str) -> bytes:
    """The payload of a close frame: the code, then the reason cut to fit 125 bytes."""
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]
