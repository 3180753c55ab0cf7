"""The status page in a real headless Chromium: live, faces within two seconds, a sink taken
down turns red, the re-drive button posts with the page's secret; no console errors."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

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
