"""``neuroio-events doctor``: check, step by step, what a listener needs to work.

URL, DNS, TCP connect, TLS, WebSocket handshake, AUTH, PING/PONG round-trip, the first
event, then the REST API gap recovery uses (``GET /v1/entries/?limit=1``: reachable, token
accepted, which shape of answer). Each step prints a verdict; the first failing step ends the
run and is named in the exit message, so "the platform is quiet" (no event: a warning) is told
apart from "my network or my token is broken" (a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import click
from rich.console import Console
from rich.text import Text

from .. import _redact
from .._config import check_api_url, check_events_url, default_api_url
from .._net import is_loopback
from .._protocol.frames import Kind, classify, encode_auth, encode_ping, parse_message
from .._protocol.session import AUTH_CLOSE_CODES
from .._recovery import EntriesAnswer
from .._words import plural
from ..exceptions import BackfillError, ConfigurationError
from ._options import (
    API_URL_DEFAULT,
    ConnectionSettings,
    LogSettings,
    Secret,
    check_api_url_option,
    connection_options,
    logging_options,
)
from ._run import EXIT_AUTH, EXIT_ERROR, EXIT_OK, CommandFailed, run

__all__ = ["Doctor", "StepResult", "command"]

logger = logging.getLogger("neuroio.cli")

PING_SAMPLES = 3
# Spacing between PING samples: a round-trip measured right after another says little, and a
# server that stops answering shortly after the AUTH is still caught.
_SAMPLE_GAP = 0.25
_EXPIRY_WARNING_DAYS = 14

_MARKS = {
    "ok": ("✓", "bold green"),
    "fail": ("✗", "bold red"),
    "warn": ("!", "bold yellow"),
    "skip": ("–", "dim"),
}


@dataclass(frozen=True)
class StepResult:
    """The verdict of one step: ``status`` is ``ok``, ``fail``, ``warn`` or ``skip``."""

    name: str
    status: str
    detail: str


class _StepFailed(Exception):
    def __init__(self, detail: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(detail)
        self.detail = detail
        self.exit_code = exit_code


class _Warn(Exception):
    """The step passed with a remark (e.g. a certificate close to expiry)."""


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        # asyncio's "Connect call failed (...)" hides the reason the system gave.
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _redact.redact(str(exc) or type(exc).__name__)


class Doctor:
    """Runs the checks against ``url`` and reports each verdict through ``report``.

    Args:
        url: the events service URL.
        token: the API token for the AUTH step.
        ssl_context: trust for ``wss://`` (``None``: the system's CA certificates).
        timeout: seconds allowed for each network step (and each PING sample).
        wait: seconds to wait for a first event; 0 skips the step.
        api_url: the REST API whose entries list is checked; ``None`` skips those steps.
        report: called with each :class:`StepResult` as soon as it is known.
    """

    def __init__(
        self,
        url: str,
        token: Secret,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 4.0,
        wait: float = 10.0,
        api_url: str | None = None,
        report: Callable[[StepResult], None] | None = None,
    ) -> None:
        self.url = url
        self.api_url = api_url
        self._token = token
        self._ssl = ssl_context
        self.timeout = timeout
        self.wait = wait
        self._report = report
        self.results: list[StepResult] = []
        self.failed: StepResult | None = None
        self.exit_code = EXIT_OK
        self._host = ""
        self._port = 0
        self._tls = False
        self._addresses: list[tuple[Any, ...]] = []
        self._first_event: tuple[int | None, float] | None = None
        self._authenticated_at = 0.0
        self._answer: EntriesAnswer | None = None

    async def run(self) -> int:
        """Run every step until one fails. Returns the exit code (0, 1, or 3 for AUTH)."""
        steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("URL", self._check_url),
            ("DNS", self._check_dns),
            ("TCP connect", self._check_tcp),
            ("TLS", self._check_tls),
        ]
        for name, check in steps:
            if not await self._step(name, check()):
                return self.exit_code
        # On Pythons whose SSL transports can outlive a closed session, aiohttp aborts them
        # when asked; without that a wss:// check could leave a socket open at exit.
        cleanup = bool(getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", False))
        connector = aiohttp.TCPConnector(enable_cleanup_closed=cleanup)
        async with aiohttp.ClientSession(connector=connector) as session:
            if not await self._socket_steps(session) or self.api_url is None:
                return self.exit_code
            rest: list[tuple[str, Callable[[], Awaitable[str]]]] = [
                ("REST API", lambda: self._check_rest(session)),
                ("REST token", self._check_rest_token),
                ("REST answer", self._check_rest_answer),
            ]
            for name, check in rest:
                if not await self._step(name, check()):
                    break
        return self.exit_code

    async def _socket_steps(self, session: aiohttp.ClientSession) -> bool:
        ws = await self._handshake(session)
        if ws is None:
            return False
        try:
            on_socket: list[tuple[str, Callable[[Any], Awaitable[str]]]] = [
                ("AUTH", self._check_auth),
                ("PING/PONG", self._check_ping),
                ("First event", self._check_event),
            ]
            for name, socket_check in on_socket:
                if not await self._step(name, socket_check(ws)):
                    return False
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self.timeout)
        return True

    async def _step(self, name: str, check: Awaitable[str]) -> bool:
        try:
            detail = await check
        except _StepFailed as exc:
            self._record(StepResult(name, "fail", exc.detail))
            self.exit_code = exc.exit_code
            return False
        except _Warn as exc:
            self._record(StepResult(name, "warn", str(exc)))
            return True
        status = "skip" if detail.startswith("skipped") else "ok"
        self._record(StepResult(name, status, detail))
        return True

    def _record(self, result: StepResult) -> None:
        self.results.append(result)
        if result.status == "fail":
            self.failed = result
        if self._report is not None:
            self._report(result)

    # ------------------------------------------------------------------ the steps

    async def _check_url(self) -> str:
        try:
            parts = check_events_url(self.url, "the URL")
        except ConfigurationError as exc:
            raise _StepFailed(str(exc)) from None
        assert parts.host is not None and parts.port is not None  # checked above
        self._host = parts.host
        self._tls = parts.scheme == "wss"
        self._port = parts.port
        detail = f"host {self._host}, port {self._port}, " + ("TLS" if self._tls else "no TLS")
        if not self._tls and not is_loopback(self._host):
            raise _Warn(f"{detail}: not encrypted, the token crosses the network in clear")
        return detail

    async def _check_dns(self) -> str:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM), self.timeout
            )
        except asyncio.TimeoutError:
            raise _StepFailed(
                f"no answer resolving {self._host} within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise _StepFailed(f"cannot resolve {self._host}: {_reason(exc)}") from None
        elapsed = time.perf_counter() - start
        self._addresses = [info[4] for info in infos]
        shown = list(dict.fromkeys(str(address[0]) for address in self._addresses))
        more = f" (+{len(shown) - 3} more)" if len(shown) > 3 else ""
        return f"{self._host} → {', '.join(shown[:3])}{more} in {_ms(elapsed)}"

    async def _check_tcp(self) -> str:
        errors: list[str] = []
        for address in self._addresses:
            host = str(address[0])
            shown = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
            start = time.perf_counter()
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, self._port), self.timeout
                )
            except asyncio.TimeoutError:
                errors.append(f"{shown}: no answer within {self.timeout:g} s")
                continue
            except OSError as exc:
                errors.append(f"{shown}: {_reason(exc)}")
                continue
            elapsed = time.perf_counter() - start
            await _drop(writer)
            return f"connected to {shown} in {_ms(elapsed)}"
        raise _StepFailed("cannot connect: " + "; ".join(errors or ["no address"]))

    async def _check_tls(self) -> str:
        if not self._tls:
            return "skipped: ws:// is not encrypted"
        context = self._ssl or ssl.create_default_context()
        start = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host, self._port, ssl=context, server_hostname=self._host
                ),
                self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise _StepFailed(
                f"the certificate was not accepted: {exc.verify_message or exc.reason}"
                " (a private CA? give it with --ca-file)"
            ) from None
        except ssl.SSLError as exc:
            raise _StepFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except asyncio.TimeoutError:
            raise _StepFailed(f"no TLS handshake within {self.timeout:g} s") from None
        except OSError as exc:
            raise _StepFailed(f"TLS connection failed: {_reason(exc)}") from None
        elapsed = time.perf_counter() - start
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
            version = ssl_object.version() if ssl_object is not None else "TLS"
        finally:
            await _drop(writer)
        subject = _name_of(cert.get("subject", ())) if cert else "?"
        issuer = _name_of(cert.get("issuer", ())) if cert else "?"
        days: float | None = None
        if cert and cert.get("notAfter"):
            days = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
        expiry = f"expires in {days:.0f} days" if days is not None else "expiry unknown"
        detail = (
            f"{version}, certificate verified: {subject} (issuer {issuer}), {expiry}, "
            f"handshake {_ms(elapsed)}"
        )
        if days is not None and days < _EXPIRY_WARNING_DAYS:
            raise _Warn(detail + ": renew it soon")
        return detail

    async def _handshake(self, session: aiohttp.ClientSession) -> Any:
        name = "WebSocket handshake"
        start = time.perf_counter()
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(
                    self.url,
                    autoping=True,
                    heartbeat=None,
                    ssl=self._ssl if self._ssl is not None else True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.timeout),
                ),
                self.timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            detail = f"the server answered HTTP {exc.status} instead of switching to WebSocket"
            self._fail(name, detail)
            return None
        except asyncio.TimeoutError:
            self._fail(name, f"no handshake within {self.timeout:g} s")
            return None
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(name, f"handshake failed: {_reason(exc)}")
            return None
        self._record(StepResult(name, "ok", f"upgraded in {_ms(time.perf_counter() - start)}"))
        return ws

    def _fail(self, name: str, detail: str, exit_code: int = EXIT_ERROR) -> None:
        self._record(StepResult(name, "fail", detail))
        self.exit_code = exit_code

    async def _check_auth(self, ws: Any) -> str:
        start = time.perf_counter()
        await ws.send_str(encode_auth(self._token.reveal()))
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                kind, data = await self._receive(ws, deadline, "the answer to AUTH")
            except _Deadline:
                raise _StepFailed(f"no answer to AUTH within {self.timeout:g} s") from None
            if kind is Kind.AUTH_OK:
                self._authenticated_at = time.monotonic()
                return f"token accepted in {_ms(time.perf_counter() - start)}"
            if kind in (Kind.ERROR, Kind.AUTH_REJECTED):
                raise _StepFailed(f"token rejected: {_error_text(data)}", EXIT_AUTH)

    async def _check_ping(self, ws: Any) -> str:
        samples: list[float] = []
        for n in range(1, PING_SAMPLES + 1):
            if n > 1:
                await self._idle(ws, time.monotonic() + _SAMPLE_GAP)
            start = time.perf_counter()
            await ws.send_str(encode_ping())
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    kind, _ = await self._receive(ws, deadline, "a PONG")
                except _Deadline:
                    raise _StepFailed(
                        f"no PONG within {self.timeout:g} s (sample {n} of {PING_SAMPLES}): "
                        "the server does not answer PING, so a listener would drop this "
                        "connection as dead"
                    ) from None
                if kind is Kind.PONG:
                    samples.append(time.perf_counter() - start)
                    break
        return (
            f"{len(samples)} samples: min {_ms(min(samples))} / "
            f"avg {_ms(statistics.fmean(samples))} / max {_ms(max(samples))}"
        )

    async def _check_event(self, ws: Any) -> str:
        if self._first_event is None and self.wait > 0:
            await self._idle(ws, time.monotonic() + self.wait, until_event=True)
        if self._first_event is not None:
            event_id, at = self._first_event
            after = max(at - self._authenticated_at, 0.0)
            return f"event #{event_id} received {after:.1f} s after AUTH"
        if self.wait <= 0:
            return "skipped (--wait 0)"
        raise _Warn(
            f"no event within {self.wait:g} s: the platform may be quiet (this is not an error)"
        )

    async def _check_rest(self, session: aiohttp.ClientSession) -> str:
        """``GET /v1/entries/?limit=1`` with the token: any answer but a 5xx or a redirect
        is the API reached (the token and the answer's shape are the next steps)."""
        assert self.api_url is not None
        try:
            check_api_url(self.api_url, "--api-url")
        except ConfigurationError as exc:
            raise _StepFailed(str(exc)) from None
        url = self.api_url.rstrip("/") + "/v1/entries/?limit=1"
        token = self._token.reveal()
        headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        start = time.perf_counter()
        try:
            async with session.get(
                url,
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                body = await response.read()
                answer = EntriesAnswer(response.status, response.headers, body)
                location = response.headers.get("Location")
        except asyncio.TimeoutError:
            raise _StepFailed(f"no answer from {url} within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _StepFailed(f"cannot reach {url}: {_reason(exc)}") from None
        elapsed = time.perf_counter() - start
        self._answer = answer
        status = answer.status
        if 300 <= status < 400:
            where = f" to {_redact.redact(location)}" if location else ""
            raise _StepFailed(
                f"GET {url} redirects{where} (HTTP {status}); gap recovery follows no "
                "redirect (the token goes to no other host): give that URL as --api-url"
            )
        if status >= 500:
            raise _StepFailed(f"GET {url} failed: {answer.describe(token)}")
        return f"GET {url}: HTTP {status} {answer.content_type} in {_ms(elapsed)}"

    async def _check_rest_token(self) -> str:
        answer = self._answer
        assert answer is not None
        token = self._token.reveal()
        if answer.status in (401, 403):
            raise _StepFailed(
                f"token rejected by the entries API: {answer.describe(token)}; gap recovery "
                "(--backfill, --since) cannot work with it",
                EXIT_AUTH,
            )
        if answer.status != 200:
            raise _StepFailed(
                f"the entries API answered {answer.describe(token)}: is --api-url the REST API?"
            )
        return "token accepted (HTTP 200)"

    async def _check_rest_answer(self) -> str:
        answer = self._answer
        assert answer is not None
        try:
            page = answer.page(self._token.reveal(), "gap recovery cannot read this answer")
        except BackfillError as exc:
            raise _StepFailed(str(exc)) from None
        first = page.results[0].get("id") if page.results else None
        entry = f", first entry id {first}" if first is not None else ", no entry yet"
        if page.count is None:
            detail = f"a bare JSON list (paged by limit/offset){entry}"
        else:
            detail = f"a page of 'results' with a count of {page.count}{entry}"
        if len(page.results) > 1:
            raise _Warn(
                f"{detail}: {len(page.results)} entries for limit=1, the API ignores limit "
                "(gap recovery reads more than it needs)"
            )
        return detail

    # ------------------------------------------------------------------ receiving

    async def _receive(self, ws: Any, deadline: float, what: str) -> tuple[Kind, Any]:
        """The next frame's kind and data, noting the first event.

        Raises:
            _Deadline: ``deadline`` passed first.
            _StepFailed: the connection ended (``what`` says what we were waiting for).
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        try:
            msg = await asyncio.wait_for(ws.receive(), remaining)
        except asyncio.TimeoutError:
            raise _Deadline from None
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            kind = classify(msg.data)
            if kind is Kind.EVENT and self._first_event is None:
                self._first_event = (_event_id(msg.data), time.monotonic())
            return kind, msg.data
        code = ws.close_code
        if code in AUTH_CLOSE_CODES and not self._authenticated_at:
            raise _StepFailed(
                f"the server closed the connection with code {code} before accepting "
                "the token: it refused the token",
                EXIT_AUTH,
            )
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise _StepFailed(
                f"the connection failed while waiting for {what}: {_reason(msg.data)}"
            )
        raise _StepFailed(
            f"the server closed the connection (code {code}) while waiting for {what}"
        )

    async def _idle(self, ws: Any, until: float, *, until_event: bool = False) -> None:
        """Keep reading (noting events) until ``until``, or until an event if asked."""
        while not (until_event and self._first_event is not None):
            try:
                await self._receive(ws, until, "an event" if until_event else "a PONG")
            except _Deadline:
                return


class _Deadline(Exception):
    pass


async def _drop(writer: asyncio.StreamWriter) -> None:
    """Close a probe connection at once: no TLS close_notify exchange to wait for."""
    writer.transport.abort()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _name_of(rdns: Any) -> str:
    fields: dict[str, str] = {}
    for rdn in rdns:
        for key, value in rdn:
            fields.setdefault(key, value)
    return fields.get("commonName") or fields.get("organizationName") or "?"


def _event_id(data: Any) -> int | None:
    try:
        message = parse_message(data)
    except Exception:
        return None
    event_id = getattr(message, "id", None)
    return event_id if isinstance(event_id, int) else None


def _error_text(data: Any) -> str:
    try:
        message = parse_message(data)
    except Exception:
        return "an unreadable error message"
    text = getattr(message, "message", None)
    return f"the server said {_redact.redact(text)!r}" if isinstance(text, str) else "an error"


def _printer(console: Console) -> Callable[[StepResult], None]:
    def report(result: StepResult) -> None:
        mark, style = _MARKS[result.status]
        line = Text()
        line.append(f"{mark} ", style=style)
        line.append(f"{result.name:<20}", style="bold")
        line.append(_redact.redact(result.detail))
        console.print(line)

    return report


async def diagnose(
    conn: ConnectionSettings,
    token: Secret,
    *,
    timeout: float,
    wait: float,
    console: Console,
    api_url: str | None = None,
) -> int:
    """Run the doctor with a printed verdict per step; returns the exit code."""
    also = f" and {api_url}" if api_url is not None else ""
    console.print(Text(f"Checking {conn.url}{also}", style="bold"))
    doctor = Doctor(
        conn.url,
        token,
        ssl_context=conn.ssl_context(),
        timeout=timeout,
        wait=wait,
        api_url=api_url,
        report=_printer(console),
    )
    code = await doctor.run()
    if doctor.failed is not None:
        raise CommandFailed(f"the '{doctor.failed.name}' step failed: {doctor.failed.detail}", code)
    warnings = sum(1 for r in doctor.results if r.status == "warn")
    suffix = f" ({plural(warnings, 'warning')})" if warnings else ""
    console.print(Text(f"All required checks passed{suffix}.", style="bold green"))
    return EXIT_OK


@click.command("doctor", short_help="Check the connection step by step, with a verdict each.")
@connection_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    envvar="NEUROIO_TIMEOUT",
    show_envvar=True,
    help="Seconds allowed for each network step and each PING sample.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    envvar="NEUROIO_DOCTOR_WAIT",
    show_envvar=True,
    help="Seconds to wait for a first event (none is a warning, not a failure); 0 skips it.",
)
@click.option(
    "--api-url",
    default=None,
    show_default=API_URL_DEFAULT,
    envvar="NEUROIO_API_URL",
    show_envvar=True,
    callback=check_api_url_option,
    help="The REST API gap recovery uses (--backfill, --since), checked after the socket.",
)
@click.option(
    "--rest/--no-rest",
    default=True,
    show_default=True,
    envvar="NEUROIO_DOCTOR_REST",
    show_envvar=True,
    help="Check the REST API: GET /v1/entries/?limit=1 with the token.",
)
@logging_options
def command(
    conn: ConnectionSettings,
    timeout: float,
    wait: float,
    api_url: str | None,
    rest: bool,
    log: LogSettings,
) -> None:
    """Check URL, DNS, TCP, TLS, WebSocket, AUTH, PING/PONG, the first event, then the
    REST API (reachable, token accepted, the shape of its answer).

    Exits 0 when every required step passes (no event within --wait is only a warning:
    the platform may be quiet), 3 when the token is rejected (by the socket or the REST
    API), 1 when another step fails; the failing step is named.
    """
    log.configure()
    token = conn.api_token()
    console = Console(highlight=False, soft_wrap=True, emoji=False, markup=False)
    checked = (api_url or default_api_url(conn.url)) if rest else None
    run(
        lambda: diagnose(conn, token, timeout=timeout, wait=wait, console=console, api_url=checked),
        log=log,
        use_uvloop=False,
    )
