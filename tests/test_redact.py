"""Token redaction in log records, whichever logger of the package or its network stack."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from neuroio import _redact

SECRET = "tok-redact-test-0123456789"


@pytest.fixture
def guarded() -> Iterator[str]:
    _redact.guard(SECRET)
    yield SECRET
    _redact.release(SECRET)


@pytest.mark.parametrize(
    "name",
    ["neuroio", "neuroio.listener", "neuroio.a.module.added.later", "aiohttp.client", "asyncio"],
)
def test_any_logger_under_a_guarded_prefix_is_redacted(
    guarded: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A logger created after the guard, anywhere under neuroio.*, still never shows the token."""
    caplog.set_level(logging.DEBUG, logger=name)
    logging.getLogger(name).warning("frame %s sent with %r", f'{{"token": "{guarded}"}}', guarded)
    text = caplog.text
    assert guarded not in text
    assert "***" in text


def test_tracebacks_are_redacted(guarded: str, caplog: pytest.LogCaptureFixture) -> None:
    """An exception whose message carries the token is logged without it."""
    caplog.set_level(logging.ERROR, logger="neuroio.x")
    try:
        raise RuntimeError(f"bad token {guarded}")
    except RuntimeError:
        logging.getLogger("neuroio.x").exception("failed")
    assert "bad token ***" in caplog.text
    assert guarded not in caplog.text


def test_other_loggers_are_left_alone(guarded: str, caplog: pytest.LogCaptureFixture) -> None:
    """Only the package's and its network stack's loggers are touched (a user's are theirs)."""
    caplog.set_level(logging.INFO, logger="neuroiox")
    logging.getLogger("neuroiox").info("value %s", guarded)
    assert guarded in caplog.text


def test_secrets_lists_what_is_guarded_and_release_forgets(guarded: str) -> None:
    """secrets() is what other writers (recordings) clean; a released secret is forgotten."""
    assert guarded in _redact.secrets()
    _redact.guard("another-secret-value")
    _redact.release("another-secret-value")
    assert "another-secret-value" not in _redact.secrets()
    assert _redact.redact(f"x{guarded}y") == "x***y"


def test_guard_and_redact_from_many_threads(guarded: str) -> None:
    """Registering secrets while other threads redact never raises (no dict changing size)."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def redactor() -> None:
        try:
            while not stop.is_set():
                _redact.redact(f"a {guarded} b")
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=redactor) for _ in range(2)]
    for thread in threads:
        thread.start()
    for i in range(2000):
        _redact.guard(f"secret-number-{i:06d}")
    for i in range(2000):
        _redact.release(f"secret-number-{i:06d}")
    stop.set()
    for thread in threads:
        thread.join(5)
    assert errors == []
