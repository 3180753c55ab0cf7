"""Recordings of a stream: every frame the server sent, with the time it was received.

A recording is a JSON Lines file, one frame per line::

    {"t": 1722262407.306, "frame": "{\\"id\\":1,\\"data\\":{...}}"}
    {"t": 1722262409.112, "frame_b64": "AAEC..."}

``t`` is ``time.time()`` when the frame was received; text frames are kept verbatim in
``frame``, binary ones base64-encoded in ``frame_b64``. A frame recovered from the REST API
after a gap (not pushed over the socket) also carries ``"backfilled": true``. Only the
server's frames are recorded: the client's AUTH frame, the one that holds the token, never is.
A server frame may still hold a token (an error message that echoes it): every token the
process knows (those registered with :mod:`neuroio._redact`) is replaced by ``***`` in every
frame, text and binary, before it is written.

``neuroio-events listen --record FILE`` writes recordings; ``neuroio-events emulate --replay
FILE`` plays them back.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from . import _redact
from ._io import open_private
from ._io import write_all as write_all  # re-exported: it used to live here
from .exceptions import ConfigurationError

__all__ = ["RecordedFrame", "RecordingWriter", "encode_record", "read_recording", "redact_frame"]

logger = logging.getLogger("neuroio.recording")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


@dataclass(frozen=True)
class RecordedFrame:
    """One frame of a recording.

    Attributes:
        t: ``time.time()`` when the frame was received.
        frame: the frame, ``str`` for a text frame and ``bytes`` for a binary one.
        backfilled: the frame was recovered from the REST API, not pushed over the socket.
    """

    t: float
    frame: str | bytes
    backfilled: bool = False


def encode_record(frame: str | bytes, t: float | None = None, *, backfilled: bool = False) -> bytes:
    """One line of a recording (with its ``\\n``) for ``frame`` received at ``t``.

    Every token the process knows is redacted from ``frame`` first (see :func:`redact_frame`).

    Args:
        frame: the frame as received: ``str`` for text, ``bytes`` for binary.
        t: when it was received; ``None`` means now.
        backfilled: mark the frame as recovered from the REST API.
    """
    record: dict[str, Any] = {"t": time.time() if t is None else t}
    frame = redact_frame(frame)
    if isinstance(frame, str):
        record["frame"] = frame
    else:
        record["frame_b64"] = base64.b64encode(frame).decode("ascii")
    if backfilled:
        record["backfilled"] = True
    return _encoder.encode(record) + b"\n"


def redact_frame(frame: str | bytes) -> str | bytes:
    """``frame`` with every registered token replaced by ``***``, of the same type.

    A text frame is searched as it is, and also as JSON: a server may write a token with
    escapes (``\\u0041...``), which a plain search would miss; such a frame is then written
    re-encoded from its redacted JSON value. A binary frame is searched as UTF-8, with the bytes
    that are not UTF-8 carried through unchanged.
    """
    if isinstance(frame, str):
        return _redact_text(frame)
    # surrogateescape maps every byte that is not UTF-8 to a lone surrogate and back, so the
    # bytes around a token come out exactly as they went in.
    text = frame.decode("utf-8", "surrogateescape")
    clean = _redact_text(text)
    return frame if clean == text else clean.encode("utf-8", "surrogateescape")


def _redact_text(text: str) -> str:
    clean = _redact.redact(text)
    if "\\" not in clean:
        return clean
    try:
        value = _decoder.decode(clean)
        redacted = _redact_value(value)
    except (msgspec.DecodeError, UnicodeEncodeError, RecursionError):
        # Not JSON, or nested too deep to walk (a hostile frame, not a server echoing a
        # token in an error message): the plain search above is what can be done.
        return clean
    if redacted == value:
        return clean
    return _encoder.encode(redacted).decode("utf-8", "surrogatepass")


def _redact_value(value: Any) -> Any:
    """A JSON value with every registered token redacted from its strings and keys."""
    if isinstance(value, str):
        return _redact.redact(value)
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, dict):
        return {_redact.redact(k): _redact_value(v) for k, v in value.items()}
    return value


class RecordingWriter:
    """Appends frames to a recording file, one flushed line per frame.

    The file is created with mode ``0600`` (events describe people) and appended to if it
    exists. Use it as a context manager, or call :meth:`close`.

    Args:
        path: the recording file.

    Raises:
        ConfigurationError: the file cannot be opened for writing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # 0600 whatever the umask: a recording holds person ids and image links.
            self._fd: int | None = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open the recording file {self.path}: {exc.strerror}"
            ) from exc
        self.frames = 0
        """Frames written so far."""

    def __repr__(self) -> str:
        return f"<RecordingWriter {str(self.path)!r} frames={self.frames}>"

    @property
    def fileno(self) -> int:
        """The open file descriptor (for writers that batch lines themselves)."""
        if self._fd is None:
            raise ValueError("the recording is closed")
        return self._fd

    def write(
        self, frame: str | bytes, t: float | None = None, *, backfilled: bool = False
    ) -> None:
        """Append one frame received at ``t`` (``None``: now).

        Raises:
            OSError: the line could not be written (disk full, ...).
        """
        write_all(self.fileno, encode_record(frame, t, backfilled=backfilled))
        self.frames += 1

    def close(self) -> None:
        """Close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_recording(path: str | os.PathLike[str]) -> Iterator[RecordedFrame]:
    """Yield the frames of a recording, in file order.

    Blank lines are skipped. A last line cut short (the recorder was killed while writing it)
    is skipped with a warning; any other line that is not a record is an error.

    Raises:
        ConfigurationError: the file cannot be read, or a line is not a record (the message
            names the file and the line).
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            lines = file.read().split(b"\n")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the recording {path}: {exc.strerror}") from exc
    last = len(lines)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield _parse_line(line)
        except ValueError as exc:
            if number == last:
                # No newline after it: the writer stopped mid-line.
                logger.warning("%s, line %d: incomplete last record skipped", path, number)
                return
            raise ConfigurationError(f"{path}, line {number}: {exc}") from None


def _parse_line(line: bytes) -> RecordedFrame:
    try:
        item = _decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(item, dict):
        raise ValueError("expected a JSON object")
    t = item.get("t")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        raise ValueError("'t' must be a number of seconds")
    backfilled = item.get("backfilled") is True
    text = item.get("frame")
    if isinstance(text, str):
        return RecordedFrame(float(t), text, backfilled)
    encoded = item.get("frame_b64")
    if isinstance(encoded, str):
        try:
            return RecordedFrame(float(t), base64.b64decode(encoded, validate=True), backfilled)
        except binascii.Error:
            raise ValueError("'frame_b64' is not base64") from None
    raise ValueError("needs a 'frame' or a 'frame_b64' string")
