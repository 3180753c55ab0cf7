"""The catalogue of malformed and abusive frames :meth:`Emulator.send_hostile` sends."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import WSMsgType

from ..exceptions import ConfigurationError
from ._frames import Close, Frame

__all__ = ["HOSTILE_KINDS", "hostile_frames"]

HOSTILE_KINDS: tuple[str, ...] = (
    "not_json",
    "unexpected_shapes",
    "huge_numbers",
    "binary_invalid_utf8",
    "text_invalid_utf8",
    "deep_nesting",
    "oversized",
    "bad_close_code",
)
"""What :meth:`Emulator.send_hostile` can send, in the order it sends them.

``not_json``: text that is not JSON, or truncated JSON. ``unexpected_shapes``: JSON of
shapes the protocol never uses (``{"id": "x", "data": 5}``, ``{"PING": 7}``, ``[]``,
``null``, ...). ``huge_numbers``: ``{"id": 1e400, ...}`` and a 400-digit id.
``binary_invalid_utf8`` / ``text_invalid_utf8``: bytes that are not UTF-8, in a binary frame
and in a text frame. ``deep_nesting``: 100 000 levels of ``[``. ``oversized``: a text frame
over 8 MiB. ``bad_close_code``: a close frame with code 5000, which ends the connection.
"""

_OVERSIZED_BYTES = 8 * 1024 * 1024 + 1024
_TEXT = WSMsgType.TEXT


def _not_json() -> list[Frame | Close]:
    return [
        Frame(_TEXT, b"this is not json"),
        Frame(_TEXT, b'{"id": 1, "data": '),
        Frame(_TEXT, b""),
    ]


def _unexpected_shapes() -> list[Frame | Close]:
    shapes = (
        b'{"id":"x","data":5}',
        b'{"PING":7}',
        b"[]",
        b"null",
        b'"text"',
        b"{}",
        b'{"id":-1,"data":[]}',
        b'{"id":null,"data":{}}',
        b'{"unexpected":{"nested":[1,2,3]}}',
        b'{"error":{"code":7}}',
    )
    return [Frame(_TEXT, s) for s in shapes]


def _huge_numbers() -> list[Frame | Close]:
    digits = b"1" + b"0" * 400
    return [
        Frame(_TEXT, b'{"id":1e400,"data":{"id":1e400,"confidence":-1e400}}'),
        Frame(_TEXT, b'{"id":' + digits + b',"data":{"id":' + digits + b"}}"),
    ]


def _binary_invalid_utf8() -> list[Frame | Close]:
    return [Frame(WSMsgType.BINARY, b'\xff\xfe{"id":1,"data":{"name":"\xc3\x28"}}')]


def _text_invalid_utf8() -> list[Frame | Close]:
    return [Frame(_TEXT, b'{"id":1,"data":{"name":"\xc3\x28\xff"}}')]


def _deep_nesting() -> list[Frame | Close]:
    return [Frame(_TEXT, b"[" * 100_000 + b"]" * 100_000)]


def _oversized() -> list[Frame | Close]:
    head = b'{"hostile":"oversized","padding":"'
    tail = b'"}'
    return [Frame(_TEXT, head + b"x" * (_OVERSIZED_BYTES - len(head) - len(tail)) + tail)]


def _bad_close_code() -> list[Frame | Close]:
    return [Close(5000, "out-of-range close code")]


_BUILDERS: dict[str, Callable[[], list[Frame | Close]]] = {
    "not_json": _not_json,
    "unexpected_shapes": _unexpected_shapes,
    "huge_numbers": _huge_numbers,
    "binary_invalid_utf8": _binary_invalid_utf8,
    "text_invalid_utf8": _text_invalid_utf8,
    "deep_nesting": _deep_nesting,
    "oversized": _oversized,
    "bad_close_code": _bad_close_code,
}


def hostile_frames(kinds: Iterable[str] | None) -> list[Frame | Close]:
    """The frames of ``kinds`` (``None``: all), in catalogue order.

    Raises:
        ConfigurationError: an unknown kind.
    """
    wanted = HOSTILE_KINDS if kinds is None else tuple(kinds)
    for kind in wanted:
        if kind not in _BUILDERS:
            raise ConfigurationError(
                f"unknown hostile kind {kind!r}; known: {', '.join(HOSTILE_KINDS)}"
            )
    items: list[Frame | Close] = []
    for kind in HOSTILE_KINDS:
        if kind in wanted:
            items.extend(_BUILDERS[kind]())
    return items
