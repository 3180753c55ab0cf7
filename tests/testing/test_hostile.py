"""The hostile frames catalogue, as a raw client receives it."""

from __future__ import annotations

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType

from neuroio.exceptions import ConfigurationError
from neuroio.testing import HOSTILE_KINDS, Emulator

from .conftest import connected, recv

# ---------------------------------------------------------------- hostile frames


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
async def test_hostile_frames(session: aiohttp.ClientSession, emu: Emulator, kind: str) -> None:
    """Each hostile kind reaches a live client as the documented abuse."""
    async with connected(session, emu, max_msg_size=0, decode_text=False) as ws:
        await emu.send_hostile([kind])
        if kind == "bad_close_code":
            msg = await recv(ws)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 5000)
            return
        msg = await recv(ws)
    data = msg.data
    if kind == "binary_invalid_utf8":
        assert msg.type is WSMsgType.BINARY
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
        return
    assert msg.type is WSMsgType.TEXT
    if kind == "text_invalid_utf8":
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
    elif kind == "oversized":
        assert len(data) > 8 * 1024 * 1024
    elif kind == "deep_nesting":
        assert data.startswith(b"[" * 100_000)
    elif kind == "huge_numbers":
        assert b"1e400" in data
    elif kind == "unexpected_shapes":
        assert data == b'{"id":"x","data":5}'
    else:
        assert kind == "not_json"
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(data)


async def test_hostile_catalogue_in_order(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """send_hostile() sends the whole catalogue and ends with the bad close code; with the
    default aiohttp limits the client gives up on the oversized frame (1009)."""
    async with connected(session, emu) as ws:
        await emu.send_hostile()
        kinds: list[WSMsgType] = []
        while True:
            msg = await recv(ws)
            kinds.append(msg.type)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
    assert WSMsgType.BINARY in kinds
    assert ws.close_code in (1007, 1009)  # invalid UTF-8 text or too big, whichever first
    with pytest.raises(ConfigurationError):
        await emu.send_hostile(["no-such-kind"])
