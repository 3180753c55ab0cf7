"""wss:// with certificates made by the test: verified, never silently accepted."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterator

import pytest
import trustme

from neuroio import ConnectionFailedError, EventListener
from neuroio.emulator import Emulator

TOKEN = "tls-test-token-1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ssl(ca: trustme.CA) -> Iterator[ssl.SSLContext]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    yield context


async def test_wss_with_the_right_ca_delivers_events(
    ca: trustme.CA, server_ssl: ssl.SSLContext
) -> None:
    """A client trusting the server's CA authenticates over TLS and gets events."""
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    got: list[int] = []
    done = asyncio.Event()

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            got.append(data["id"])
            if len(got) == 5:
                done.set()

    async with Emulator(tokens=[TOKEN], ssl=server_ssl) as emu:
        assert emu.url.startswith("wss://")
        listener = EventListener(TOKEN, handler, url=emu.url, ssl=client_ssl)
        task = asyncio.create_task(listener.listen())
        await emu.wait_for_clients(1)
        sent = [e["id"] for e in await emu.burst(5)]
        await asyncio.wait_for(done.wait(), 5)
        await listener.close()
        await task
    assert got == sent


async def test_untrusted_certificate_is_refused_with_a_clear_error(
    server_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate from an unknown CA is refused; the error names the certificate problem."""
    async with Emulator(tokens=[TOKEN], ssl=server_ssl) as emu:
        listener = EventListener(TOKEN, url=emu.url, max_retries=0)
        with pytest.raises(ConnectionFailedError, match="certificate") as info:
            await asyncio.wait_for(listener.listen(), 5)
        assert not any(c.authenticated for c in emu.clients)
    assert "unable to get local issuer certificate" in str(info.value) or "self" in str(info.value)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("TLS certificate" in r.getMessage() for r in errors)


async def test_certificate_for_another_host_is_refused(ca: trustme.CA) -> None:
    """A trusted certificate issued for another name fails on the hostname check."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("events.example.org").configure_cert(context)
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    async with Emulator(tokens=[TOKEN], ssl=context) as emu:
        listener = EventListener(TOKEN, url=emu.url, ssl=client_ssl, max_retries=0)
        with pytest.raises(ConnectionFailedError, match="(?i)hostname|IP address mismatch"):
            await asyncio.wait_for(listener.listen(), 5)


def test_plain_ws_to_a_remote_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    """ws:// to a non-loopback host logs that the token travels unencrypted."""
    EventListener(TOKEN, url="ws://events.example.org/")
    assert any("clear text" in r.getMessage() for r in caplog.records)
    caplog.clear()
    EventListener(TOKEN, url="ws://127.0.0.1:1/")
    EventListener(TOKEN, url="ws://[::1]:1/")
    EventListener(TOKEN, url="ws://localhost:1/")
    assert not caplog.records
