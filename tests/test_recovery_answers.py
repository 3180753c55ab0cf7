"""Entries API answers that are neither a page nor a list, served by a real aiohttp server on
loopback to a real backfilling ``EventListener`` connected to the emulator: each ends gap
recovery with one ``BackfillError`` that names what came (status, media type, the start of
the body, the token never), never a traceback, and the live stream goes on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from neuroio import EventListener, State
from neuroio._http import BODY_START_CHARS, body_start, content_type
from neuroio.bridge import Bridge
from neuroio.exceptions import BackfillError
from neuroio.sinks import MemorySink
from neuroio.testing import Emulator

from .helpers import Frames, until

TOKEN = "answers-secret-token-5d1c"
HTML = "<html><body>Bad gateway</body></html>\n" + "<p>padding</p>" * 40


class BadApi:
    """``GET /v1/entries/`` answering ``answers`` in turn (the last one for ever)."""

    def __init__(self, *answers: tuple[int, str, bytes]) -> None:
        self.answers = list(answers)
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _entries(self, request: web.Request) -> web.Response:
        self.requests += 1
        status, content_type, body = self.answers[0]
        if len(self.answers) > 1:
            self.answers.pop(0)
        headers = {"Content-Type": content_type} if content_type else {}
        return web.Response(status=status, body=body, headers=headers)

    async def __aenter__(self) -> BadApi:
        app = web.Application()
        app.router.add_get("/v1/entries/", self._entries)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@asynccontextmanager
async def listening(api: BadApi) -> AsyncIterator[tuple[Emulator, EventListener, Frames]]:
    async with Emulator(tokens={TOKEN}, seed=3) as emu:
        got = Frames()
        listener = EventListener(
            TOKEN,
            got,
            url=emu.url,
            api_url=api.api_url,
            backfill=True,
            reconnect_delay=0.01,
            max_reconnect_delay=0.05,
        )
        task = asyncio.create_task(listener.listen())
        try:
            await emu.wait_for_clients(1)
            yield emu, listener, got
        finally:
            await listener.close()
            await asyncio.wait_for(task, 10)


BAD_ANSWERS = [
    pytest.param(
        (200, "text/html; charset=utf-8", HTML.encode()),
        "the entries API answered HTTP 200 text/html, not JSON: "
        "'<html><body>Bad gateway</body></html> <p>padding</p>",
        id="html-200",
    ),
    pytest.param(
        (404, "text/html", b"<h1>Not Found</h1>"),
        "the entries API answered HTTP 404 text/html: '<h1>Not Found</h1>' to a recovery request",
        id="html-404",
    ),
    pytest.param(
        (200, "application/json", b'{"detail": "Service paused"}'),
        "the entries API answered HTTP 200 application/json, JSON neither a page of "
        """'results' nor a list: '{"detail": "Service paused"}'""",
        id="json-object-without-results",
    ),
    pytest.param(
        (200, "application/json", b"42"),
        "the entries API answered HTTP 200 application/json, JSON neither a page of "
        "'results' nor a list: '42'",
        id="json-number",
    ),
    pytest.param(
        (200, "application/json", b'{"count": 3, "results": [{"id": 1, "crea'),
        "the entries API answered HTTP 200 application/json, not JSON: "
        """'{"count": 3, "results": [{"id": 1, "crea'""",
        id="truncated-json",
    ),
    pytest.param(
        (200, "application/octet-stream", b"\x00\x07\xffbinary\r\n\tjunk"),
        "the entries API answered HTTP 200 application/octet-stream, not JSON: "
        "'\\x00\\x07\ufffdbinary junk'",
        id="binary",
    ),
]


@pytest.mark.parametrize(("answer", "expected"), BAD_ANSWERS)
async def test_an_answer_of_another_shape_is_one_error_naming_it_and_live_goes_on(
    answer: tuple[int, str, bytes], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener's first recovery request gets the bad answer: ``backfill_error`` names
    status, media type and body start, one ERROR line says it without a traceback, and live
    events are still delivered afterwards."""
    caplog.set_level(logging.INFO, logger="neuroio")
    async with BadApi(answer) as api, listening(api) as (emu, listener, got):
        await until(lambda: listener.backfill_error is not None)
        error = listener.backfill_error
        assert isinstance(error, BackfillError)
        assert expected in str(error), str(error)
        assert error.status == answer[0]
        assert error.content_type == answer[1].split(";")[0]
        assert error.body_start is not None and error.body_start in str(error)
        assert len(error.body_start) <= BODY_START_CHARS + len("...")
        sent = await emu.burst(5)
        await got.wait(lambda: len(got.ids) >= 5)
        assert got.ids[-5:] == [e["id"] for e in sent]
        assert listener.state is State.LIVE
        assert api.requests == 1  # not retried: retrying would get the same answer
    failures = [r for r in caplog.records if "gap recovery failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert expected in failures[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
    assert all("Traceback" not in r.getMessage() for r in caplog.records)


async def test_an_html_502_is_retried_naming_what_came_and_recovery_then_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway's HTML 502 is transient: each retry's warning names status, media type and
    body start; once the API answers a page again, recovery goes on without an error."""
    caplog.set_level(logging.WARNING, logger="neuroio")
    bad = (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    empty_page = (200, "application/json", b'{"count": 0, "next": null, "results": []}')
    async with BadApi(bad, bad, bad, empty_page) as api, listening(api) as (emu, listener, got):
        await until(lambda: api.requests >= 4)
        sent = await emu.burst(3)
        await got.wait(lambda: len(got.ids) >= 3)
        assert got.ids[-3:] == [e["id"] for e in sent]
        assert listener.backfill_error is None
    retries = [
        r.getMessage() for r in caplog.records if "entries API request failed" in r.getMessage()
    ]
    assert len(retries) == 3, retries
    assert all(
        "HTTP 502 text/html: '<html><body><h1>502 Bad Gateway</h1></body></html>'" in line
        for line in retries
    ), retries


async def test_the_token_never_shows_in_what_came(caplog: pytest.LogCaptureFixture) -> None:
    """A server echoing the request's token in its answer: the error shows ``***``."""
    caplog.set_level(logging.INFO, logger="neuroio")
    echo = f"<html>Token {TOKEN} is not valid here</html>".encode()
    async with BadApi((400, "text/html", echo)) as api, listening(api) as (_, listener, _got):
        await until(lambda: listener.backfill_error is not None)
        error = listener.backfill_error
    assert error is not None
    assert TOKEN not in str(error) and "Token *** is not valid" in str(error)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_content_type_is_the_media_type_bounded() -> None:
    assert content_type({}) == "no content type"
    assert content_type({"Content-Type": "text/html; charset=utf-8"}) == "text/html"
    assert content_type({"Content-Type": "x" * 500}) == "x" * 60


def test_body_start_is_bounded_printable_and_hides_secrets() -> None:
    """The shown start: whitespace runs made one space, control characters escaped, cut at
    the limit with ``...``, a secret replaced before the cut (so no prefix of it shows)."""
    assert body_start(b"") == ""
    assert body_start(b"a\n\n b\tc") == "a b c"
    assert body_start(b"\x1b[31mred") == r"\x1b[31mred"
    long = body_start(b"x" * 500)
    assert long == "x" * BODY_START_CHARS + "..."
    secret = "s3cr3t-token-value"
    cut = body_start(b"y" * (BODY_START_CHARS - 5) + secret.encode(), secrets=(secret,))
    assert "s3cr" not in cut and cut.endswith("***")


async def test_the_bridge_names_an_html_answer_in_one_line_and_delivers_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bridge's gap recovery against an HTML 200: ``backfill_error`` names what came,
    one ERROR line without a traceback, and live events still reach the sink."""
    caplog.set_level(logging.INFO, logger="neuroio")
    sink = MemorySink()
    async with (
        BadApi((200, "text/html", HTML.encode())) as api,
        Emulator(tokens={TOKEN}, seed=4) as emu,
    ):
        bridge = Bridge(
            TOKEN,
            [sink],
            url=emu.url,
            api_url=api.api_url,
            spool=tmp_path / "spool.db",
            reconnect_delay=0.01,
        )
        async with bridge:
            await until(lambda: bridge.backfill_error is not None)
            error = bridge.backfill_error
            assert error is not None and error.status == 200
            assert "answered HTTP 200 text/html, not JSON: '<html><body>Bad gateway" in str(error)
            await emu.wait_for_clients(1)
            sent = await emu.burst(5)
            await sink.wait_for(5)
            assert [e.id for e in sink.events][-5:] == [e["id"] for e in sent]
    failures = [r for r in caplog.records if "not JSON" in r.getMessage()]
    assert failures and all(r.levelno == logging.ERROR for r in failures)
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
