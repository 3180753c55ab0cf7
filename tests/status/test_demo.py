"""``neuroio-events demo`` (a real subprocess) prints the status page's URL, and the page, in
a real headless Chromium, shows faces arriving live."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from typing import Any

from .test_browser import leave, wait_js

FACES = """const faces = [...document.querySelectorAll('.card img.face')];
return document.getElementById('live').textContent === 'live'
  && faces.length >= 3 && faces.every((img) => img.complete && img.naturalWidth > 0);"""


async def test_demo_prints_the_page_url_and_the_page_shows_faces_live(browser: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "neuroio", "demo", "--rate", "20", "--format", "jsonl",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 10.0)).decode()
            assert line, "demo ended before printing the status page's URL"
            found = re.search(r"status page on (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        drain = asyncio.create_task(proc.stderr.read())
        await asyncio.to_thread(browser.get, url)
        first = await browser_ids(browser)
        await wait_js(browser, FACES, "faces arriving on the demo's page", 5.0)
        await wait_js(
            browser,
            "return document.querySelector('.card').dataset.id !== arguments[0];",
            "a newer card on top",
            2.0,
            first,
        )
        assert await leave(browser) == []
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10.0) == 0
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def browser_ids(browser: Any) -> str:
    first = await asyncio.to_thread(
        browser.execute_script,
        "const c = document.querySelector('.card'); return c ? c.dataset.id : '';",
    )
    return str(first)
