"""``bridge --since``: a value that is neither an event id nor an ISO-8601 time is one line and
status 2 before anything connects (as for ``listen``); a valid one still recovers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.independent_server import IndependentServer

from ..helpers import eventually
from .conftest import TOKEN, StartCli, clean_env, free_port


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize("since", ["yesterday", "2024-13-45"])
async def test_bad_since_is_one_line_and_exit_2_before_anything_connects(
    cli: StartCli, tmp_path: Path, since: str
) -> None:
    """The same check and words as ``listen --since``; nothing is connected or created (the
    spool does not exist afterwards, the REST and events ports were never opened)."""
    spool = tmp_path / "spool.db"
    port = free_port()
    args = ("--to", f"file:{tmp_path / 'out.jsonl'}", "--spool", str(spool), "--since", since)
    urls = ("--url", f"ws://127.0.0.1:{port}", "--api-url", f"http://127.0.0.1:{port}")
    bridge = await cli("bridge", *args, *urls, env=clean_env(NEUROIO_API_TOKEN=TOKEN))
    assert await bridge.finish(timeout=10) == 2
    line = _one_error_line(bridge.err)
    assert "since must be an event id or an ISO-8601 time" in line and repr(since) in line
    assert not spool.exists()

    listen = await cli("listen", "--since", since, *urls, env=clean_env(NEUROIO_API_TOKEN=TOKEN))
    assert await listen.finish(timeout=10) == 2
    assert _one_error_line(listen.err) == line


async def test_bad_since_in_the_config_file_names_the_file(cli: StartCli, tmp_path: Path) -> None:
    """``backfill.since`` in a config file: the same check, the line naming the file."""
    config = tmp_path / "bridge.toml"
    config.write_text('to = ["file:out.jsonl"]\n[backfill]\nsince = "yesterday"\n')
    env = clean_env(NEUROIO_API_TOKEN=TOKEN)
    for check in ((), ("--check",)):
        child = await cli("bridge", "--config", str(config), *check, env=env)
        assert await child.finish(timeout=10) == 2
        line = _one_error_line(child.err)
        assert str(config) in line and "'yesterday'" in line


@pytest.mark.parametrize("form", ["id", "time"])
async def test_valid_since_recovers_the_entries_after_it(
    cli: StartCli, tmp_path: Path, form: str
) -> None:
    """``--since <id>`` recovers the entries after that id, ``--since <ISO time>`` those
    created from then on, from the REST API, before live events."""
    out = tmp_path / "out.jsonl"
    async with IndependentServer(TOKEN) as server:
        old = await server.emit(12)  # nobody connected: only the REST API has them
        since = str(old[4]) if form == "id" else "2000-01-01T00:00:00Z"
        expected = old[5:] if form == "id" else old
        child = await cli(
            "bridge", "--url", server.url, "--api-url", server.api_url,
            "--spool", str(tmp_path / "spool.db"), "--to", f"file:{out}", "--since", since,
            "--sink-retry-delay", "0.01", "--sink-max-retry-delay", "0.1", "--no-uvloop",
            env=clean_env(NEUROIO_API_TOKEN=TOKEN),
        )  # fmt: skip

        def ids() -> list[int]:
            if not out.exists():
                return []
            return [json.loads(line)["id"] for line in out.read_text().splitlines()]

        await eventually(lambda: len(ids()) >= len(expected), "the recovered entries", 10)
        await server.wait_live()
        live = await server.emit(3)
        await eventually(lambda: len(ids()) >= len(expected) + 3, "the live events", 10)
        child.send(signal.SIGTERM)
        assert await child.finish(timeout=10) == 0
    assert ids() == expected + live
