"""Shared by the emulator tests: raw aiohttp WebSocket and HTTP clients over loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from neuroio.testing import Emulator

if TYPE_CHECKING:
    # A socket opened with decode_text=False hands text as bytes: aiohttp types it apart.
    from aiohttp.http import WSMessageTextBytes

TOKEN = "tok-3f9a1c77e2"
OTHER = "tok-other-55aa"
AUTH = json.dumps({"action": "AUTH", "data": {"token": TOKEN}})
PING = '{"action":"PING"}'
STEP = 2.0  # bound on any single wait; every test normally finishes far sooner


def auth_frame(token: str) -> str:
    return json.dumps({"action": "AUTH", "data": {"token": token}})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(tokens={TOKEN, OTHER}, seed=7) as e:
        yield e


async def recv(
    ws: aiohttp.ClientWebSocketResponse[bool],
) -> aiohttp.WSMessage | WSMessageTextBytes:
    return await ws.receive(timeout=STEP)


async def recv_json(ws: aiohttp.ClientWebSocketResponse[bool]) -> Any:
    msg = await recv(ws)
    assert msg.type is WSMsgType.TEXT, msg
    return json.loads(msg.data)


@asynccontextmanager
async def connected(
    session: aiohttp.ClientSession, emu: Emulator, token: str | None = TOKEN, **kwargs: Any
) -> AsyncIterator[aiohttp.ClientWebSocketResponse[bool]]:
    """A WebSocket to the emulator, authenticated with ``token`` unless it is None."""
    async with session.ws_connect(emu.url, **kwargs) as ws:
        if token is not None:
            await ws.send_str(auth_frame(token))
            assert await recv_json(ws) == {"auth": "ok"}
        yield ws


async def rest(
    session: aiohttp.ClientSession,
    emu: Emulator,
    token: str | None = TOKEN,
    status: int = 200,
    **params: Any,
) -> Any:
    headers = {"Authorization": f"Token {token}"} if token is not None else {}
    query = {k: str(v) for k, v in params.items()}
    url = f"{emu.api_url}/v1/entries/"
    async with session.get(url, headers=headers, params=query) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()
