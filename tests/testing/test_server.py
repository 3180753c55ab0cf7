"""The WebSocket side: AUTH, PING, events, connection controls, TLS."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import aiohttp
import pytest
from aiohttp import WSMsgType

from neuroio.exceptions import ConfigurationError
from neuroio.testing import OMIT, ClientRecord, Emulator

from .conftest import AUTH, OTHER, PING, STEP, TOKEN, auth_frame, connected, recv, recv_json, rest

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
