"""WebhookSink against a real local aiohttp server: bodies, headers, signatures, retries."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neuroio.bridge import Bridge, Pipeline
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError, PermanentSinkError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.base import retry_after_of
from neuroio.sinks.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSink,
    verify_signature,
)
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options
from ..helpers import eventually, until

SECRET = "whsec-test-123"


def events(*ids: int) -> list[SpooledEvent]:
    return [SpooledEvent(i, i, b'{"id":%d,"data":{"n":%d}}' % (i, i), 0.0) for i in ids]


@dataclass
class Receiver:
    """A webhook endpoint whose answers the test scripts."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    refuse_ids: set[int] = field(default_factory=set)
    hang: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if self.hang is not None:
            await self.hang.wait()
        if self.answers:
            status, headers = self.answers.pop(0)
            return web.Response(status=status, headers=headers, text="scripted")
        if json.loads(body)["id"] in self.refuse_ids if body.startswith(b"{") else False:
            return web.Response(status=400, text="bad event")
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    if rec.hang is not None:
        rec.hang.set()
    await runner.cleanup()


async def started(uri: str, secret: str | None = None) -> WebhookSink:
    sink = from_uri(uri, webhook_secret=secret)
    assert isinstance(sink, WebhookSink)
    await sink.start()
    return sink


async def test_posts_each_event_with_idempotency_key_and_signature(receiver: Receiver) -> None:
    """One POST per event: the event JSON, its id as Idempotency-Key, a verifiable signature."""
    sink = await started(receiver.url + "?keep=1", SECRET)
    try:
        await sink.send(events(1, 2))
    finally:
        await sink.aclose()
    assert [json.loads(body)["id"] for _, body in receiver.requests] == [1, 2]
    headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "1"
    assert verify_signature(SECRET, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert not verify_signature("wrong", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert not verify_signature(
        SECRET, body + b" ", headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    )
    assert not verify_signature(
        SECRET, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], now=0
    )


async def test_batches_are_json_arrays(receiver: Receiver) -> None:
    """With ?batch=3, five events go in two requests holding arrays; no signature without secret."""
    sink = await started(receiver.url + "?batch=3&timeout=2")
    assert sink.max_batch == 3
    try:
        await sink.send(events(1, 2, 3))
        await sink.send(events(4, 5))
    finally:
        await sink.aclose()
    bodies = [json.loads(body) for _, body in receiver.requests]
    assert [[e["id"] for e in b] for b in bodies] == [[1, 2, 3], [4, 5]]
    assert receiver.requests[0][0]["Idempotency-Key"].startswith("batch-")
    assert SIGNATURE_HEADER not in receiver.requests[0][0]


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (500, {}, 0.0),
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "2"}, 2.0),
        (408, {}, 0.0),
    ],
)
async def test_retryable_statuses(
    receiver: Receiver, status: int, headers: dict[str, str], retry_after: float
) -> None:
    """5xx, 408 and 429 raise a retryable SinkError carrying Retry-After."""
    receiver.answers = [(status, headers)]
    sink = await started(receiver.url)
    try:
        with pytest.raises(SinkError) as info:
            await sink.send(events(1))
    finally:
        await sink.aclose()
    assert not isinstance(info.value, PermanentSinkError)
    assert f"HTTP {status}" in str(info.value)
    assert retry_after_of(info.value) == retry_after


@pytest.mark.parametrize("status", [400, 409, 413, 422])
async def test_other_4xx_is_permanent(receiver: Receiver, status: int) -> None:
    """A 4xx that says the event is wrong refuses it for good."""
    receiver.answers = [(status, {})]
    sink = await started(receiver.url)
    try:
        with pytest.raises(PermanentSinkError, match=f"HTTP {status}"):
            await sink.send(events(1))
    finally:
        await sink.aclose()


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (401, "wants credentials"),
        (403, "refuses these credentials"),
        (404, "the URL is probably wrong"),
        (405, "does not accept POST"),
        (410, "endpoint was removed"),
        (302, "redirects to http://elsewhere.example/hook"),
    ],
)
async def test_misconfigured_answers_are_retried_and_explained(
    receiver: Receiver, status: int, meaning: str
) -> None:
    """401, 403, 404, 405, 410 and a redirect mean the sink is misconfigured, not the event
    wrong: a retryable SinkError naming the URL, the status and what it likely means (a
    redirect is not followed, so a POST never becomes a body-less GET)."""
    receiver.answers = [(status, {"Location": "http://elsewhere.example/hook"})]
    sink = await started(receiver.url + "?token=tk-secret-7")
    try:
        with pytest.raises(SinkError) as info:
            await sink.send(events(1))
    finally:
        await sink.aclose()
    message = str(info.value)
    assert not isinstance(info.value, PermanentSinkError)
    assert f"answered HTTP {status} " in message and meaning in message
    assert receiver.url.removeprefix("http://") in message
    assert "tk-secret-7" not in message
    assert len(receiver.requests) == 1


