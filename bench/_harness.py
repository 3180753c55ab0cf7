"""What the many-streams and fleet benchmarks share: the emulator and bridges as CLI
subprocesses, their CPU and memory from ``/proc``, the emulator's connection log read as it
grows, which process holds which connection, and the bridges' ``/metrics``.

Linux only (``/proc``). Every wait is bounded; a process that dies while waited on is an
error naming its last line of stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from neuroio.testing import read_connection_log

__all__ = [
    "ConnLog",
    "EmulatorProc",
    "Proc",
    "bridge_config",
    "cpu_seconds",
    "free_port",
    "metric_sum",
    "rest_ids",
    "say",
    "scrape",
    "socket_ports",
    "vm_hwm_mb",
    "wait_for",
    "write_token_files",
]

ROOT = Path(__file__).resolve().parent.parent
_TICK = 0.05  # polling interval of files and /proc, s
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, s (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: the fields are counted after its ")".
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of process ``pid`` so far (``VmHWM``), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def socket_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process ``pid`` has open (IPv4 and IPv6)."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


async def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Sequence[Proc] = (),
) -> float:
    """Poll ``predicate`` until true; the seconds it took.

    Raises:
        RuntimeError: ``timeout`` passed, or one of ``alive`` exited.
    """
    t0 = time.monotonic()
    while not predicate():
        for proc in alive:
            proc.check()
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"waited {timeout:.0f} s for {what} in vain")
        await asyncio.sleep(_TICK)  # polling files and /proc: nothing to wait on
    return time.monotonic() - t0


class Proc:
    """One ``python -m neuroio ...`` child; stderr goes to ``log`` (read when it fails)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, stdout: bool = False) -> None:
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "neuroio",
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=self.env,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def last_error(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else "(no output)"

    def check(self) -> None:
        """Raise if the process has exited."""
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}: {self.last_error()}"
            )

    async def line(self, timeout: float = 30.0) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{self.name} printed nothing within {timeout:.0f} s") from None
        if not raw:
            await self.proc.wait()
            self.check()
        return raw.decode().strip()

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit (a SIGKILL after ``timeout``); the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode


