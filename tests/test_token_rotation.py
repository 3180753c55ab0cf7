"""Token providers: rotations against the emulator, refusals, failing providers, redaction."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from neuroio import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    EventListener,
    _redact,
    token_file,
)
from neuroio._token import TokenError, Tokens
from neuroio.emulator import Emulator

from .helpers import Frames, until

ROTATED = ["rot-token-a1b2c3d4", "rot-token-e5f6a7b8", "rot-token-c9d0e1f2", "rot-token-a3b4c5d6"]


def test_a_fixed_token_is_kept_and_never_asked_again() -> None:
    """A string is the token for good: a refusal changes nothing, it is not dynamic."""
    tokens = Tokens("fixed-token-123")
    tokens.rejected("fixed-token-123")
    assert not tokens.dynamic
    assert asyncio.run(tokens.get()) == "fixed-token-123"
    assert "fixed-token-123" not in repr(tokens)
    tokens.release()


def test_a_provided_token_is_cached_until_refused_and_every_one_is_redacted() -> None:
    """The provider is asked once, again only after a refusal; both tokens stay redacted."""
    answers = iter(["prov-token-one-111", "  prov-token-two-222\n"])
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return next(answers)

    tokens = Tokens(provider)

    async def run() -> list[str]:
        got = [await tokens.get(), await tokens.get()]
        tokens.rejected("prov-token-one-111")
        got.append(await tokens.get())
        return got

    assert asyncio.run(run()) == ["prov-token-one-111", "prov-token-one-111", "prov-token-two-222"]
    assert calls == 2
    assert {"prov-token-one-111", "prov-token-two-222"} <= set(_redact.secrets())
    tokens.release()
    assert "prov-token-one-111" not in _redact.secrets()


def test_a_provider_that_raises_or_gives_nothing_is_a_token_error() -> None:
    """The error names the failure, never a token; an empty answer is no token."""

    def broken() -> str:
        raise OSError("vault unreachable")

    with pytest.raises(TokenError, match="vault unreachable"):
        asyncio.run(Tokens(broken).get())
    with pytest.raises(TokenError, match="gave no token"):
        asyncio.run(Tokens(lambda: "  ").get())


def test_api_token_must_be_a_string_or_a_callable() -> None:
    """Anything else is refused at construction."""
    with pytest.raises(ConfigurationError):
        EventListener(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        EventListener("")


async def test_three_rotations_lose_nothing_and_cost_one_reconnect_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each rotation: the old token revoked, the provider gives the new one; nothing lost,
    and no token in any log record (DEBUG included), repr or stats.

    The emulator never pushes an event emitted while no client is live, so the events of
    each gap come back only through gap recovery, with the rotated token.
    """
    caplog.set_level(logging.DEBUG)
    current = [ROTATED[0]]

    async def provider() -> str:
        await asyncio.sleep(0)
        return current[0]

    frames = Frames()
    async with Emulator(tokens=[ROTATED[0]], seed=11, push_while_disconnected=False) as emu:
        listener = EventListener(
            provider,
            frames,
            url=emu.url,
            api_url=emu.api_url,
            backfill=True,
            reconnect_delay=0.01,
        )
        task = asyncio.create_task(listener.listen())
        await until(lambda: listener.stats.authenticated == 1)
        sent: list[int] = []
        for n in range(1, 4):
            sent += [(await emu.emit())["id"] for _ in range(20)]
            emu.accept(ROTATED[n])
            current[0] = ROTATED[n]
            await emu.revoke(ROTATED[n - 1])
            sent += [(await emu.emit())["id"] for _ in range(10)]
            await until(lambda: listener.stats.authenticated == n + 1)  # noqa: B023
        sent += [(await emu.emit())["id"] for _ in range(20)]
        await frames.wait(lambda: set(sent) <= set(frames.ids), timeout=10)
        await listener.close()
        await task
    assert sorted(frames.ids) == sorted(sent), "an event was lost or delivered twice"
    assert listener.stats.total_reconnects == 3
    assert listener.stats.authenticated == 4
    # At most one refused AUTH per rotation, always with the revoked token (none when gap
    # recovery's REST request met the revocation first and fetched the new token).
    refused = [c.auth_tokens for c in emu.clients if not c.authenticated]
    assert all(tokens in ([ROTATED[0]], [ROTATED[1]], [ROTATED[2]]) for tokens in refused)
    assert len({tokens[0] for tokens in refused}) == len(refused)
    assert all(t not in repr(listener) and t not in repr(listener.stats) for t in ROTATED)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and all(t not in logged for t in ROTATED)
    assert emu.rest_requests, "the gaps were not recovered over the REST API"