async def test_dead_letter_option_chooses_the_refusing_statuses(receiver: Receiver) -> None:
    """?dead_letter=404,500 makes 404 and 500 dead-letter and 422 retried; the option is
    not sent to the receiver, the endpoint's own query is."""
    receiver.answers = [(404, {}), (500, {}), (422, {})]
    sink = await started(receiver.url + "?key=1&dead_letter=404,%20500&x=y")
    assert sink.dead_letter == {404, 500}
    try:
        with pytest.raises(PermanentSinkError, match="HTTP 404"):
            await sink.send(events(1))
        with pytest.raises(PermanentSinkError, match="HTTP 500"):
            await sink.send(events(1))
        with pytest.raises(SinkError) as info:
            await sink.send(events(1))
        assert not isinstance(info.value, PermanentSinkError)
    finally:
        await sink.aclose()
    assert sink.url.endswith("/hook?key=1&x=y")
    assert "dead_letter" not in sink.name


def test_dead_letter_defaults_and_bad_values() -> None:
    """By default every 4xx dead-letters but 401, 403, 404, 405, 408, 410 and 429; none
    (or an empty value) dead-letters nothing; a bad list is one ConfigurationError line
    naming the option."""
    default = from_uri("http://h/x").dead_letter  # type: ignore[attr-defined]
    assert {400, 409, 413, 415, 422, 451} <= default
    assert not default & {401, 403, 404, 405, 408, 410, 429}
    assert not any(s >= 500 for s in default)
    assert from_uri("http://h/x?dead_letter=none").dead_letter == frozenset()  # type: ignore[attr-defined]
    assert from_uri("http://h/x?dead_letter=").dead_letter == frozenset()  # type: ignore[attr-defined]
    for bad, why in (("4o4", "comma-separated"), ("200", "from 400 to 599"), ("404,", "")):
        with pytest.raises(ConfigurationError) as info:
            from_uri(f"http://h/x?token=tk-3&dead_letter={bad}")
        message = str(info.value)
        assert "dead_letter must" in message and why in message and "\n" not in message
        assert "tk-3" not in message


async def test_timeout_is_retryable(receiver: Receiver) -> None:
    """An endpoint that does not answer within ?timeout is a retryable error."""
    receiver.hang = asyncio.Event()
    sink = await started(receiver.url + "?timeout=0.2")
    try:
        with pytest.raises(SinkError, match="no answer within 0.2 s"):
            await sink.send(events(1))
    finally:
        await sink.aclose()


