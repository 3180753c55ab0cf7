"""The package's shared helpers: times, Retry-After, loopback, write_all, retry waits."""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import datetime, timedelta, timezone

import pytest

from neuroio._http import MAX_RETRY_AFTER, parse_retry_after
from neuroio._io import write_all
from neuroio._net import is_loopback, is_loopback_url
from neuroio._protocol.backoff import Backoff
from neuroio._retry import Retrying
from neuroio._times import iso, parse_time, timestamp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-07-29T13:53:27.306Z", datetime(2019, 7, 29, 13, 53, 27, 306000, timezone.utc)),
        ("2019-07-29T13:53:27.306", datetime(2019, 7, 29, 13, 53, 27, 306000, timezone.utc)),
        (
            "2019-07-29T15:53:27+02:00",
            datetime(2019, 7, 29, 13, 53, 27, tzinfo=timezone.utc),
        ),
        (" 2019-07-29T13:53:27Z ", datetime(2019, 7, 29, 13, 53, 27, tzinfo=timezone.utc)),
    ],
)
def test_parse_time_reads_the_platform_forms(text: str, expected: datetime) -> None:
    """Times with and without a zone are read; a naive one is UTC."""
    assert parse_time(text) == expected


@pytest.mark.parametrize("value", [None, 5, "", "yesterday", "2019-13-01T00:00:00Z", [], b"x"])
def test_parse_time_refuses_what_is_not_a_time(value: object) -> None:
    """Anything that is not an ISO-8601 string is ``None``, never an exception."""
    assert parse_time(value) is None
    assert timestamp(value) is None


def test_iso_round_trips_and_is_utc() -> None:
    """``iso`` writes UTC with a Z, and ``parse_time`` reads it back."""
    moment = datetime(2024, 1, 2, 5, 4, 5, 123456, timezone(timedelta(hours=3)))
    text = iso(moment)
    assert text == "2024-01-02T02:04:05.123456Z"
    assert parse_time(text) == moment
    assert timestamp(text) == moment.timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("3", 3.0), (" 2.5 ", 2.5), ("-4", 0.0), ("junk", None),
     ("1e9", MAX_RETRY_AFTER), ("nan", None)],
)  # fmt: skip
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Delta-seconds are clamped to [0, cap]; unreadable values are ignored."""
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    """An HTTP date is turned into the seconds from ``now``."""
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == 20.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now, cap=5) == 5


@pytest.mark.parametrize(
    ("host", "expected"),
    [("localhost", True), ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
     ("[::1]", True), ("10.0.0.1", False), ("example.com", False), ("", False)],
)  # fmt: skip
def test_is_loopback(host: str, expected: bool) -> None:
    """Only names of this machine are loopback."""
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [("ws://127.0.0.1:1/", True), ("ws://[::1]:9/x", True), ("wss://events.neuroio.com", False),
     ("ws://[::1", False), ("not a url", False)],
)  # fmt: skip
def test_is_loopback_url(url: str, expected: bool) -> None:
    """The host of a URL is judged; an unreadable URL is not loopback."""
    assert is_loopback_url(url) is expected


def test_write_all_writes_everything_through_a_pipe() -> None:
    """A write larger than the pipe buffer arrives whole (os.write writes only part)."""
    read_fd, write_fd = os.pipe()
    data = os.urandom(300_000)
    received = bytearray()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        writer = loop.run_in_executor(None, write_all, write_fd, data)
        while len(received) < len(data):
            received.extend(await loop.run_in_executor(None, os.read, read_fd, 1 << 16))
        await writer

    try:
        asyncio.run(main())
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert bytes(received) == data


async def test_retrying_waits_backoff_or_retry_after_and_counts() -> None:
    """Each wait counts an attempt; Retry-After replaces the backoff delay; reset restarts."""
    retry = Retrying(Backoff(0.001, 0.002, rng=random.Random(1)))
    assert await retry.wait() is True
    assert await retry.wait(retry_after=0.0) is True
    assert retry.attempts == 2
    retry.reset()
    assert retry.attempts == 0 and retry.backoff.attempts == 0


async def test_retrying_ends_a_wait_when_the_owner_closes() -> None:
    """A long wait ends as soon as the closing event is set, and says not to retry."""
    closing = asyncio.Event()
    retry = Retrying(Backoff(60.0, 60.0), closing=closing)
    waiter = asyncio.create_task(retry.wait(retry_after=60.0))
    await asyncio.sleep(0)
    started = time.monotonic()
    closing.set()
    assert await asyncio.wait_for(waiter, 5) is False
    assert time.monotonic() - started < 5
    assert await retry.wait() is False  # already closing: no wait at all


async def test_retrying_polls_a_closing_callable() -> None:
    """With a callable, the wait is checked before and after sleeping."""
    flag = [False]
    retry = Retrying(Backoff(0.0, 0.0), closing=lambda: flag[0])
    assert await retry.wait() is True
    flag[0] = True
    assert await retry.wait() is False


def test_listener_option_defaults_are_valid_and_checked() -> None:
    """The shared defaults validate; an option out of range is named in the error."""
    from neuroio._config import ConnectionOptions, RecoveryOptions
    from neuroio.exceptions import ConfigurationError

    ConnectionOptions().validate()
    RecoveryOptions().validate()
    with pytest.raises(ConfigurationError, match="ping_timeout"):
        ConnectionOptions(ping_timeout=0).validate()
    with pytest.raises(ConfigurationError, match="ws://"):
        ConnectionOptions(url="http://x").validate()
    with pytest.raises(ConfigurationError, match="backfill_max_events"):
        RecoveryOptions(backfill_max_events=0).validate()