async def test_a_revoked_token_the_provider_keeps_giving_is_fatal() -> None:
    """The same refused token twice in a row ends listen() with AuthenticationError."""
    token = "revoked-token-9f8e7d"
    frames = Frames()
    async with Emulator(tokens=[token], push_while_disconnected=False) as emu:
        listener = EventListener(lambda: token, frames, url=emu.url, reconnect_delay=0.01)
        task = asyncio.create_task(listener.listen())
        await until(lambda: listener.stats.authenticated == 1)
        await emu.revoke(token)
        with pytest.raises(AuthenticationError) as raised:
            await asyncio.wait_for(task, 5)
    assert token not in str(raised.value) and token not in repr(raised.value)
    refused = [c for c in emu.clients if c.auth_tokens and not c.authenticated]
    assert 1 <= len(refused) <= 2


async def test_a_failing_provider_is_a_failed_attempt_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two failures of the provider: two reconnect delays, one line each, then connected."""
    token = "late-token-5a6b7c8d"
    failures = [OSError(f"secret store down, not {token}"), OSError("secret store down")]

    def provider() -> str:
        if failures:
            raise failures.pop(0)
        return token

    caplog.set_level(logging.WARNING, logger="neuroio")
    _redact.guard(token)  # the provider's error quotes it before it was ever given
    frames = Frames()
    try:
        async with Emulator(tokens=[token]) as emu:
            listener = EventListener(provider, frames, url=emu.url, reconnect_delay=0.01)
            task = asyncio.create_task(listener.listen())
            await until(lambda: listener.stats.authenticated == 1)
            await listener.close()
            await task
    finally:
        _redact.release(token)
    assert listener.stats.reconnects["token_provider"] == 2
    lines = [r.getMessage() for r in caplog.records if "token provider failed" in r.getMessage()]
    assert len(lines) == 2
    assert all(token not in line for line in lines)


def test_token_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    """First line, stripped; the same mtime and size is not read again, a rewrite is."""
    path = tmp_path / "token"
    path.write_text("  file-token-aaaa1111 \nsecond line\n")
    path.chmod(0o600)
    provider = token_file(path)
    assert provider() == "file-token-aaaa1111"
    before = os.stat(path)
    # Same size, same mtime: taken for the same file, the cached token is given.
    path.write_text("  file-token-bbbb2222 \nsecond line\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert provider() == "file-token-aaaa1111"
    path.write_text("file-token-cccc3333\n")
    assert provider() == "file-token-cccc3333"
    assert "file-token" not in repr(provider)
    assert "file-token-cccc3333" in _redact.secrets()


def test_token_file_refuses_an_empty_or_missing_file(tmp_path: Path) -> None:
    """One clear error naming the file; never a token."""
    path = tmp_path / "token"
    with pytest.raises(ConfigurationError, match="cannot read the token file"):
        token_file(path)()
    path.write_text("\n  \n")
    with pytest.raises(ConfigurationError, match="is empty"):
        token_file(path)()


def test_token_file_readable_by_others_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mode 644: one warning with the fix, however often the file is read again."""
    path = tmp_path / "token"
    path.write_text("file-token-dddd4444\n")
    path.chmod(0o644)
    provider = token_file(path)
    caplog.set_level(logging.WARNING, logger="neuroio")
    provider()
    path.write_text("file-token-eeee5555\n")
    assert provider() == "file-token-eeee5555"
    warnings = [r.getMessage() for r in caplog.records if "read by other users" in r.getMessage()]
    assert len(warnings) == 1 and "chmod 600" in warnings[0]


async def test_a_listener_follows_a_rewritten_token_file(tmp_path: Path) -> None:
    """The file rewritten, the old token revoked: the listener reconnects with the new one."""
    path = tmp_path / "token"
    path.write_text(ROTATED[0] + "\n")
    path.chmod(0o600)
    frames = Frames()
    async with Emulator(tokens=[ROTATED[0]]) as emu:
        listener = EventListener(token_file(path), frames, url=emu.url, reconnect_delay=0.01)
        task = asyncio.create_task(listener.listen())
        await until(lambda: listener.stats.authenticated == 1)
        emu.accept(ROTATED[1])
        path.write_text(ROTATED[1] + "\n")
        await emu.revoke(ROTATED[0])
        await until(lambda: listener.stats.authenticated == 2)
        entry = await emu.emit()
        await frames.wait(lambda: entry["id"] in frames.ids)
        await listener.close()
        await task
    assert listener.stats.total_reconnects == 1


async def test_a_provider_handing_out_bad_tokens_gets_the_backoff_and_max_retries() -> None:
    """A new refused token at each call: one at once, then each after a backoff, counted
    as failed attempts, so max_retries ends it (no tight loop of connections)."""
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return f"bad-token-{calls:04d}"

    frames = Frames()
    async with Emulator(tokens=["the-only-good-token"]) as emu:
        listener = EventListener(provider, frames, url=emu.url, reconnect_delay=0.01, max_retries=2)
        with pytest.raises(ConnectionFailedError):
            await asyncio.wait_for(listener.listen(), 5)
    assert listener.stats.reconnects["token_rejected"] == 2
    assert [c.auth_tokens for c in emu.clients] == [[f"bad-token-{n:04d}"] for n in range(1, 5)]