class EmulatorProc(Proc):
    """``neuroio-events emulate --spaces N`` with a connection log, on a fixed port."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        *,
        port: int,
        spaces: int,
        rate: float,
        log: Path,
        extra: Sequence[str] = (),
    ) -> None:
        argv = ["emulate", "--port", str(port), "--spaces", str(spaces), "--rate", f"{rate:g}",
                "--connection-log", str(log), *extra]  # fmt: skip
        super().__init__(name, argv, tmp / f"{name}.log", dict(os.environ))
        self.port = port
        self.spaces = spaces
        self.connection_log = log
        self.url = ""
        self.api_url = ""
        self.tokens: list[str] = []

    async def start(self, *, stdout: bool = True) -> None:
        await super().start(stdout=True)
        self.url = await self.line()
        self.api_url = await self.line()
        self.tokens = [await self.line() for _ in range(self.spaces)]
        assert self.proc is not None and self.proc.stdout is not None
        # Nothing more comes on stdout; the pipe is left unread.


class ConnLog:
    """The emulator's connection log, read as it grows (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self.space_of: dict[int, int | None] = {}
        self.peer_of: dict[int, str | None] = {}
        self.live: dict[int, set[int]] = {}  # space -> conns open and authenticated
        self.last_auth: dict[int, float] = {}  # space -> wall time of its latest AUTH

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended; returns the new lines."""
        import json

        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *whole, self._partial = data.split(b"\n")
        new = [json.loads(raw) for raw in whole if raw.strip()]
        for item in new:
            self._apply(item)
        self.lines.extend(new)
        return new

    def _apply(self, item: dict[str, Any]) -> None:
        conn, event = item["conn"], item["event"]
        if event == "open":
            self.peer_of[conn] = item.get("peer")
            return
        space = self.space_of.pop(conn, None)
        if space is not None:
            self.live.get(space, set()).discard(conn)
        if event == "auth" and item["space"] is not None:
            self.space_of[conn] = item["space"]
            self.live.setdefault(item["space"], set()).add(conn)
            self.last_auth[item["space"]] = item["t"]

    def live_spaces(self) -> set[int]:
        """Spaces with an authenticated connection open now."""
        return {space for space, conns in self.live.items() if conns}

    def holders(self, ports_of: dict[str, set[int]]) -> dict[str, set[int]]:
        """For each process (name → its local ports), the spaces it holds a live connection
        of (the connection's peer port is one of its ports)."""
        out: dict[str, set[int]] = {name: set() for name in ports_of}
        for space, conns in self.live.items():
            for conn in conns:
                peer = self.peer_of.get(conn)
                port = int(peer.rsplit(":", 1)[1]) if peer else -1
                for name, ports in ports_of.items():
                    if port in ports:
                        out[name].add(space)
        return out

    def reread(self) -> list[dict[str, Any]]:
        """The whole file again, parsed by the package's reader."""
        return read_connection_log(self.path)


def write_token_files(directory: Path, tokens: Iterable[str]) -> list[Path]:
    """One file per token, readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, token in enumerate(tokens, start=1):
        path = directory / f"space-{k}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        paths.append(path)
    return paths


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def bridge_config(
    path: Path,
    *,
    to: Sequence[str],
    url: str,
    api_url: str,
    spool: Path,
    metrics_port: int,
    token_files: Sequence[Path],
    connect_rate: float = 20.0,
    extra: dict[str, dict[str, Any]] | None = None,
    extra_streams: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Write a bridge config file with one ``[[stream]]`` (named ``space-k``) per token file,
    then one per ``(name, token file)`` of ``extra_streams``."""
    tables: dict[str, dict[str, Any]] = {
        "connection": {"url": url, "api_url": api_url},
        "spool": {"path": str(spool)},
        "metrics": {"port": metrics_port, "host": "127.0.0.1"},
        "streams": {"connect_rate": connect_rate},
    }
    for table, values in (extra or {}).items():
        tables.setdefault(table, {}).update(values)
    out = [f"to = {_toml(list(to))}", ""]
    for table, values in tables.items():
        out.append(f"[{table}]")
        out.extend(f"{key} = {_toml(value)}" for key, value in values.items())
        out.append("")
    named = [(f"space-{k}", path) for k, path in enumerate(token_files, start=1)]
    for name, token_file in [*named, *extra_streams]:
        out += ["[[stream]]", f"name = {_toml(name)}", f"token_file = {_toml(str(token_file))}", ""]
    path.write_text("\n".join(out))
    return path


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


async def scrape(http: aiohttp.ClientSession, port: int) -> list[tuple[str, str, float]]:
    """The samples of a bridge's ``/metrics``: ``(name, labels text, value)``; ``[]`` when
    it does not answer."""
    try:
        async with http.get(
            f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
        ) as answer:
            text = await answer.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return []
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                samples.append((match[1], match[2] or "", float(match[3])))
    return samples


def metric_sum(samples: Sequence[tuple[str, str, float]], name: str) -> float | None:
    """The sum of every sample of ``name`` (any labels); ``None`` if there is none."""
    values = [value for n, _labels, value in samples if n == name]
    return sum(values) if values else None


async def rest_ids(http: aiohttp.ClientSession, api_url: str, token: str) -> list[int]:
    """Every id the emulator's REST API lists for ``token``'s space, oldest first."""
    ids: list[int] = []
    offset = 0
    headers = {"Authorization": f"Token {token}"}
    while True:
        params = {"limit": "1000", "offset": str(offset)}
        async with http.get(f"{api_url}/v1/entries/", headers=headers, params=params) as answer:
            answer.raise_for_status()
            page = await answer.json()
        results = page["results"] if isinstance(page, dict) else page
        ids.extend(entry["id"] for entry in results)
        offset += len(results)
        if not results or (isinstance(page, dict) and offset >= page["count"]):
            break
    return sorted(ids)
