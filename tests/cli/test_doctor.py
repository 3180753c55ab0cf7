"""``neuroio-events doctor`` against healthy and broken services, as a real subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroio.emulator import Emulator

from .conftest import TOKEN, Cli, StartCli, free_port
from .rest_server import RestServer

STEPS = (
    "URL",
    "DNS",
    "TCP connect",
    "TLS",
    "WebSocket handshake",
    "AUTH",
    "PING/PONG",
    "First event",
    "REST API",
    "REST token",
    "REST answer",
)
SOCKET_STEPS = STEPS[:8]


def verdicts(proc: Cli) -> dict[str, str]:
    """Step name → its mark (✓ ✗ ! –), from the doctor's stdout."""
    marks: dict[str, str] = {}
    for line in proc.out.splitlines():
        for step in STEPS:
            if line[2:].startswith(f"{step} "):
                marks[step] = line[0]
    return marks


def detail(proc: Cli, step: str) -> str:
    """The text of ``step``'s verdict line."""
    for line in proc.out.splitlines():
        if line[2:].startswith(f"{step} "):
            return line[2 + 20 :]
    raise AssertionError(f"no {step!r} line in:\n{proc.out}")


async def doctor(
    cli: StartCli, url: str, token_file: Path, *extra: str, api_url: str | None = None
) -> Cli:
    """The doctor against ``url``; the REST steps against ``api_url`` (none: --no-rest)."""
    rest = ("--api-url", api_url) if api_url is not None else ("--no-rest",)
    return await cli(
        "doctor", "--url", url, "--token-file", str(token_file), "--timeout", "1", *rest, *extra
    )


async def test_passes_against_the_emulator(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """Every step passes against a healthy service that sends events; exit 0."""
    emulator.start_stream(50)
    proc = await doctor(cli, emulator.url, token_file, "--wait", "5", api_url=emulator.api_url)
    assert await proc.finish() == 0
    assert verdicts(proc) == {**dict.fromkeys(STEPS, "✓"), "TLS": "–"}
    assert "3 samples: min" in proc.out
    assert f"GET {emulator.api_url}/v1/entries/?limit=1: HTTP 200 application/json" in proc.out
    assert detail(proc, "REST token") == "token accepted (HTTP 200)"
    assert detail(proc, "REST answer").startswith("a page of 'results' with a count of ")
    assert "All required checks passed." in proc.out


@pytest.mark.parametrize("shape", ["page", "list"])
async def test_names_the_shape_of_the_entries_api(
    cli: StartCli, token_file: Path, shape: str
) -> None:
    """The emulator serving DRF pages or bare lists: the REST answer step says which."""
    async with Emulator(tokens={TOKEN}, seed=7, rest_shape=shape) as emulator:  # type: ignore[arg-type]
        entries = await emulator.burst(3)
        proc = await doctor(cli, emulator.url, token_file, "--wait", "0", api_url=emulator.api_url)
        assert await proc.finish() == 0
    assert verdicts(proc)["REST answer"] == "✓"
    ids = {e["id"] for e in entries}
    shown = detail(proc, "REST answer")
    if shape == "page":
        assert shown.startswith("a page of 'results' with a count of 3, first entry id ")
    else:
        assert shown.startswith("a bare JSON list (paged by limit/offset), first entry id ")
    assert int(shown.rsplit(" ", 1)[1]) in ids


async def test_names_a_token_the_rest_api_rejects(cli: StartCli, token_file: Path) -> None:
    """The socket accepts the token, the REST API refuses it: exit 3, said so."""
    async with (
        Emulator(tokens={TOKEN}, seed=7) as emulator,
        RestServer(401, "application/json", b'{"detail": "Invalid token."}') as api,
    ):
        proc = await doctor(cli, emulator.url, token_file, "--wait", "0", api_url=api.url)
        assert await proc.finish() == 3
    assert verdicts(proc)["AUTH"] == "✓"
    assert verdicts(proc)["REST API"] == "✓"
    assert verdicts(proc)["REST token"] == "✗"
    assert "REST answer" not in verdicts(proc)
    assert (
        """token rejected by the entries API: HTTP 401 application/json: """
        """'{"detail": "Invalid token."}'"""
    ) in proc.out
    assert "'REST token' step failed" in proc.err and "Traceback" not in proc.err


@pytest.mark.parametrize(
    ("answer", "step", "expected"),
    [
        pytest.param(
            (200, "text/html", b"<html><body>Welcome to nginx!</body></html>"),
            "REST answer",
            "the entries API answered HTTP 200 text/html, not JSON: "
            "'<html><body>Welcome to nginx!</body></html>'; gap recovery cannot read this answer",
            id="html-200",
        ),
        pytest.param(
            (502, "text/html", b"<html><body>Bad gateway</body></html>"),
            "REST API",
            "failed: HTTP 502 text/html: '<html><body>Bad gateway</body></html>'",
            id="html-502",
        ),
        pytest.param(
            (200, "application/json", b'{"detail": "paused"}'),
            "REST answer",
            "JSON neither a page of 'results' nor a list: '{\"detail\": \"paused\"}'",
            id="json-object",
        ),
        pytest.param(
            (404, "text/html", b"<h1>Not Found</h1>"),
            "REST token",
            "the entries API answered HTTP 404 text/html: '<h1>Not Found</h1>': "
            "is --api-url the REST API?",
            id="html-404",
        ),
    ],
)
async def test_names_an_answer_that_is_not_an_entries_list(
    cli: StartCli, token_file: Path, answer: tuple[int, str, bytes], step: str, expected: str
) -> None:
    """A server answering HTML (or JSON of another shape): the failing REST step names the
    status, the media type and the start of the body; exit 1, one line, no traceback."""
    async with Emulator(tokens={TOKEN}, seed=7) as emulator, RestServer(*answer) as api:
        proc = await doctor(cli, emulator.url, token_file, "--wait", "0", api_url=api.url)
        assert await proc.finish() == 1
    assert verdicts(proc)[step] == "✗"
    assert expected in detail(proc, step), proc.out
    assert f"'{step}' step failed" in proc.err and "Traceback" not in proc.err
    assert len(proc.err.strip().splitlines()) == 1, proc.err


async def test_names_an_unreachable_rest_api(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """Nothing listening at --api-url: the REST API step fails and says why."""
    api_url = f"http://127.0.0.1:{free_port()}"
    proc = await doctor(cli, emulator.url, token_file, "--wait", "0", api_url=api_url)
    assert await proc.finish() == 1
    assert verdicts(proc)["REST API"] == "✗"
    assert "cannot reach" in detail(proc, "REST API")
    assert "Connection refused" in detail(proc, "REST API")
