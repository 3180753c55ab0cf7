"""Running a command's coroutine: the event loop, stop signals, and exit codes.

Exit codes (the same for every command)::

    0  done: stopped by SIGINT/SIGTERM, or --count reached, or every check passed
    1  an error (one line; the traceback with -v), or a failed check
    2  a usage error: a bad option, no token, a bad file
    3  the API token was rejected
    4  no connection could be made within --max-retries attempts
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click

from .. import _redact
from .._io import write_all
from ..exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    NeuroIOError,
)
from ._options import LogSettings

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONNECTION",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandFailed",
    "StopSignals",
    "fail",
    "run",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_CONNECTION = 4

logger = logging.getLogger("neuroio.cli")


class CommandFailed(Exception):
    """A command ends with ``exit_code`` after ``message`` (one line, no traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, log: LogSettings) -> None:
    """Report a fatal error as one line on stderr (a JSON log line with ``--log-format json``)."""
    message = _redact.redact(message)
    if log.log_format == "json":
        logger.error("%s", message)
        return
    with contextlib.suppress(OSError):
        write_all(sys.stderr.fileno(), f"Error: {message}\n".encode("utf-8", "replace"))


def run(
    main: Callable[[], Coroutine[Any, Any, int | None]],
    *,
    log: LogSettings,
    use_uvloop: bool | None = None,
) -> NoReturn:
    """Run ``main()`` on a fresh event loop and exit with the code its outcome maps to.

    Args:
        main: makes the coroutine to run; it returns the exit code (``None``: 0).
        log: for the error format and whether tracebacks are shown.
        use_uvloop: ``True`` requires uvloop, ``None`` uses it when installed.
    """
    runner = _loop_runner(use_uvloop)
    try:
        code = runner(main()) or EXIT_OK
    except KeyboardInterrupt:
        # Ctrl-C before the loop's own handlers were installed (or after): still a stop.
        code = EXIT_OK
    except click.ClickException:
        raise
    except AuthenticationError as exc:
        fail(f"authentication failed: {exc}", log)
        code = EXIT_AUTH
    except ConnectionFailedError as exc:
        fail(str(exc), log)
        code = EXIT_CONNECTION
    except ConfigurationError as exc:
        fail(str(exc), log)
        code = EXIT_USAGE
    except CommandFailed as exc:
        fail(str(exc), log)
        code = exc.exit_code
    except NeuroIOError as exc:
        # A failure the library names (a spool, a sink, the REST API): its message says it all.
        if log.verbose:
            logger.error("stopped by an error", exc_info=exc)
        fail(str(exc), log)
        code = EXIT_ERROR
    except Exception as exc:
        if log.verbose:
            logger.error("unexpected error", exc_info=exc)
        hint = "" if log.verbose else " (run with -v for the traceback)"
        fail(f"{type(exc).__name__}: {exc}{hint}", log)
        code = EXIT_ERROR
    sys.exit(code)


def _loop_runner(
    use_uvloop: bool | None,
) -> Callable[[Coroutine[Any, Any, int | None]], int | None]:
    if use_uvloop is False:
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if use_uvloop:
            raise click.UsageError(
                "--uvloop needs uvloop: pip install 'neuroio-events[uvloop]'"
            ) from None
        return asyncio.run

    def run_on_uvloop(coro: Coroutine[Any, Any, int | None]) -> int | None:
        result: int | None = uvloop.run(coro)
        return result

    return run_on_uvloop


class StopSignals:
    """SIGINT and SIGTERM as a request to stop, for the coroutine of a command.

    The first signal sets :attr:`requested` (the command finishes what it is writing and
    stops); a second one calls ``on_force`` (e.g. cancel everything at once). With
    ``on_hangup``, SIGHUP calls it (the bridge reopens its files, for logrotate) instead of
    ending the process.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self,
        on_force: Callable[[], None] | None = None,
        *,
        on_hangup: Callable[[], None] | None = None,
    ) -> None:
        self.requested = asyncio.Event()
        self.received: int | None = None
        self._on_force = on_force
        self._on_hangup = on_hangup
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        """Install the handlers on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                self._installed.append(sig)
        hangup = getattr(signal, "SIGHUP", None)  # not on Windows
        if self._on_hangup is not None and hangup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(hangup, self._on_hangup)
                self._installed.append(hangup)

    def remove(self) -> None:
        """Remove the handlers (the default ones come back)."""
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        self._installed.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            logger.warning("second %s: stopping now", sig.name)
            if self._on_force is not None:
                self._on_force()
            return
        self.received = sig
        logger.info("%s received: stopping", sig.name)
        self.requested.set()

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
