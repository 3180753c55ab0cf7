"""``neuroio-events doctor`` against healthy and broken services, as a real subprocess."""

from __future__ import annotations

from pathlib import Path

from neuroio.emulator import Emulator

from .conftest import Cli, StartCli, free_port

STEPS = (
    "URL",
    "DNS",
    "TCP connect",
    "TLS",
    "WebSocket handshake",
    "AUTH",
    "PING/PONG",
    "First event",
)


def verdicts(proc: Cli) -> dict[str, str]:
    """Step name → its mark (✓ ✗ ! –), from the doctor's stdout."""
    marks: dict[str, str] = {}
    for line in proc.out.splitlines():
        for step in STEPS:
            if line[2:].startswith(step):
                marks[step] = line[0]
    return marks


async def doctor(cli: StartCli, url: str, token_file: Path, *extra: str) -> Cli:
    return await cli(
        "doctor", "--url", url, "--token-file", str(token_file), "--timeout", "1", *extra
    )


async def test_passes_against_the_emulator(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """Every step passes against a healthy service that sends events; exit 0."""
    emulator.start_stream(50)
    proc = await doctor(cli, emulator.url, token_file, "--wait", "5")
    assert await proc.finish() == 0
    assert verdicts(proc) == {**dict.fromkeys(STEPS, "✓"), "TLS": "–"}
    assert "3 samples: min" in proc.out
    assert "All required checks passed." in proc.out


async def test_a_quiet_platform_is_a_warning(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """No event within --wait is a warning ("may be quiet"), not a failure."""
    proc = await doctor(cli, emulator.url, token_file, "--wait", "0.3")
    assert await proc.finish() == 0
    assert verdicts(proc)["First event"] == "!"
    assert "may be quiet" in proc.out
    assert "(1 warning)" in proc.out


async def test_names_tcp_connect_against_a_closed_port(cli: StartCli, token_file: Path) -> None:
    """Nothing listening: the TCP connect step fails, exit 1, no later step runs."""
    proc = await doctor(cli, f"ws://127.0.0.1:{free_port()}/", token_file)
    assert await proc.finish() == 1
    assert verdicts(proc) == {"URL": "✓", "DNS": "✓", "TCP connect": "✗"}
    assert "Connection refused" in proc.out
    assert "'TCP connect' step failed" in proc.err


async def test_names_auth_against_a_rejecting_emulator(cli: StartCli, token_file: Path) -> None:
    """A rejected token: the AUTH step fails with exit 3."""
    async with Emulator(tokens={"another-token"}) as emulator:
        proc = await doctor(cli, emulator.url, token_file)
        assert await proc.finish() == 3
    assert verdicts(proc)["WebSocket handshake"] == "✓"
    assert verdicts(proc)["AUTH"] == "✗"
    assert "PING/PONG" not in verdicts(proc)
    assert "'AUTH' step failed" in proc.err and "Traceback" not in proc.err


async def test_names_ping_against_a_frozen_emulator(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """A server that accepts the token, then never answers PING: the PING/PONG step fails."""
    proc = await doctor(cli, emulator.url, token_file, "--wait", "0")
    await emulator.wait_for_clients(1)
    # The doctor spaces its samples, so the connection is frozen before the last one.
    emulator.freeze()
    assert await proc.finish() == 1
    assert verdicts(proc)["AUTH"] == "✓"
    assert verdicts(proc)["PING/PONG"] == "✗"
    assert "does not answer PING" in proc.out
    assert "'PING/PONG' step failed" in proc.err


async def test_tls_verified_with_ca_file(
    cli: StartCli, tls_emulator: Emulator, ca_file: Path, token_file: Path
) -> None:
    """wss:// with the CA given: the certificate is verified and its expiry shown."""
    proc = await doctor(cli, tls_emulator.url, token_file, "--ca-file", str(ca_file))
    assert await proc.finish() == 0
    assert verdicts(proc)["TLS"] == "✓"
    assert "certificate verified" in proc.out and "expires in" in proc.out


async def test_names_tls_when_the_certificate_is_not_trusted(
    cli: StartCli, tls_emulator: Emulator, token_file: Path
) -> None:
    """wss:// with a certificate from an unknown CA: the TLS step fails and says why."""
    proc = await doctor(cli, tls_emulator.url, token_file)
    assert await proc.finish() == 1
    assert verdicts(proc)["TLS"] == "✗"
    assert "--ca-file" in proc.out
