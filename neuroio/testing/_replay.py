"""Playing a recording back: the frames of :func:`neuroio.recording.read_recording`, in time.

The emulator reads recordings with the one recording reader, so whatever ``listen --record``
wrote (including a last line torn by a killed recorder) plays back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType

from .._protocol.frames import Kind, classify
from ..recording import read_recording
from ._frames import Frame, decoder

__all__ = ["load_recording", "play", "replayed_entry"]

# What a recorded frame becomes when played: skipped, an entry to emit, or sent as is.
SKIP: Any = object()


def load_recording(path: Path) -> list[tuple[float, Frame]]:
    """The frames of the recording at ``path``, each with its time.

    Raises:
        ConfigurationError: the file cannot be read or a line is not a record (the message
            names the line).
    """
    frames: list[tuple[float, Frame]] = []
    for record in read_recording(path):
        if isinstance(record.frame, str):
            frame = Frame(WSMsgType.TEXT, record.frame.encode("utf-8", "surrogatepass"))
        else:
            frame = Frame(WSMsgType.BINARY, record.frame)
        frames.append((record.t, frame))
    return frames


async def play(
    frames: list[tuple[float, Frame]], speed: float, deliver: Callable[[Frame], None]
) -> None:
    """Hand each frame to ``deliver`` with the recorded gaps divided by ``speed`` (0: none)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0 = frames[0][0] if frames else 0.0
    for n, (t, frame) in enumerate(frames):
        if speed > 0:
            delay = start + (t - t0) / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elif n % 1000 == 999:
            await asyncio.sleep(0)
        deliver(frame)


def replayed_entry(frame: Frame) -> Any:
    """What a recorded frame becomes: :data:`SKIP` (AUTH answers and PONGs, which the
    emulator gives itself), the entry of an event to emit again, or ``None``: send as is."""
    if frame.opcode is not WSMsgType.TEXT:
        return None
    kind = classify(frame.payload.decode("utf-8", "replace"))
    if kind in (Kind.AUTH_OK, Kind.AUTH_REJECTED, Kind.PONG):
        return SKIP
    if kind is not Kind.EVENT:
        return None
    with contextlib.suppress(msgspec.DecodeError):
        value = decoder.decode(frame.payload)
        if isinstance(value, dict):
            return _entry_of(value)
    return None


def _entry_of(event: dict[str, Any]) -> dict[str, Any] | None:
    event_id = event.get("id")
    data = event.get("data")
    if not isinstance(event_id, int) or isinstance(event_id, bool) or not isinstance(data, dict):
        return None
    data.setdefault("id", event_id)
    return data if data["id"] == event_id else None