async def test_pipeline_retries_500_and_dead_letters_400(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Through the pipeline: a 500 and a 429 are retried, a 400 event is dead-lettered, every
    other event is delivered, in order."""
    receiver.answers = [(500, {}), (429, {"Retry-After": "0"})]
    receiver.refuse_ids = {3}
    with Spool(tmp_path / "s.db") as spool:
        sink = await started(receiver.url, SECRET)
        pipeline = Pipeline(spool, [sink], retry_delay=0.01, max_retry_delay=0.02)
        await pipeline.start()
        try:
            for i in range(1, 6):
                await pipeline.put(i, events(i)[0].payload)
            await pipeline.wait_delivered(timeout=5)
        finally:
            await pipeline.close()
            await sink.aclose()
        assert [d.event.id for d in spool.dead_letters()] == [3]
        assert "HTTP 400" in spool.dead_letters()[0].error
    delivered = [json.loads(b)["id"] for _, b in receiver.requests]
    # 1 failed twice then went through; 3 was refused; every request was signed afresh.
    assert delivered == [1, 1, 1, 2, 3, 4, 5]
    assert pipeline.status[sink.name].delivered == 4


async def test_unreachable_endpoint_fails_at_start() -> None:
    """No listener on the port: SinkError at start-up, naming the host and port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = from_uri(f"http://127.0.0.1:{port}/hook")
    with pytest.raises(SinkError, match=f"127.0.0.1:{port}"):
        await sink.start()
    await sink.aclose()


def test_bad_uris_and_redaction() -> None:
    """Invalid options are ConfigurationErrors; credentials never show in names or errors."""
    with pytest.raises(ConfigurationError, match="batch"):
        from_uri("http://h/x?batch=0")
    with pytest.raises(ConfigurationError, match="timeout"):
        from_uri("http://h/x?timeout=abc")
    with pytest.raises(ConfigurationError) as info:
        from_uri("https://user:pw-123@h:99999/x")
    assert "pw-123" not in str(info.value)
    sink = from_uri("https://user:pw-123@hooks.example/x?token=tk-9&batch=5", webhook_secret="s")
    assert "pw-123" not in sink.name and "tk-9" not in sink.name
    assert "pw-123" not in repr(sink) and "tk-9" not in repr(sink)
    assert "batch" not in sink.name
    assert from_uri("http://h/x?name=orders").name == "orders"


@dataclass
class Endpoint:
    """A receiver that answers ``status`` to every request until fixed, then 204."""

    status: int = 404
    fixed: bool = False
    delivered: list[int] = field(default_factory=list)
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        event_id = json.loads(await request.read())["id"]
        if not self.fixed:
            self.refused += 1
            return web.Response(status=self.status, text="no such hook")
        self.delivered.append(event_id)
        return web.Response(status=204)


async def healthz(http: aiohttp.ClientSession, bridge: Bridge) -> tuple[int, Any]:
    assert bridge.metrics is not None
    async with http.get(f"http://127.0.0.1:{bridge.metrics.port}/healthz") as answer:
        return answer.status, await answer.json()


async def run_bridge_against(
    endpoint: Endpoint, query: str, tmp_path: Path, *, retried: bool
) -> list[int]:
    """A bridge from the emulator to ``endpoint``: 20 events while it answers its status
    (``retried``: until ``/healthz`` says the sink fails), then fixed, until every event is
    delivered or dead-lettered and ``/healthz`` is 200; returns the ids emitted."""
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/hook{query}"
    try:
        async with Emulator(tokens=[TOKEN]) as server:
            bridge = Bridge(
                TOKEN,
                [url],
                metrics_port=0,
                health_max_sink_failure=0.1,
                # Refusals in a row fail /healthz until a success (tests/*/test_deadletters.py);
                # here every event is refused and none follows, so that check is off.
                health_max_refused=0,
                **bridge_options(server, tmp_path),  # type: ignore[arg-type]
            )
            async with bridge, aiohttp.ClientSession() as http:
                await server.wait_for_clients(1)
                emitted = [e["id"] for e in [await server.emit() for _ in range(20)]]
                await until(lambda: bridge.pipeline is not None and bridge.pipeline.received == 20)
                if retried:

                    async def failing() -> bool:
                        status, report = await healthz(http, bridge)
                        return status == 503 and any("failing for" in p for p in report["problems"])

                    await eventually(failing, "/healthz 503 naming the failing sink", 5)
                    _, report = await healthz(http, bridge)
                    [sink] = report["sinks"].values()
                    assert f"answered HTTP {endpoint.status}" in sink["last_error"]
                    assert endpoint.refused >= 2  # retried, not dead-lettered
                else:
                    await until(lambda: endpoint.refused == 20)
                endpoint.fixed = True
                assert bridge.pipeline is not None
                await bridge.pipeline.wait_delivered(timeout=5)

                async def healthy() -> bool:
                    return (await healthz(http, bridge))[0] == 200

                await eventually(healthy, "/healthz 200 once the webhook is fixed", 5)
    finally:
        await runner.cleanup()
    return emitted


async def test_a_404_webhook_fixed_later_loses_nothing(tmp_path: Path) -> None:
    """A bridge whose webhook answers 404 for a while, then is fixed: /healthz is 503 naming
    the sink while it fails and 200 after; every event is delivered once fixed, in order, and
    nothing is dead-lettered."""
    endpoint = Endpoint(404)
    emitted = await run_bridge_against(endpoint, "", tmp_path, retried=True)
    assert endpoint.delivered == emitted
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.dead_letters() == []


@pytest.mark.parametrize(("status", "query"), [(422, ""), (404, "?dead_letter=404")])
async def test_refusing_statuses_dead_letter_through_the_bridge(
    tmp_path: Path, status: int, query: str
) -> None:
    """A 422, or a 404 listed in ?dead_letter=, refuses the events for good: each is sent
    once and dead-lettered, with the status in the error, and the sink stays healthy."""
    endpoint = Endpoint(status)
    emitted = await run_bridge_against(endpoint, query, tmp_path, retried=False)
    with Spool(tmp_path / "spool.db") as spool:
        letters = spool.dead_letters()
    assert [d.event.id for d in letters] == emitted
    assert all(f"HTTP {status}" in d.error for d in letters)
    assert endpoint.refused == 20 and endpoint.delivered == []
