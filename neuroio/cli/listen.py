"""``neuroio-events listen``: print the events stream, one line per event.

stdout carries the events and nothing else: in JSON Lines (the JSON value the server sent,
re-serialised compactly, so even a frame the server spread over several lines is one line)
or in a coloured one-line-per-event form. stderr carries the logs and, on a terminal, a live
status line. :func:`stream` is the part ``demo`` reuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from .._protocol.frames import Kind, classify
from ..listener import EventListener
from ..messages import Backfilled
from ..recording import encode_record
from . import _logging
from ._options import (
    ConnectionSettings,
    ListenerSettings,
    LogSettings,
    Secret,
    connection_options,
    listener_options,
    logging_options,
    loop_option,
)
from ._output import (
    RESULT_LEGEND,
    FrameFormatter,
    OutputWorker,
    StatusLine,
    decode_frame,
    encode_compact,
    open_append,
    run_status,
    summary_line,
)
from ._run import EXIT_OK, CommandFailed, StopSignals, run

if TYPE_CHECKING:
    # Imported when serving: it needs prometheus-client (the metrics extra).
    from .._metrics_http import MetricsServer

__all__ = ["StreamSettings", "command", "stream"]

logger = logging.getLogger("neuroio.cli")

# After a stop request, how long the listener may take to write what it already received and
# close the connection before it is cancelled; with the final flush this keeps the exit
# within 5 s of SIGTERM even when the server does not answer the close frame.
_SHUTDOWN_BUDGET = 3.0
_FLUSH_BUDGET = 0.5


@dataclass
class StreamSettings:
    """What :func:`stream` writes, and where.

    Attributes:
        fmt: the format of stdout, ``"jsonl"`` or ``"pretty"``; ``None`` writes nothing there.
        output: a file to append JSON lines to.
        record: a file to append every received frame to (see :mod:`neuroio.recording`).
        include_control: also write AUTH answers, PONGs and error messages.
        count: stop after this many events.
        status: draw the live status line (only ever on a terminal).
        metrics_port: serve ``/metrics`` and ``/healthz`` on this port (0: a free one,
            logged); ``None``: no metrics server.
        metrics_host: the address the metrics server listens on.
    """

    fmt: str | None = "jsonl"
    output: Path | None = None
    record: Path | None = None
    include_control: bool = False
    count: int | None = None
    status: bool = True
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


class _Printer:
    """The listener's handler: formats every frame and queues the lines on the worker.

    Lines are queued without waiting for each write (that would cost a thread round trip
    per event); the handler waits only while the worker is more than its limit behind.
    """

    def __init__(
        self,
        targets: list[tuple[int, FrameFormatter, str]],
        record: tuple[int, str] | None,
        count: int | None,
    ) -> None:
        self._targets = targets
        self._record_fd = record[0] if record is not None else None
        self._names = {fd: name for fd, _, name in targets}
        if record is not None:
            self._names[record[0]] = record[1]
        self._count = count
        self.worker: OutputWorker | None = None
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        """Given each event written, decoded (the status page's ring)."""
        self.events = 0
        self.finished = asyncio.Event()
        self.failure: str | None = None
        self.stdout_closed = False
        """stdout's reader went away (``listen | head -1``): the end, not a failure."""

    async def handle(self, frame: str | bytes) -> None:
        if self.finished.is_set():
            return  # --count reached, or an output failed: what follows is not written
        worker = self.worker
        assert worker is not None
        received = time.time()
        backfilled = isinstance(frame, Backfilled)
        if backfilled:
            frame = str(frame)  # msgspec takes exact str only, not this subclass
        if self._record_fd is not None:
            worker.submit(self._record_fd, encode_record(frame, received, backfilled=backfilled))
        self._output(worker, frame, backfilled)
        await worker.room()

    def _output(self, worker: OutputWorker, frame: str | bytes, backfilled: bool) -> None:
        kind = classify(frame)
        if kind is Kind.MALFORMED or kind is Kind.BINARY:
            return  # the listener has logged it
        try:
            value = decode_frame(frame)
        except msgspec.DecodeError as exc:
            logger.warning("skipped a frame that is not valid JSON: %s", exc)
            return
        if kind is Kind.EVENT:
            if not _is_event(value):
                logger.warning(
                    "skipped a frame shaped like an event without an integer id and an "
                    "object data: %.200s",
                    encode_compact(value).decode().rstrip(),
                )
                return
            for fd, formatter, _ in self._targets:
                try:
                    line = formatter.event(value, backfilled)
                except Exception as exc:
                    logger.warning("cannot format event %s (%s); written as JSON", value["id"], exc)
                    line = encode_compact(value)
                worker.submit(fd, line)
            if self.on_event is not None:
                self.on_event(value)
            self.events += 1
            if self._count is not None and self.events >= self._count:
                self.finished.set()
            return
        if kind is Kind.UNKNOWN:
            logger.info("message of an unknown shape: %.200s", encode_compact(value).decode())
        for fd, formatter, _ in self._targets:
            control = formatter.control(value, kind)
            if control is not None:
                worker.submit(fd, control)

    def output_failed(self, fd: int, exc: OSError) -> None:
        """The worker could not write to ``fd``: stop, and say why at exit."""
        name = self._names.get(fd, f"descriptor {fd}")
        if fd == 1 and isinstance(exc, BrokenPipeError):
            # What Unix tools do when the reader has what it wanted: stop, quietly.
            logger.debug("stdout was closed by its reader: stopping")
            self.stdout_closed = True
            self.finished.set()
            return
        if isinstance(exc, BrokenPipeError):
            message = f"{name} was closed by its reader (broken pipe); stopping"
        else:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            message = f"cannot write to {name}: {reason}"
        if self.failure is None:
            self.failure = message
        self.finished.set()


def _is_event(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    event_id = value.get("id")
    return (
        isinstance(event_id, int)
        and not isinstance(event_id, bool)
        and isinstance(value.get("data"), dict)
    )


async def stream(
    url: str,
    token: Secret,
    settings: StreamSettings,
    listener_settings: ListenerSettings,
    *,
    ssl_context: ssl.SSLContext | None = None,
    signals: StopSignals | None = None,
) -> int:
    """Listen to ``url`` and write the stream as ``settings`` say until stopped.

    Stops on SIGINT/SIGTERM (through ``signals``, installed here when not given) or after
    ``settings.count`` events, writing to the end whatever is being written.

    Returns:
        The exit code, 0.

    Raises:
        AuthenticationError: the token was rejected.
        ConnectionFailedError: ``max_retries`` was exhausted.
        ConfigurationError: an output file cannot be opened, or a listener option is invalid.
        CommandFailed: an output could not be written.
    """
    started = time.monotonic()
    stdout_tty = os.isatty(1)
    status_on = settings.status and os.isatty(2)
    fds: list[int] = []
    try:
        targets: list[tuple[int, FrameFormatter, str]] = []
        if settings.fmt is not None:
            color = settings.fmt == "pretty" and stdout_tty
            formatter = FrameFormatter(
                settings.fmt, color=color, include_control=settings.include_control
            )
            targets.append((1, formatter, "stdout"))
        if settings.output is not None:
            fds.append(_open(settings.output, "output"))
            jsonl = FrameFormatter("jsonl", include_control=settings.include_control)
            targets.append((fds[-1], jsonl, str(settings.output)))
        record = None
        if settings.record is not None:
            fds.append(_open(settings.record, "recording"))
            record = (fds[-1], str(settings.record))
        printer = _Printer(targets, record, settings.count)
        worker = OutputWorker(
            status_fd=2 if status_on else None,
            shared_tty_fds=(1,) if stdout_tty else (),
            on_error=printer.output_failed,
        )
        printer.worker = worker
        listener = EventListener(
            token.source(),
            printer.handle,
            url=url,
            ssl=ssl_context,
            **listener_settings.kwargs(),
        )
        metrics = await _serve_metrics(listener, settings, printer)
        worker.start()
        if status_on:
            _logging.set_sink(lambda data: worker.write_nowait(2, data))
        try:
            await _supervise(listener, printer, worker, status_on, signals)
            logger.info("%s", summary_line(listener.stats, time.monotonic() - started))
        finally:
            _logging.set_sink(None)
            if metrics is not None:
                await metrics.stop()
            if not await worker.aclose(_FLUSH_BUDGET):
                logger.warning("output still blocked at exit; the last lines may be missing")
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    if printer.stdout_closed:
        _detach_stdout()
    if printer.failure is not None:
        raise CommandFailed(printer.failure)
    return EXIT_OK


def _detach_stdout() -> None:
    """Point descriptor 1 at ``/dev/null`` once its reader is gone, so that nothing written
    or flushed to it later (Python flushes ``sys.stdout`` at exit) fails with EPIPE."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


async def _serve_metrics(
    listener: EventListener, settings: StreamSettings, printer: _Printer
) -> MetricsServer | None:
    """Start the ``/metrics``, ``/healthz`` and status page server when asked; its URL is
    logged.

    Raises:
        MissingExtraError: the ``metrics`` extra is not installed.
        ConfigurationError: the port cannot be bound (e.g. it is in use).
    """
    if settings.metrics_port is None:
        return None
    from .._listener_metrics import ListenerMetrics  # MissingExtraError without the extra

    server = ListenerMetrics(listener)
    printer.on_event = server.ring.add
    await server.start(settings.metrics_host, settings.metrics_port)
    logger.info(
        "metrics on %s, health on /healthz, status page on %s",
        server.url("/metrics"),
        server.url("/"),
    )
    return server


def _open(path: Path, what: str) -> int:
    try:
        return open_append(path)
    except OSError as exc:
        raise click.UsageError(f"cannot open the {what} file {path}: {exc.strerror}") from None


async def _supervise(
    listener: EventListener,
    printer: _Printer,
    worker: OutputWorker,
    status_on: bool,
    signals: StopSignals | None,
) -> None:
    listen_task = asyncio.create_task(listener.listen(), name="neuroio-cli-listen")
    own_signals = signals is None
    if signals is None:

        def force() -> None:
            listen_task.cancel()

        signals = StopSignals(on_force=force)
        signals.install()
    helpers: list[asyncio.Task[Any]] = [
        asyncio.create_task(signals.requested.wait()),
        asyncio.create_task(printer.finished.wait()),
    ]
    if status_on:
        helpers.append(asyncio.create_task(run_status(worker, StatusLine(listener.stats))))
    try:
        await asyncio.wait([listen_task, *helpers[:2]], return_when=asyncio.FIRST_COMPLETED)
        if not listen_task.done():
            closer = asyncio.create_task(listener.close())
            await asyncio.wait([listen_task], timeout=_SHUTDOWN_BUDGET)
            if not listen_task.done():
                logger.warning("the listener did not stop in time; cancelling it")
                listen_task.cancel()
            await asyncio.gather(closer, return_exceptions=True)
        await asyncio.wait([listen_task])
        if not listen_task.cancelled():
            listen_task.result()  # raises AuthenticationError, ConnectionFailedError, ...
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if not listen_task.done():
            listen_task.cancel()
            await asyncio.gather(listen_task, return_exceptions=True)
        if own_signals:
            signals.remove()


@click.command(
    "listen",
    short_help="Print the events stream (JSON lines or pretty).",
    epilog="\b\n" + RESULT_LEGEND,
)
@connection_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "pretty"]),
    default=None,
    show_default="pretty on a terminal, else jsonl",
    envvar="NEUROIO_LISTEN_FORMAT",
    show_envvar=True,
    help="One JSON object per event per line, or one readable coloured line per event.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="NEUROIO_LISTEN_OUTPUT",
    show_envvar=True,
    help="Append the events as JSON lines to this file instead of stdout "
    "(with an explicit --format, stdout gets them too).",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="NEUROIO_LISTEN_RECORD",
    show_envvar=True,
    help="Append every frame received, with its receive time, to this file "
    "(replay it with: emulate --replay FILE).",
)
@click.option(
    "--include-control",
    is_flag=True,
    envvar="NEUROIO_LISTEN_INCLUDE_CONTROL",
    show_envvar=True,
    help="Also print the AUTH answer, PONGs and error messages.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    envvar="NEUROIO_LISTEN_COUNT",
    show_envvar=True,
    help="Exit (with status 0) after this many events.",
)
@click.option(
    "--status/--no-status",
    default=True,
    show_default="on when stderr is a terminal",
    envvar="NEUROIO_LISTEN_STATUS",
    show_envvar=True,
    help="Live status line on stderr: state, events, events/s, reconnects, PONG round-trip.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    show_default="no metrics server",
    envvar="NEUROIO_LISTEN_METRICS_PORT",
    show_envvar=True,
    help="Serve Prometheus /metrics and /healthz on this port (0: a free port, logged); "
    "pip install 'neuroio-events[metrics]'.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="NEUROIO_LISTEN_METRICS_HOST",
    show_envvar=True,
    help="Address the metrics server listens on.",
)
@listener_options
@loop_option
@logging_options
def command(
    conn: ConnectionSettings,
    fmt: str | None,
    output: Path | None,
    record: Path | None,
    include_control: bool,
    count: int | None,
    status: bool,
    metrics_port: int | None,
    metrics_host: str,
    listener: ListenerSettings,
    use_uvloop: bool | None,
    log: LogSettings,
) -> None:
    """Listen to the events stream and print each event on stdout.

    stdout gets one line per event and nothing else; logs and the status line go to stderr.
    Stops with status 0 on Ctrl-C or SIGTERM (finishing the line being written) or after
    --count events; 3 if the token is rejected, 4 if --max-retries is exhausted.

    \b
    Examples:
      neuroio-events listen --token-file ~/.neuroio-token | jq .data.result
      neuroio-events listen --output events.jsonl --record incident.rec
    """
    log.configure()
    token = conn.api_token()
    ssl_context = conn.ssl_context()
    if fmt is None:
        fmt = "pretty" if os.isatty(1) else "jsonl"
        if output is not None:
            fmt = None  # the file gets the events instead of stdout
    settings = StreamSettings(
        fmt=fmt,
        output=output,
        record=record,
        include_control=include_control,
        count=count,
        status=status,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    run(
        lambda: stream(conn.url, token, settings, listener, ssl_context=ssl_context),
        log=log,
        use_uvloop=use_uvloop,
    )
