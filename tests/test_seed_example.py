"""The reference example of ``shared/seed/events.md`` runs unmodified and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from .independent_server import IndependentServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "seed_example.py"
SEED_DOC = ROOT.parent / "shared" / "seed" / "events.md"


def test_example_is_the_seed_verbatim() -> None:
    """examples/seed_example.py is byte for byte the code block of the seed document."""
    if not SEED_DOC.exists():
        pytest.skip(f"{SEED_DOC} is not beside this checkout")
    block = re.search(r"```python\n(.*?)```", SEED_DOC.read_text(), re.S)
    assert block is not None
    assert EXAMPLE.read_text() == block.group(1)


async def test_seed_example_receives_events_and_shuts_down_on_sigterm() -> None:
    """The example authenticates, handles events, and on SIGTERM exits 0 with no traceback."""
    async with IndependentServer("1234567890") as server:
        env = dict(os.environ, NEUROIO_EVENTS_URL=server.url, PYTHONUNBUFFERED="1")
        # The example logs at INFO but installs no handler; give the root logger one so the
        # test can see what it does. The example's code itself runs as is.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import logging, runpy, sys; logging.basicConfig(stream=sys.stderr); "
            f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await server.wait_live(timeout=10)
            await server.emit(3)
            # The handler logs each event's face_image at INFO.
            assert proc.stderr is not None
            seen = b""
            while seen.count(b"INFO:root:https://") < 3:
                line = await asyncio.wait_for(proc.stderr.readline(), 10)
                assert line, seen.decode()
                seen += line
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = (seen + err).decode()
    assert proc.returncode == 0, text
    assert "Authorized successfully" in text
    assert "Successfully shutdown" in text
    assert "Traceback" not in text
    assert "Task was destroyed" not in text
    assert "Unclosed" not in text
