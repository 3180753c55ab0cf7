"""The per-connection session and the silent-rejection count, with no socket."""

from __future__ import annotations

import pytest

from neuroio import _redact
from neuroio._protocol.frames import classify
from neuroio._protocol.session import (
    AUTH_CLOSE_CODES,
    NEUTRAL_CLOSE_CODES,
    Accepted,
    LossReason,
    Lost,
    Phase,
    Rejected,
    Session,
    SilentRejections,
)


def feed(session: Session, frame: str) -> object:
    return session.frame_received(classify(frame), frame)


def test_auth_ok_accepts_and_other_frames_wait() -> None:
    """Events and PONGs before the answer decide nothing; {"auth": "ok"} makes it live."""
    session = Session()
    assert feed(session, '{"id":1,"data":{}}') is None
    assert feed(session, '{"PING": "PONG"}') is None
    assert feed(session, "not json") is None
    assert session.phase is Phase.AUTHENTICATING
    assert feed(session, '{"auth": "ok"}') == Accepted()
    assert session.live


@pytest.mark.parametrize(
    ("frame", "said"),
    [
        (
            '{"error": "Authentication failed: invalid token"}',
            "Authentication failed: invalid token",
        ),
        ('{"auth": "denied"}', "authentication answer 'denied'"),
        ('{"error": {"code": 7}}', '{"code":7}'),
    ],
)
def test_error_or_refusal_before_auth_rejects_with_the_server_message(
    frame: str, said: str
) -> None:
    """An error (or an auth answer other than ok) before acceptance rejects the token."""
    session = Session()
    verdict = feed(session, frame)
    assert isinstance(verdict, Rejected)
    assert verdict.server_message == said
    assert verdict.close_code is None
    assert f"server said: {said}" in verdict.message
    assert "rejected the API token" in verdict.message
    assert session.phase is Phase.ENDED


def test_server_message_is_redacted() -> None:
    """A server error that echoes a guarded token never carries it into the verdict."""
    token = "session-test-secret-token"
    _redact.guard(token)
    try:
        verdict = feed(Session(), f'{{"error": "bad token {token}"}}')
    finally:
        _redact.release(token)
    assert isinstance(verdict, Rejected)
    assert verdict.server_message is not None and token not in verdict.server_message
    assert token not in verdict.message


def test_error_on_a_live_connection_is_not_a_verdict() -> None:
    """Once accepted, an error frame is only a warning: the connection goes on."""
    session = Session()
    feed(session, '{"auth": "ok"}')
    assert feed(session, '{"error": "something"}') is None
    assert session.live


@pytest.mark.parametrize("code", sorted(AUTH_CLOSE_CODES))
def test_auth_close_codes_before_auth_reject(code: int) -> None:
    """A close with a credentials code before acceptance is a rejection, with its code."""
    verdict = Session().closed(code)
    assert isinstance(verdict, Rejected)
    assert verdict.close_code == code and verdict.server_message is None
    assert f"connection closed with code {code}" in verdict.message


@pytest.mark.parametrize("code", sorted(NEUTRAL_CLOSE_CODES))
def test_neutral_close_codes_before_auth_are_plain_losses(code: int) -> None:
    """Going away or restarting says nothing about the token: lost, reason closed."""
    assert Session().closed(code) == Lost(LossReason.CLOSED, code)


@pytest.mark.parametrize("code", [1000, 1006, 1011, None])
def test_other_closes_before_auth_are_closed_before_auth(code: int | None) -> None:
    """Any other end before acceptance may be a silent refusal: closed_before_auth."""
    assert Session().closed(code) == Lost(LossReason.CLOSED_BEFORE_AUTH, code)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, LossReason.CLOSED),
        (1011, LossReason.CLOSED),
        (4001, LossReason.CLOSED),  # accepted already: a credentials code is just a close
        (1006, LossReason.RESET),
        (None, LossReason.RESET),
    ],
)
def test_closes_of_a_live_connection(code: int | None, reason: LossReason) -> None:
    """After acceptance a close frame is `closed`; no close frame (or 1006) is `reset`."""
    session = Session()
    feed(session, '{"auth": "ok"}')
    assert session.closed(code) == Lost(reason, code, authenticated=True)


def test_transport_errors_and_timeouts() -> None:
    """Errors keep their reason; a timeout is auth_timeout before, heartbeat_timeout after."""
    assert Session().error(LossReason.MESSAGE_TOO_BIG, 1009) == Lost(
        LossReason.MESSAGE_TOO_BIG, 1009
    )
    assert isinstance(Session().error(LossReason.RESET, 4003), Rejected)
    assert Session().timeout() == Lost(LossReason.AUTH_TIMEOUT)
    live = Session()
    feed(live, '{"auth": "ok"}')
    assert live.timeout() == Lost(LossReason.HEARTBEAT_TIMEOUT, authenticated=True)
    live = Session()
    feed(live, '{"auth": "ok"}')
    assert live.error(LossReason.PROTOCOL_ERROR, 1002) == Lost(
        LossReason.PROTOCOL_ERROR, 1002, authenticated=True
    )
    assert live.phase is Phase.ENDED


def test_closing() -> None:
    """close() ends the session as `closing`, saying whether it had been accepted."""
    assert Session().closing() == Lost(LossReason.CLOSING)
    live = Session()
    feed(live, '{"auth": "ok"}')
    assert live.closing() == Lost(LossReason.CLOSING, authenticated=True)


def test_loss_reason_values_are_the_stats_keys() -> None:
    """The values are the strings ListenerStats.reconnects counts (CLI and metrics read them)."""
    assert {reason.value for reason in LossReason} == {
        "connect_failed",
        "auth_timeout",
        "closed_before_auth",
        "closed",
        "reset",
        "heartbeat_timeout",
        "message_too_big",
        "protocol_error",
        "closing",
    }


def test_three_silent_closes_in_a_row_are_a_rejection() -> None:
    """Three connections in a row closed before acceptance, saying nothing: rejected."""
    silent = SilentRejections()
    assert silent.observe(Lost(LossReason.CLOSED_BEFORE_AUTH, 1000)) is None
    assert silent.observe(Lost(LossReason.CLOSED_BEFORE_AUTH, 1011)) is None
    verdict = silent.observe(Lost(LossReason.CLOSED_BEFORE_AUTH, 1006))
    assert isinstance(verdict, Rejected)
    assert verdict.close_code == 1006
    assert "3 times in a row" in verdict.message


@pytest.mark.parametrize(
    "between",
    [
        Lost(LossReason.CONNECT_FAILED),
        Lost(LossReason.AUTH_TIMEOUT),
        Lost(LossReason.CLOSED, 1001),
        Lost(LossReason.RESET, authenticated=True),
    ],
)
def test_any_other_outcome_breaks_the_row(between: Lost) -> None:
    """A failed connect, a timeout, a neutral close or an accepted connection reset the count."""
    silent = SilentRejections()
    silent.observe(Lost(LossReason.CLOSED_BEFORE_AUTH, 1000))
    silent.observe(Lost(LossReason.CLOSED_BEFORE_AUTH, 1000))
    assert silent.observe(between) is None
    assert silent.count == 0
    assert silent.observe(Lost(LossReason.CLOSED_BEFORE_AUTH, 1000)) is None
