"""The emulator, driven by raw aiohttp WebSocket and HTTP clients over loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType

from neuroio.emulator import (
    HOSTILE_KINDS,
    OMIT,
    ClientRecord,
    Emulator,
    EntryFactory,
)
from neuroio.exceptions import ConfigurationError
from neuroio.messages import Entry

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


async def recv(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await ws.receive(timeout=STEP)


async def recv_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await recv(ws)
    assert msg.type is WSMsgType.TEXT, msg
    return json.loads(msg.data)


@asynccontextmanager
async def connected(
    session: aiohttp.ClientSession, emu: Emulator, token: str | None = TOKEN, **kwargs: Any
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket to the emulator, authenticated with ``token`` unless it is None."""
    async with session.ws_connect(emu.url, **kwargs) as ws:
        if token is not None:
            await ws.send_str(auth_frame(token))
            assert await recv_json(ws) == {"auth": "ok"}
        yield ws


# ---------------------------------------------------------------- authentication


async def test_auth_ok_records_the_client(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """A good token gets {"auth": "ok"}; the record shows an authenticated, live client."""
    async with connected(session, emu):
        assert len(emu.clients) == 1
        record = emu.clients[0]
        assert record.authenticated and record.open
        assert record.auth_tokens == [TOKEN]
        assert emu.live_clients == [record]
    await emu.wait_until(lambda: not emu.live_clients)
    assert record.closed_by == "client" and record.close_code == 1000
    assert record.closed_at is not None and record.closed_at >= record.connected_at


async def test_auth_rejected_closes_1008(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """A wrong token gets the error message, then close code 1008; it is never live."""
    async with session.ws_connect(emu.url) as ws:
        await ws.send_str(auth_frame("wrong-token"))
        assert await recv_json(ws) == {"error": "Authentication failed: invalid token"}
        msg = await recv(ws)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1008
    await emu.wait_until(lambda: not emu.clients[0].open)
    record = emu.clients[0]
    assert not record.authenticated and record.close_code == 1008
    assert record.closed_by == "server"
    assert emu.live_clients == []


@pytest.mark.parametrize(
    "frame",
    [
        '{"action":"AUTH","data":{"token":""}}',
        '{"action":"AUTH","data":{"token":5}}',
        '{"action":"AUTH","data":"tok"}',
        '{"action":"AUTH"}',
    ],
)
async def test_any_token_mode_still_rejects_bad_auth(
    session: aiohttp.ClientSession, frame: str
) -> None:
    """With tokens=None any non-empty string is accepted, but not an empty or missing one."""
    async with Emulator() as emu, session.ws_connect(emu.url) as ws:
        await ws.send_str(frame)
        assert "error" in await recv_json(ws)
        assert (await recv(ws)).data == 1008
    async with Emulator() as emu, connected(session, emu, token="anything"):
        assert emu.clients[0].authenticated


async def test_tokens_can_be_revoked_at_runtime(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Removing a token from ``tokens`` rejects later AUTHs and REST calls with it."""
    assert emu.tokens is not None
    emu.tokens.discard(OTHER)
    async with session.ws_connect(emu.url) as ws:
        await ws.send_str(auth_frame(OTHER))
        assert "error" in await recv_json(ws)
    headers = {"Authorization": f"Token {OTHER}"}
    async with session.get(f"{emu.api_url}/v1/entries/", headers=headers) as resp:
        assert resp.status == 401


async def test_auth_timeout_closes_silent_client(session: aiohttp.ClientSession) -> None:
    """A client that never sends AUTH is told so and closed with 1008."""
    async with Emulator(auth_timeout=0.05) as emu, session.ws_connect(emu.url) as ws:
        assert await recv_json(ws) == {"error": "Authentication timeout"}
        assert (await recv(ws)).data == 1008


async def test_repeated_auth_is_answered_once_each(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A second AUTH on a live connection is acknowledged and pushes nothing twice."""
    await emu.emit()
    async with connected(session, emu) as ws:
        first = await recv_json(ws)
        await ws.send_str(AUTH)
        assert await recv_json(ws) == {"auth": "ok"}
        await ws.send_str(PING)
        assert await recv_json(ws) == {"PING": "PONG"}
    assert first["id"] == 1
    assert emu.clients[0].auth_tokens == [TOKEN, TOKEN]


async def test_tokens_never_in_repr_or_logs(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The record keeps tokens for tests, but repr, frames and logs never show them."""
    caplog.set_level(logging.DEBUG)
    async with Emulator(tokens={TOKEN}) as emu:
        async with connected(session, emu):
            pass
        async with session.ws_connect(emu.url) as ws:
            await ws.send_str(auth_frame("bad-secret-value"))
            await recv_json(ws)
        headers = {"Authorization": f"Token {TOKEN}"}
        async with session.get(f"{emu.api_url}/v1/entries/", headers=headers) as resp:
            assert resp.status == 200
        await emu.wait_until(lambda: not any(r.open for r in emu.clients))
        texts = [repr(r) for r in emu.clients] + [str(r) for r in emu.clients] + [repr(emu)]
        texts += [str(f) for r in emu.clients for f in r.frames]
    assert emu.clients[0].auth_tokens == [TOKEN]
    assert '{"action":"AUTH","data":{"token":"<redacted>"}}' in emu.clients[0].frames
    for text in [*texts, caplog.text]:
        assert TOKEN not in text and "bad-secret-value" not in text


def test_client_record_repr_hides_tokens() -> None:
    """The dataclass repr leaves ``auth_tokens`` (and raw frames) out."""
    record = ClientRecord(id=1, connected_at=0.0, auth_tokens=["s3cr3t"], frames=["x"])
    assert "s3cr3t" not in repr(record)
    assert "auth_tokens" not in repr(record)


# ---------------------------------------------------------------- heartbeat and garbage


async def test_ping_pong_before_and_after_auth(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """PING is answered at any time after connecting; each PING time is recorded."""
    async with session.ws_connect(emu.url) as ws:
        await ws.send_str(PING)
        assert await recv_json(ws) == {"PING": "PONG"}
        await ws.send_str(AUTH)
        assert await recv_json(ws) == {"auth": "ok"}
        await ws.send_str(PING)
        assert await recv_json(ws) == {"PING": "PONG"}
    record = emu.clients[0]
    assert len(record.ping_times) == 2
    assert record.connected_at <= record.ping_times[0] <= record.ping_times[1]
    assert record.frames.count(PING) == 2


async def test_websocket_level_ping_is_answered(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A WebSocket PING control frame gets a PONG with the same payload."""
    async with connected(session, emu, autoping=False) as ws:
        await ws.ping(b"beat")
        msg = await recv(ws)
        assert msg.type is WSMsgType.PONG and msg.data == b"beat"


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        ("not json at all", "Invalid message: expected a JSON object"),
        ("[1, 2]", "Invalid message: expected a JSON object"),
        ('{"action":"SUBSCRIBE"}', "Unknown action: SUBSCRIBE"),
        ('{"hello":1}', "Missing action"),
        (b"\x00\x01", "Binary frames are not supported"),
    ],
)
async def test_garbage_gets_an_error_and_the_connection_stays(
    session: aiohttp.ClientSession, emu: Emulator, sent: str | bytes, error: str
) -> None:
    """Unknown actions and garbage are answered with {"error": ...}; PING still works."""
    async with connected(session, emu) as ws:
        if isinstance(sent, bytes):
            await ws.send_bytes(sent)
        else:
            await ws.send_str(sent)
        assert await recv_json(ws) == {"error": error}
        await ws.send_str(PING)
        assert await recv_json(ws) == {"PING": "PONG"}
    assert emu.clients[0].frames[1] == sent


# ---------------------------------------------------------------- events


async def test_emit_sends_event_shape(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """An event is {"id": entry id, "data": entry}, the entry exactly as emit returned it."""
    async with connected(session, emu) as ws:
        entry = await emu.emit(result="exact")
        event = await recv_json(ws)
    assert event == {"id": entry["id"], "data": entry}
    assert list(event) == ["id", "data"]
    assert entry["result"] == "exact" and emu.emitted == 1
    assert emu.clients[0].events_sent == 1


async def test_burst_arrives_in_id_order_at_every_client(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Every authenticated client gets every event of a burst, in id order."""
    async with connected(session, emu) as a, connected(session, emu, token=OTHER) as b:
        sent = await emu.burst(1500)
        for ws in (a, b):
            ids = [(await recv_json(ws))["id"] for _ in range(1500)]
            assert ids == [e["id"] for e in sent]
    assert [e["id"] for e in sent] == list(range(1, 1501))
    assert emu.emitted == 1500


async def test_only_authenticated_clients_get_events(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A connection that has not authenticated gets no events."""
    async with connected(session, emu, token=None) as anon, connected(session, emu) as ws:
        await emu.emit()
        await recv_json(ws)
        await anon.send_str(PING)
        # Frames arrive in order: had the event been sent to ``anon``, it would come first.
        assert await recv_json(anon) == {"PING": "PONG"}
    assert emu.clients[0].events_sent == 0


async def test_emit_explicit_entries_and_overrides(emu: Emulator) -> None:
    """emit() takes a ready entry (an id is added if missing) and overrides, OMIT removes."""
    first = await emu.emit({"created": "2024-01-01T00:00:00.000Z"})
    assert first["id"] == 1
    second = await emu.emit({"id": 50, "result": "new"}, result="ha", age=OMIT)
    assert second == {"id": 50, "result": "ha"}
    third = await emu.emit(face_image=OMIT)
    assert third["id"] == 51 and "face_image" not in third
    with pytest.raises(ConfigurationError):
        await emu.emit({"id": "seven"})


async def test_push_while_disconnected_true_delivers_backlog(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Events emitted while a token has no live client are pushed, after the AUTH answer."""
    before = await emu.burst(3)
    async with connected(session, emu) as ws:  # checks {"auth": "ok"} comes first
        assert [(await recv_json(ws))["id"] for _ in range(3)] == [e["id"] for e in before]
        live = await emu.emit()
        assert (await recv_json(ws))["id"] == live["id"]
    await emu.wait_until(lambda: not emu.live_clients)
    missed = await emu.burst(2)
    async with connected(session, emu) as ws:
        await ws.send_str(PING)
        got = [await recv_json(ws) for _ in range(3)]
    assert [g["id"] for g in got[:2]] == [e["id"] for e in missed]
    assert got[2] == {"PING": "PONG"}


async def test_push_while_disconnected_false_drops_them(session: aiohttp.ClientSession) -> None:
    """With push_while_disconnected=False, an event emitted with no live client is only in
    the REST history; the next client gets only what is emitted after it authenticated."""
    async with Emulator(tokens={TOKEN}, push_while_disconnected=False) as emu:
        await emu.emit()
        async with connected(session, emu) as ws:
            await ws.send_str(PING)
            assert await recv_json(ws) == {"PING": "PONG"}  # event 1 was not pushed
            await emu.emit()
            assert (await recv_json(ws))["id"] == 2
        await emu.wait_until(lambda: not emu.live_clients)
        await emu.burst(2)  # ids 3 and 4, nobody connected
        async with connected(session, emu) as ws:
            await emu.emit()
            assert (await recv_json(ws))["id"] == 5
        body = await rest(session, emu, limit=10)
    assert [e["id"] for e in body["results"]] == [5, 4, 3, 2, 1]


async def test_stream_keeps_its_rate(session: aiohttp.ClientSession) -> None:
    """start_stream emits at the given rate (never faster) until stop_stream."""
    async with Emulator(rate=200) as emu, connected(session, emu, token="t") as ws:
        t0 = time.monotonic()
        await emu.wait_until(lambda: emu.emitted >= 60, timeout=STEP)
        elapsed = time.monotonic() - t0
        await emu.stop_stream()
        count = emu.emitted
        ids = [(await recv_json(ws))["id"] for _ in range(count)]
        await emu.flush()
        assert emu.emitted == count
    # 60 events at 200/s take at least 0.295 s (the first goes out at once).
    assert elapsed >= 59 / 200 - 0.01
    assert ids == list(range(1, count + 1))


async def test_start_stream_validates_rate(emu: Emulator) -> None:
    """A stream needs a positive finite rate."""
    for rate in (0, -1, float("inf")):
        with pytest.raises(ConfigurationError):
            emu.start_stream(rate)


async def test_send_raw_text_and_binary(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """send_raw sends str as a text frame and bytes as a binary frame, unchanged."""
    async with connected(session, emu) as ws:
        await emu.send_raw('{"weird": true')
        await emu.send_raw(b"\x01\x02")
        text, binary = await recv(ws), await recv(ws)
    assert (text.type, text.data) == (WSMsgType.TEXT, '{"weird": true')
    assert (binary.type, binary.data) == (WSMsgType.BINARY, b"\x01\x02")


# ---------------------------------------------------------------- connection controls


async def test_freeze_silences_open_connections(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Frozen: the TCP connection stays open and PINGs are recorded, but no PONG and no
    events go out; what was missed is not sent after unfreeze."""
    async with connected(session, emu) as ws:
        emu.freeze()
        await ws.send_str(PING)
        await ws.send_str(PING)
        await emu.emit()
        await emu.wait_until(lambda: len(emu.clients[0].ping_times) == 2)
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)
        # A connection opened while frozen is served normally.
        async with connected(session, emu) as fresh:
            await emu.emit()
            assert (await recv_json(fresh))["id"] == 2
        emu.unfreeze()
        await ws.send_str(PING)
        assert await recv_json(ws) == {"PING": "PONG"}
        await emu.emit()
        # Had the frozen PONGs or event 1 been held back and sent, they would come first.
        assert (await recv_json(ws))["id"] == 3
        assert emu.clients[0].open


async def test_freeze_new_clients_ignores_their_auth(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """freeze(new_clients=True) also silences connections made while frozen."""
    emu.freeze(new_clients=True)
    async with session.ws_connect(emu.url) as ws:
        await ws.send_str(AUTH)
        await emu.wait_until(lambda: bool(emu.clients and emu.clients[0].auth_tokens))
        emu.unfreeze()
        await ws.send_str(PING)
        assert await recv_json(ws) == {"PING": "PONG"}  # no {"auth": "ok"} before it
    assert not emu.clients[0].authenticated


async def test_close_clients_with_code(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """close_clients sends queued events first, then the close frame with code and reason."""
    async with connected(session, emu) as ws, connected(session, emu, token=None) as anon:
        entry = await emu.emit()
        await emu.close_clients(4000, "maintenance")
        assert (await recv_json(ws))["id"] == entry["id"]
        msg = await recv(ws)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4000, "maintenance")
        assert (await recv(anon)).data == 4000
    await emu.wait_until(lambda: not any(r.open for r in emu.clients))
    for record in emu.clients:
        assert (record.close_code, record.closed_by) == (4000, "server")


async def test_close_clients_wait_closed(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """With wait_closed=True, close_clients returns once the closing handshake is done."""
    async with connected(session, emu) as ws:
        reader = asyncio.create_task(recv(ws))
        await emu.close_clients(1000, wait_closed=True)
        assert not emu.clients[0].open and emu.live_clients == []
        assert (await reader).type is WSMsgType.CLOSE


async def test_unanswered_close_is_aborted(session: aiohttp.ClientSession) -> None:
    """A client that never answers the close frame is cut off after close_timeout."""
    async with Emulator(close_timeout=0.1) as emu, connected(session, emu, token="t"):
        t0 = time.monotonic()
        await emu.close_clients(1000, wait_closed=True)  # the client does not read
        assert time.monotonic() - t0 < STEP
        assert not emu.clients[0].open


async def test_client_close_code_recorded(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """When the client closes first, its close code is recorded."""
    async with connected(session, emu) as ws:
        await ws.close(code=4321)
    await emu.wait_until(lambda: not emu.clients[0].open)
    assert (emu.clients[0].close_code, emu.clients[0].closed_by) == (4321, "client")


async def test_abort_clients(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """abort_clients drops the TCP connection with no close frame."""
    async with connected(session, emu) as ws:
        await emu.abort_clients()
        msg = await recv(ws)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        assert ws.close_code == 1006  # aiohttp's code for "no close frame"
    record = emu.clients[0]
    assert (record.closed_by, record.close_code) == ("abort", None)
    assert not record.open and emu.live_clients == []


async def test_restart_same_port(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """restart: clients get 1001, connections are refused during the downtime, then the
    same URL works again and the history is kept."""
    url = emu.url
    await emu.emit()
    async with connected(session, emu) as ws:
        await recv_json(ws)
        restarting = asyncio.create_task(emu.restart(downtime=0.5))
        msg = await recv(ws)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    # The listening socket closes before clients are told, so this is inside the downtime.
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.ws_connect(url)
    await restarting
    assert emu.url == url
    async with connected(session, emu) as ws:
        await emu.emit()
        assert (await recv_json(ws))["id"] == 2
    assert (await rest(session, emu))["count"] == 2


async def test_restart_abort_and_stop(session: aiohttp.ClientSession) -> None:
    """restart(abort=True) drops connections; stop() closes them with 1001; start() again
    binds the same port."""
    emu = Emulator()
    await emu.start()
    try:
        async with connected(session, emu, token="t") as ws:
            await emu.restart(abort=True)
            assert (await recv(ws)).type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        async with connected(session, emu, token="t") as ws:
            port = emu.port
            stopping = asyncio.create_task(emu.stop())
            assert (await recv(ws)).data == 1001
            await stopping
        await emu.start()
        assert emu.port == port
        async with connected(session, emu, token="t"):
            pass
    finally:
        await emu.stop()
    assert [r.closed_by for r in emu.clients] == ["abort", "server", "client"]


async def test_serve_forever_stops_when_cancelled(session: aiohttp.ClientSession) -> None:
    """serve_forever starts the emulator and stops it (clients get 1001) on cancellation."""
    emu = Emulator()
    task = asyncio.create_task(emu.serve_forever())
    await emu.wait_until(lambda: emu.running)
    async with connected(session, emu, token="t") as ws:
        task.cancel()
        assert (await recv(ws)).data == 1001
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not emu.running


async def test_wait_for_clients(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """wait_for_clients counts connections seen in total; it raises TimeoutError in time."""
    async with connected(session, emu, token=None):
        await emu.wait_for_clients(1, authenticated=False)
        with pytest.raises(TimeoutError):
            await emu.wait_for_clients(1, timeout=0.05)
    async with connected(session, emu):
        await emu.wait_for_clients(1)


async def test_wss_with_tls(session: aiohttp.ClientSession) -> None:
    """With an SSL context the emulator serves wss:// and https:// on the same port."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with Emulator(ssl=server_ctx) as emu:
        assert emu.url.startswith("wss://") and emu.api_url.startswith("https://")
        async with connected(session, emu, token="t", ssl=client_ctx) as ws:
            await emu.emit()
            assert (await recv_json(ws))["id"] == 1
        headers = {"Authorization": "Token t"}
        url = f"{emu.api_url}/v1/entries/"
        async with session.get(url, headers=headers, ssl=client_ctx) as resp:
            body = await resp.json()
        assert body["count"] == 1


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


# ---------------------------------------------------------------- REST


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


async def test_rest_needs_a_valid_token(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """No header or a wrong token is 401 with {"detail": ...}."""
    assert "detail" in await rest(session, emu, token=None, status=401)
    assert "detail" in await rest(session, emu, token="nope", status=401)
    async with session.get(
        f"{emu.api_url}/v1/entries/", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert resp.status == 401


async def test_rest_pagination_newest_first(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """Results come newest first; count, next and previous follow limit/offset."""
    await emu.burst(45)
    page = await rest(session, emu)
    assert page["count"] == 45 and page["previous"] is None
    assert [e["id"] for e in page["results"]] == list(range(45, 25, -1))
    seen = [e["id"] for e in page["results"]]
    async with session.get(page["next"], headers={"Authorization": f"Token {TOKEN}"}) as resp:
        second = await resp.json()
    assert second["previous"] is not None and second["next"] is not None
    assert "offset" not in second["previous"]  # back to the first page
    seen += [e["id"] for e in second["results"]]
    last = await rest(session, emu, limit=20, offset=40)
    assert last["next"] is None
    seen += [e["id"] for e in last["results"]]
    assert seen == list(range(45, 0, -1))
    full = await rest(session, emu, limit=10_000)
    assert len(full["results"]) == 45
    assert full["results"][0] == json.loads(json.dumps(full["results"][0]))


async def test_rest_results_are_the_emitted_entries(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A REST item is byte-for-byte the data of the event that was pushed."""
    sent = await emu.burst(3)
    page = await rest(session, emu)
    assert page["results"] == sent[::-1]


async def test_rest_limit_is_capped(session: aiohttp.ClientSession) -> None:
    """limit is capped at 1000; a non-positive limit means the default 20."""
    async with Emulator(tokens={TOKEN}) as emu:
        await emu.burst(1100)
        assert len((await rest(session, emu, limit=5000))["results"]) == 1000
        assert len((await rest(session, emu, limit=0))["results"]) == 20


async def test_rest_id_from(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """id_from and entry_id_from keep ids >= the bound (both given: the larger)."""
    await emu.burst(30)
    page = await rest(session, emu, id_from=25, limit=100)
    assert [e["id"] for e in page["results"]] == [30, 29, 28, 27, 26, 25]
    page = await rest(session, emu, entry_id_from=28)
    assert page["count"] == 3
    page = await rest(session, emu, entry_id_from=28, id_from=29)
    assert page["count"] == 2


async def test_rest_ignore_id_from(session: aiohttp.ClientSession) -> None:
    """ignore_id_from=True simulates a platform without id_from support."""
    async with Emulator(tokens={TOKEN}, ignore_id_from=True) as emu:
        await emu.burst(5)
        assert (await rest(session, emu, id_from=4))["count"] == 5


async def test_rest_filters(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """Every documented filter narrows the list; list filters take comma-joined values."""
    await emu.emit(
        created="2024-01-01T10:00:00.000Z",
        result="exact",
        liveness="passed",
        mood="happiness",
        sex=1,
        age=30,
        source={"id": 1, "name": "A"},
        space={"id": 10, "name": "S"},
    )
    await emu.emit(
        created="2024-01-02T10:00:00.000Z",
        result="new",
        liveness="failed",
        mood="neutral",
        sex=0,
        age=50,
        source={"id": 2, "name": "B"},
        space={"id": 11, "name": "T"},
    )
    await emu.emit(
        created="2024-01-03T10:00:00",  # no zone: UTC
        result="ha",
        liveness="undetermined",
        mood="sadness",
        sex=1,
        age=70,
        source={"id": 3, "name": "C"},
        space={"id": 10, "name": "S"},
    )

    async def ids(**params: Any) -> list[int]:
        page = await rest(session, emu, **params)
        assert page["count"] == len(page["results"])
        return [e["id"] for e in page["results"]]

    assert await ids(date_from="2024-01-02T00:00:00Z") == [3, 2]
    assert await ids(date_to="2024-01-02T10:00:00.000Z") == [2, 1]
    assert await ids(date_from="2024-01-01T12:00:00+00:00", date_to="2024-01-02T12:00:00Z") == [2]
    assert await ids(result="exact") == [1]
    assert await ids(result="exact,ha") == [3, 1]
    assert await ids(liveness="failed") == [2]
    assert await ids(mood="sadness,happiness") == [3, 1]
    assert await ids(sex=1) == [3, 1]
    assert await ids(age_from=40) == [3, 2]
    assert await ids(age_to=50) == [2, 1]
    assert await ids(age_from=40, age_to=60) == [2]
    assert await ids(sources_ids="1,3") == [3, 1]
    assert await ids(spaces_ids="11") == [2]
    assert await ids(result="exact,ha", sources_ids="3", id_from=2) == [3]
    assert await ids(result="junk") == []


async def test_rest_filtered_pagination(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """count is the number of matches; offset/limit page through matches only."""
    for i in range(1, 31):
        await emu.emit(result="exact" if i % 3 == 0 else "new")
    page = await rest(session, emu, result="exact", limit=4, offset=4)
    assert page["count"] == 10
    assert [e["id"] for e in page["results"]] == [18, 15, 12, 9]
    assert "result=exact" in page["next"] and "offset=8" in page["next"]


@pytest.mark.parametrize(
    "params",
    [{"id_from": "x"}, {"age_from": "old"}, {"date_from": "yesterday"}, {"sources_ids": "1,a"}],
)
async def test_rest_bad_parameter_is_400(
    session: aiohttp.ClientSession, emu: Emulator, params: dict[str, str]
) -> None:
    """A malformed filter value is a 400 with a detail naming the parameter."""
    body = await rest(session, emu, status=400, **params)
    assert next(iter(params)) in body["detail"]


async def test_rest_unsorted_ids_still_served_newest_first(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Entries emitted out of id order are served by descending id."""
    for i in (10, 5, 7):
        await emu.emit(id=i)
    assert [e["id"] for e in (await rest(session, emu))["results"]] == [10, 7, 5]
    assert [e["id"] for e in (await rest(session, emu, id_from=6))["results"]] == [10, 7]


async def test_rest_history_size(session: aiohttp.ClientSession) -> None:
    """Only the newest history_size entries are kept."""
    async with Emulator(tokens={TOKEN}, history_size=3) as emu:
        await emu.burst(5)
        page = await rest(session, emu)
    assert [e["id"] for e in page["results"]] == [5, 4, 3]


async def test_fail_rest_count_and_heal(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """fail_rest(count=n) fails the next n requests; heal_rest ends an open-ended failure;
    rest_requests records each request's parameters."""
    await emu.emit()
    emu.fail_rest(503, count=2)
    await rest(session, emu, status=503, limit=5)
    await rest(session, emu, status=503)
    assert (await rest(session, emu))["count"] == 1
    emu.fail_rest()
    await rest(session, emu, status=500)
    await rest(session, emu, token=None, status=500)  # failure comes before auth
    emu.heal_rest()
    await rest(session, emu, id_from=1)
    assert emu.rest_requests == [{"limit": "5"}, {}, {}, {}, {}, {"id_from": "1"}]


async def test_fail_rest_429_retry_after(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """A 429 failure carries Retry-After when retry_after is given."""
    emu.fail_rest(429, count=1, retry_after=0.25)
    async with session.get(
        f"{emu.api_url}/v1/entries/", headers={"Authorization": f"Token {TOKEN}"}
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "0.25"
        assert "detail" in await resp.json()
    with pytest.raises(ConfigurationError):
        emu.fail_rest(200)


# ---------------------------------------------------------------- replay


def write_recording(path: Path, items: list[tuple[float, str | bytes]]) -> Path:
    with path.open("w") as f:
        for t, frame in items:
            if isinstance(frame, bytes):
                line = {"t": t, "frame_b64": base64.b64encode(frame).decode()}
            else:
                line = {"t": t, "frame": frame}
            f.write(json.dumps(line) + "\n")
    return path


def event_frame(entry_id: int) -> str:
    return json.dumps({"id": entry_id, "data": {"id": entry_id, "result": "exact"}})


async def test_replay_keeps_order_and_timing(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A recording is played after the first AUTH: events (also into the history) with
    their relative timing divided by the speed; AUTH answers and PONGs skipped; other
    frames sent as they were."""
    recording = write_recording(
        tmp_path / "rec.jsonl",
        [
            (1000.0, '{"auth":"ok"}'),
            (1000.1, event_frame(101)),
            (1000.2, '{"PING":"PONG"}'),
            (1000.3, event_frame(102)),
            (1000.4, '{"error":"something odd"}'),
            (1000.5, event_frame(103)),
            (1000.5, b"\x00binary"),
        ],
    )
    async with Emulator(tokens={TOKEN}, replay=recording, replay_speed=2.0) as emu:
        async with connected(session, emu, token=None) as ws:
            assert emu.emitted == 0  # nothing before the first AUTH
            await ws.send_str(AUTH)
            assert await recv_json(ws) == {"auth": "ok"}
            got: list[tuple[float, aiohttp.WSMessage]] = []
            for _ in range(5):
                msg = await recv(ws)
                got.append((time.monotonic(), msg))
            await emu.wait_replayed(timeout=STEP)
        page = await rest(session, emu)
    texts = [m.data for _, m in got]
    assert [json.loads(t)["id"] for t in (texts[0], texts[1], texts[3])] == [101, 102, 103]
    assert json.loads(texts[2]) == {"error": "something odd"}
    assert got[4][1].type is WSMsgType.BINARY and got[4][1].data == b"\x00binary"
    # Recorded 0.2 s apart, played at speed 2: at least 0.1 s apart.
    assert got[1][0] - got[0][0] >= 0.09
    assert got[3][0] - got[1][0] >= 0.09
    assert [e["id"] for e in page["results"]] == [103, 102, 101]
    assert emu.emitted == 3


async def test_replay_as_fast_as_possible(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """replay_speed=0 plays the whole recording at once, however far apart it was."""
    recording = write_recording(
        tmp_path / "rec.jsonl", [(i * 3600.0, event_frame(i)) for i in range(1, 201)]
    )
    async with Emulator(replay=recording, replay_speed=0) as emu:
        async with connected(session, emu, token="t") as ws:
            await emu.wait_replayed(timeout=STEP)
            ids = [(await recv_json(ws))["id"] for _ in range(200)]
    assert ids == list(range(1, 201))


@pytest.mark.parametrize(
    "content",
    ['{"t": 1}\n', "not json\n", '{"t": "x", "frame": "{}"}\n', '{"t": 1, "frame_b64": "@@"}\n'],
)
async def test_replay_file_errors(tmp_path: Path, content: str) -> None:
    """A bad recording is refused at start with the line number."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 0, "frame": "{}"}\n' + content)
    emu = Emulator(replay=path)
    with pytest.raises(ConfigurationError, match="line 2"):
        await emu.start()
    with pytest.raises(ConfigurationError):
        await Emulator(replay=tmp_path / "missing.jsonl").start()
    with pytest.raises(ConfigurationError):
        await Emulator().wait_replayed()


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"rate": 0},
        {"auth_timeout": 0},
        {"history_size": 0},
        {"replay_speed": -1},
        {"tokens": [""]},
        {"close_timeout": 0},
    ],
)
def test_invalid_options(kwargs: dict[str, Any]) -> None:
    """Invalid options raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        Emulator(**kwargs)


def test_url_needs_start() -> None:
    """url, api_url and port exist only once started."""
    with pytest.raises(RuntimeError):
        _ = Emulator().url


# ---------------------------------------------------------------- entries


def test_factory_is_reproducible_with_seed_and_start_time() -> None:
    """The same seed and start_time give the same entries."""
    start = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    a = [EntryFactory(3, start_time=start).make() for _ in range(1)]
    b = [EntryFactory(3, start_time=start).make() for _ in range(1)]
    assert a == b
    fa, fb = EntryFactory(3, start_time=start), EntryFactory(3, start_time=start)
    assert [fa.make() for _ in range(50)] == [fb.make() for _ in range(50)]
    assert EntryFactory(4, start_time=start).make() != EntryFactory(3, start_time=start).make()


def test_factory_entries_are_realistic() -> None:
    """Every documented field, consistent results and confidences, increasing ids and
    times, returning people, a handful of cameras, about 800 bytes of JSON each."""
    factory = EntryFactory(11, start_id=1000)
    entries = [factory.make() for _ in range(3000)]
    fields = {
        "id", "created", "pid", "pid_created", "result", "confidence", "age", "sex",
        "mood", "liveness", "source", "space", "face_image", "full_image",
        "initial_face_image", "initial_full_image", "facesize", "exposure", "pan", "tilt",
    }  # fmt: skip
    assert all(set(e) == fields for e in entries)
    assert [e["id"] for e in entries] == list(range(1000, 4000))
    created = [e["created"] for e in entries]
    assert created == sorted(created)
    assert all(c.endswith("Z") and len(c) == 24 for c in created)
    for e in entries:
        parsed = Entry.from_dict(e)
        assert not parsed.extra, e  # every value fits the typed entry
        c = e["confidence"]
        r = e["result"]
        if r in ("exact", "reinit"):
            assert c >= 79.3
        elif r == "ha":
            assert 75.5 <= c < 79.3
        elif r == "junk":
            assert 68.84 <= c < 75.5
        elif r == "new":
            assert c < 68.84 and e["pid_created"] == e["created"]
        if r in ("nm", "det"):
            assert e["pid"] is None
        else:
            assert e["pid"] is not None and e["pid_created"] <= e["created"]
    results = Counter(e["result"] for e in entries)
    assert set(results) == {"new", "reinit", "exact", "ha", "junk", "nm", "det"}
    assert results.most_common(1)[0][0] == "exact"
    assert len({e["source"]["id"] for e in entries}) <= 6
    pids = Counter(e["pid"] for e in entries if e["pid"])
    assert pids.most_common(1)[0][1] > 1  # people come back
    sizes = [len(msgspec.json.encode(e)) for e in entries]
    assert 700 <= sum(sizes) / len(sizes) <= 900


def test_factory_overrides() -> None:
    """Overrides replace fields; a result override keeps the confidence consistent; an id
    override moves later ids past it; OMIT removes a field."""
    factory = EntryFactory(1)
    junk = factory.make(result="junk")
    assert 68.84 <= junk["confidence"] < 75.5
    assert factory.make(id=100)["id"] == 100
    assert factory.make()["id"] == 101
    assert "tilt" not in factory.make(tilt=OMIT)
    assert factory.make(age=None)["age"] is None
