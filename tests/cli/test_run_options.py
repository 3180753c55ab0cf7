"""Exit codes of the command runner, and where the API token comes from."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import pytest
from click.core import ParameterSource

from neuroio import _redact
from neuroio.cli._options import ConnectionSettings, LogSettings, Secret
from neuroio.cli._run import CommandFailed, run
from neuroio.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    SpoolError,
)

from .conftest import TOKEN


def exit_code_of(error: BaseException | None, log: LogSettings | None = None) -> int:
    async def main() -> int | None:
        if error is not None:
            raise error
        return None

    with pytest.raises(SystemExit) as exit_info:
        run(main, log=log or LogSettings(), use_uvloop=False)
    code = exit_info.value.code
    assert isinstance(code, int)
    return code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (KeyboardInterrupt(), 0),
        (AuthenticationError("token rejected"), 3),
        (ConnectionFailedError("no connection after 3 attempts"), 4),
        (ConfigurationError("bad option"), 2),
        (CommandFailed("the 'AUTH' step failed", 3), 3),
        (SpoolError("spool locked"), 1),
        (RuntimeError("kaboom"), 1),
    ],
)
def test_exit_codes(error: BaseException | None, code: int) -> None:
    """Each outcome maps to its documented exit code."""
    assert exit_code_of(error) == code


def test_errors_are_one_line_without_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """An unexpected error: one line naming it and how to see more; no traceback."""
    assert exit_code_of(RuntimeError("kaboom")) == 1
    err = capfd.readouterr().err
    assert err == "Error: RuntimeError: kaboom (run with -v for the traceback)\n"
    assert exit_code_of(AuthenticationError("rejected")) == 3
    assert capfd.readouterr().err == "Error: authentication failed: rejected\n"


def test_verbose_logs_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="neuroio.cli"):
        assert exit_code_of(RuntimeError("kaboom"), LogSettings(verbosity=1)) == 1
    assert caplog.records[0].exc_info is not None


def test_a_guarded_token_never_reaches_the_error_line(capfd: pytest.CaptureFixture[str]) -> None:
    """Even an error that quotes the token is printed with it masked."""
    _redact.guard(TOKEN)
    try:
        exit_code_of(RuntimeError(f"server echoed {TOKEN}"))
    finally:
        _redact.release(TOKEN)
    err = capfd.readouterr().err
    assert TOKEN not in err and "server echoed ***" in err


def test_secret_hides_itself() -> None:
    secret = Secret(TOKEN)
    assert TOKEN not in repr(secret) and TOKEN not in str(secret)
    assert secret.reveal() == TOKEN


CMD, ENV = ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT


def settings(
    token: str | None = None,
    token_file: Path | None = None,
    token_source: ParameterSource | None = None,
    file_source: ParameterSource | None = None,
) -> ConnectionSettings:
    return ConnectionSettings(
        token=token,
        token_file=token_file,
        token_source=token_source,
        token_file_source=file_source,
    )


def test_token_from_the_first_line_of_the_file(token_file: Path) -> None:
    token_file.write_text(f"  {TOKEN}  \nsecond line\n")
    assert settings(token_file=token_file, file_source=CMD).api_token().reveal() == TOKEN


def test_the_command_line_wins_over_the_environment(token_file: Path) -> None:
    """--token-file on the command line beats NEUROIO_API_TOKEN, and --token beats
    NEUROIO_API_TOKEN_FILE."""
    from_file = settings("env-token", token_file, ENV, CMD).api_token()
    assert from_file.reveal() == TOKEN
    assert settings("cli-token", token_file, CMD, ENV).api_token().reveal() == "cli-token"


def test_both_on_the_command_line_is_a_usage_error(token_file: Path) -> None:
    with pytest.raises(click.UsageError, match="not both"):
        settings("cli-token", token_file, CMD, CMD).api_token()


@pytest.mark.parametrize("token", [None, "", "   "])
def test_no_token_says_how_to_give_one(token: str | None) -> None:
    with pytest.raises(click.UsageError) as info:
        settings(token, token_source=CMD).api_token()
    for hint in ("--token-file", "NEUROIO_API_TOKEN", "--token"):
        assert hint in info.value.message


def test_unreadable_or_empty_token_file(tmp_path: Path) -> None:
    with pytest.raises(click.UsageError, match="cannot read the token file"):
        settings(token_file=tmp_path / "missing", file_source=CMD).api_token()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(click.UsageError, match="is empty"):
        settings(token_file=empty, file_source=CMD).api_token()
