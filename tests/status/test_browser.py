"""The status page in a real headless Chromium: live, faces within two seconds, a sink taken
down turns red, the re-drive button posts with the page's secret, the streams table of a bridge
of named streams follows its snapshots; no console errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from neuroio._status import StatusPage
from neuroio.bridge._snapshot import BridgeSnapshot, StreamSnapshot, page_state

from ._common import RedrivingBridge, page_url, status_bridge

# A browser call blocks; it runs in a thread so that the bridge's loop goes on serving.


async def js(browser: Any, script: str, *args: Any) -> Any:
    return await asyncio.to_thread(browser.execute_script, script, *args)


async def wait_js(browser: Any, script: str, what: str, timeout: float, *args: Any) -> float:
    """Poll ``script`` until it returns true; the seconds it took. Fails naming ``what``."""
    start = time.monotonic()
    while not await js(browser, script, *args):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def severe(browser: Any) -> list[dict[str, Any]]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


async def leave(browser: Any) -> list[dict[str, Any]]:
    """The console errors of the page, read while its server still runs (a stopped server
    makes the live stream's reconnects fail, loudly), then a blank page."""
    errors = await asyncio.to_thread(severe, browser)
    await asyncio.to_thread(browser.get, "about:blank")
    return errors


LIVE = """return document.getElementById('live').textContent === 'live'
  && document.getElementById('connection').textContent === 'live';"""
CARD_WITH_FACE = """const img = document.querySelector(
  '.card[data-id="' + arguments[0] + '"] img.face');
return !!img && img.complete && img.naturalWidth > 0;"""
ROW_RED = """const row = document.querySelector('tr.sink[data-sink="' + arguments[0] + '"]');
return !!row && row.classList.contains('failing')
  && getComputedStyle(row).backgroundColor === 'rgb(74, 29, 31)';"""


async def test_live_page_shows_an_emitted_event_with_its_face(browser: Any, tmp_path: Path) -> None:
    async with status_bridge(tmp_path) as (emulator, _, bridge):
        await asyncio.to_thread(browser.get, page_url(bridge))
        await wait_js(browser, LIVE, "the page shows the connection live", 5.0)
        entry = await emulator.emit()
        took = await wait_js(browser, CARD_WITH_FACE, "a card with its face", 2.0, entry["id"])
        assert took < 2.0
        badge = await js(
            browser,
            "return document.querySelector('.card[data-id=\"' + arguments[0] + '\"] .badge')"
            ".textContent;",
            entry["id"],
        )
        assert badge == entry["result"]
        assert await leave(browser) == []


async def test_sink_taken_down_turns_its_row_red(browser: Any, tmp_path: Path) -> None:
    async with status_bridge(tmp_path) as (emulator, receiver, bridge):
        await asyncio.to_thread(browser.get, page_url(bridge))
        await wait_js(browser, LIVE, "the page shows the connection live", 5.0)
        for _ in range(12):
            await emulator.emit()
        healthy = "return !!document.querySelector('tr.sink.ok[data-sink=\"hook\"]');"
        await wait_js(browser, healthy, "the webhook row is healthy first", 5.0)
        await receiver.stop()
        await emulator.emit()
        await wait_js(browser, ROW_RED, "the stopped webhook's row turns red", 5.0, "hook")
        error = await js(
            browser,
            "return document.querySelector('tr.sink[data-sink=\"hook\"] td.error').textContent;",
        )
        assert "cannot connect" in error or "connect" in error.lower()
        # The picture of the docs (NEUROIO_STATUS_SCREENSHOT=docs/images/status.png).
        shot = Path(os.environ.get("NEUROIO_STATUS_SCREENSHOT") or tmp_path / "status.png")
        await wait_js(
            browser, "return document.querySelectorAll('.card img.face').length >= 12;",
            "the cards", 5.0,
        )  # fmt: skip
        await asyncio.to_thread(browser.save_screenshot, str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert await leave(browser) == []


async def test_redrive_button_posts_with_the_page_secret(browser: Any, tmp_path: Path) -> None:
    async with status_bridge(tmp_path, redrive=True) as (emulator, _, bridge):
        assert isinstance(bridge, RedrivingBridge)
        await asyncio.to_thread(browser.get, page_url(bridge))
        await wait_js(browser, LIVE, "the page shows the connection live", 5.0)
        await emulator.emit()
        enabled = (
            "const b = document.querySelector('button.retry[data-sink=\"refuser\"]');"
            "return !!b && !b.disabled;"
        )
        await wait_js(browser, enabled, "the re-drive button of the refusing sink", 5.0)
        await js(browser, "document.querySelector('button.retry[data-sink=\"refuser\"]').click();")
        done = "return document.getElementById('retry-result').textContent.startsWith('7 ');"
        await wait_js(browser, done, "the re-drive's answer shown", 5.0)
        assert bridge.retried == ["refuser"]
        assert await leave(browser) == []


@contextlib.asynccontextmanager
async def snapshot_page(shown: list[BridgeSnapshot], health: dict[str, Any]) -> AsyncIterator[str]:
    """A status page on a free loopback port whose state is ``page_state(shown[0], health)``
    (a bridge of named streams, told by its snapshots); its URL."""

    async def state() -> dict[str, Any]:
        return page_state(shown[0], health, {}, {})

    status = StatusPage(state)
    app = web.Application()
    status.add_routes(app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    status.bound("127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await status.close()
        await runner.cleanup()


def streams(*down: tuple[str, str]) -> BridgeSnapshot:
    """998 live streams and the ``down`` ones (name, state)."""
    now = time.time()
    live = [StreamSnapshot(f"shop-{i:04d}", "live", True, events=i) for i in range(998)]
    bad = [StreamSnapshot(name, state, True, last_event_at=now - 5) for name, state in down]
    return BridgeSnapshot(taken_at=now, state="backoff", streams=(*bad, *live))


ROWS = """return [...document.querySelectorAll('#streams tbody tr')].map(
  (tr) => tr.classList.contains('more') ? tr.textContent : tr.dataset.stream + ':' +
  tr.querySelector('.conn').textContent);"""
REASON = "<img src=x onerror=\"document.title='owned'\">401 token refused"


async def test_streams_table_renders_and_follows_the_snapshots(browser: Any) -> None:
    """A thousand streams: the two not live on top, the live ones in one row, the summary;
    as the snapshots change the script redraws the table (markup in a reason stays text)."""
    shown = [streams(("shop-b", "backoff"), ("shop-r", "rejected"))]
    health = {"streams": {"shop-r": {"rejected": REASON}}}
    async with snapshot_page(shown, health) as url:
        await asyncio.to_thread(browser.get, url)
        await wait_js(browser, "return document.getElementById('live').textContent === 'live';",
                      "the live stream connected", 5.0)  # fmt: skip
        assert await js(browser, ROWS) == [
            "shop-r:rejected",
            "shop-b:backoff",
            "and 998 more live streams",
        ]
        summary = "return document.getElementById('streams-summary').textContent;"
        assert await js(browser, summary) == "998 of 1,000 streams live; 1 rejected; 1 backoff"
        # shop-b comes back, shop-f fails: the script redraws the table from the pushed state.
        shown[0] = streams(("shop-r", "rejected"), ("shop-f", "failed"), ("shop-b", "live"))
        changed = (
            "return document.getElementById('streams-summary').textContent === "
            "'999 of 1,001 streams live; 1 rejected; 1 failed';"
        )
        await wait_js(browser, changed, "the summary follows the snapshot", 5.0)
        assert await js(browser, ROWS) == [
            "shop-r:rejected",
            "shop-f:failed",
            "and 999 more live streams",
        ]
        colour = await js(browser, "return getComputedStyle(document.querySelector("
                          "'tr[data-stream=\"shop-f\"] .conn')).color;")  # fmt: skip
        assert colour == "rgb(248, 81, 73)"  # the page's red, as a connection in backoff
        reason = await js(
            browser,
            "const td = document.querySelector('tr[data-stream=\"shop-r\"] td.error');"
            "return [td.textContent, td.querySelectorAll('img').length, document.title];",
        )
        assert reason == [f"token rejected: {REASON}", 0, "neuroio-events bridge"]
        assert await leave(browser) == []


async def test_fleet_line_and_holders_follow_the_fleet(browser: Any) -> None:
    """In a fleet: the worker's line and who holds each stream, redrawn as workers come."""
    now = time.time()
    snap = BridgeSnapshot(
        taken_at=now,
        state="live",
        streams=(
            StreamSnapshot("a", "live", True, last_event_at=now),
            StreamSnapshot("b", "stopped", False),
        ),
    )
    fleet = {"worker": "w-1", "workers": ["w-1", "w-2"], "connected": True, "target": 1,
             "held": ["a"], "streams": {"a": "w-1", "b": "w-2"}}  # fmt: skip
    health: dict[str, Any] = {"fleet": fleet}
    async with snapshot_page([snap], health) as url:
        await asyncio.to_thread(browser.get, url)
        await wait_js(browser, "return document.getElementById('live').textContent === 'live';",
                      "the live stream connected", 5.0)  # fmt: skip
        holders = "return [...document.querySelectorAll('#streams td.holder')].map((td) => "
        holders += "td.textContent);"
        assert await js(browser, holders) == ["held by this worker", "stopped (held by w-2)"]
        health["fleet"] = {**fleet, "workers": ["w-1", "w-2", "w-3"], "streams": {"a": "w-1"}}
        line = (
            "return document.getElementById('fleet').textContent === 'worker w-1 of 3 live "
            "workers (w-1, w-2, w-3); holds 1 stream (its share: 1)';"
        )
        await wait_js(browser, line, "the fleet line follows the fleet", 5.0)
        assert await js(browser, holders) == ["held by this worker", "stopped"]
        assert await leave(browser) == []
