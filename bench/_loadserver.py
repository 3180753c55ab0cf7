"""Load server for the throughput benchmark: a NeuroIO events endpoint built for speed.

It speaks just enough WebSocket (RFC 6455, no extensions) and just enough of the NeuroIO
protocol (``docs/protocol.md``: AUTH -> ``{"auth": "ok"}``, PING -> ``{"PING": "PONG"}``)
to serve any client, and it sends events as pre-encoded frames: a block of templates is built
once, and each block sent only has its entry ids rewritten in place (ids keep increasing, so a
client that watches for gaps or duplicates sees a clean stream). That leaves the server with a
fraction of a microsecond of work per event, far less than any client spends receiving one.

Each connection is configured by its URL query:

``n``
    events to send after ``{"auth": "ok"}`` (default 100000).
``entries``
    ``clean`` (only the documented fields) or ``undocumented`` (the same entries with ten
    fields more that ``docs/protocol.md`` does not list: nested objects, lists and nulls, as
    real entries carry groups, tags and ids of related objects). The default is ``clean``,
    or ``undocumented`` when the server was started with ``--undocumented``.
``mode``
    ``blast`` (default) sends as fast as the socket takes them; ``rate`` sends ``rate`` events
    per second, each entry carrying ``"sent_at": time.time()`` taken just before the write.
``end=1``
    after the events, send :data:`END_FRAME` so a socket-level reader knows it has all of them.
``tag``
    a name echoed in the report line.
``stall``
    seconds without socket progress after which the server reports ``stalled`` (a client that
    stopped reading); it keeps trying to send afterwards.

Run as a script it prints ``{"port": N}`` then one JSON line per connection event
(``done``, ``stalled``, ``closed``) on stdout, and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "END_FRAME",
    "EntrySource",
    "LoadServer",
    "client_handshake",
    "encode_client_frame",
    "encode_server_frame",
    "ENTRY_KINDS",
    "make_entry_source",
    "serve",
    "with_undocumented",
]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ID_BASE = 1_000_000_000  # ten digits from here to 9_999_999_999: ids patch in place
_ID_WIDTH = 10
_BLOCK = 128  # frames per write: ~100 KB, large enough that the server never leads the cost

END_PAYLOAD = b'{"bench":"end"}'
AUTH_OK = b'{"auth":"ok"}'
PONG = b'{"PING":"PONG"}'


def encode_server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, final WebSocket frame (server to client)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def encode_client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked, final WebSocket frame (client to server)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + _unmask(payload, mask)


END_FRAME = encode_server_frame(END_PAYLOAD)


def _unmask(data: bytes, mask: bytes) -> bytes:
    # Client frames here are a few dozen bytes (AUTH, PING, close); an int XOR is plenty.
    if not data:
        return data
    key = (mask * (len(data) // 4 + 1))[: len(data)]
    value = int.from_bytes(data, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(len(data), "big")


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


# ---------------------------------------------------------------------------- entries

EntrySource = Callable[[int], dict[str, Any]]
"""Returns the ``i``-th entry as JSON-ready data (the server replaces its ``id``)."""


ENTRY_KINDS = ("clean", "undocumented")
"""What the ``entries`` query parameter can ask for."""


def make_entry_source(seed: int = 1, *, undocumented: bool = False) -> EntrySource:
    """Realistic entries from the project's own generator, the same for the same seed.

    With ``undocumented``, each also carries ten fields outside the documented set
    (:func:`with_undocumented`).
    """
    from neuroio.emulator import EntryFactory

    factory = EntryFactory(seed, start_time=datetime(2024, 5, 17, 8, 0, tzinfo=timezone.utc))
    if undocumented:
        return lambda i: with_undocumented(factory.make(), i)
    return lambda _i: factory.make()


_GROUPS = ((3, "VIP"), (8, "Staff"), (11, "Loyalty"), (14, "Watch list"))
_TAGS = ("returning", "morning", "weekday", "queue", "promo")


def with_undocumented(entry: dict[str, Any], i: int) -> dict[str, Any]:
    """``entry`` with ten fields :class:`neuroio.Entry` does not know, after its own.

    Nested objects, lists, nulls, numbers and strings, varying with ``i``: what an entry of a
    newer platform version, or of an account with groups and integrations, carries. They come
    last, after every documented field, as a serializer that adds fields appends them.
    """
    groups = [{"id": gid, "name": name} for gid, name in _GROUPS[: 1 + i % 3]]
    return {
        **entry,
        "groups": groups,
        "tags": list(_TAGS[i % 3 : i % 3 + 2]),
        "person_id": None if i % 4 else 90_000 + i,
        "zone": {"id": 12 + i % 3, "name": "North aisle", "floor": 1 + i % 2},
        "external_ref": f"crm-{48_213 + i}",
        "visit_count": 1 + i % 17,
        "note": None,
        "attributes": {"glasses": i % 2 == 0, "mask": False, "beard": None},
        "related_entries": [880_000 + i, 880_004 + i],
        "quality": {"blur": round(0.05 + (i % 9) / 50, 2), "pose": {"yaw": -3.2, "roll": None}},
    }


class _Block:
    """``_BLOCK`` pre-encoded event frames and where their ids sit, patched per send."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        frames: list[bytes] = []
        self.id_offsets: list[tuple[int, int]] = []
        self.ends: list[int] = []
        total = 0
        for k, entry in enumerate(entries):
            placeholder = _ID_BASE + k
            entry = {**entry, "id": placeholder}
            payload = json.dumps(
                {"id": placeholder, "data": entry}, separators=(",", ":"), ensure_ascii=False
            ).encode()
            frame = encode_server_frame(payload)
            header = len(frame) - len(payload)
            needle = b'"id":%d' % placeholder
            first = payload.index(needle)
            second = payload.index(needle, first + 1)
            shift = total + header + len(b'"id":')
            self.id_offsets.append((shift + first, shift + second))
            frames.append(frame)
            total += len(frame)
            self.ends.append(total)
        self.template = b"".join(frames)
        self.mean_frame = sum(len(f) for f in frames) / len(frames)

    def render(self, first_id: int, count: int) -> bytes:
        """The first ``count`` frames, numbered ``first_id``, ``first_id + 1``, ..."""
        buf = bytearray(self.template[: self.ends[count - 1]])
        offsets = self.id_offsets
        for k in range(count):
            digits = b"%010d" % (first_id + k)
            a, b = offsets[k]
            buf[a : a + _ID_WIDTH] = digits
            buf[b : b + _ID_WIDTH] = digits
        return bytes(buf)


# ---------------------------------------------------------------------------- server


class LoadServer:
    """The load server's state: pre-encoded blocks, the id counter, open connections.

    Args:
        source: where entries come from.
        report: called with each connection event (``done``, ``stalled``, ``closed``).
    """

    def __init__(
        self,
        source: EntrySource,
        report: Callable[[dict[str, Any]], None],
        *,
        undocumented: EntrySource | None = None,
        default_kind: str = "clean",
    ) -> None:
        self._report = report
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.server: asyncio.Server | None = None
        self._pools: dict[str, list[dict[str, Any]]] = {}
        self._kinds: dict[str, list[_Block]] = {}
        sources = {"clean": source}
        if undocumented is not None:
            sources["undocumented"] = undocumented
        for kind, make in sources.items():
            pool = [make(i) for i in range(_BLOCK * 4)]
            self._pools[kind] = pool
            self._kinds[kind] = [_Block(pool[i : i + _BLOCK]) for i in range(0, len(pool), _BLOCK)]
        if default_kind not in self._kinds:
            raise ValueError(f"no {default_kind!r} entries")
        self.default_kind = default_kind
        self._next_id = _ID_BASE
        self.frame_bytes_by_kind = {
            kind: sum(b.mean_frame for b in blocks) / len(blocks)
            for kind, blocks in self._kinds.items()
        }
        self.frame_bytes = self.frame_bytes_by_kind[default_kind]

    def _take_ids(self, count: int) -> int:
        first = self._next_id
        self._next_id += count
        return first

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self.server = await asyncio.start_server(self._handle, host, port, backlog=64)
        port_: int = self.server.sockets[0].getsockname()[1]
        return port_

    async def aclose(self) -> None:
        """Stop listening and end every connection."""
        self._closing = True
        if self.server is not None:
            self.server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            # Shutting down: end quietly instead of leaving a cancelled connection task for
            # the stream machinery to complain about.
            if not self._closing:
                raise
        finally:
            self._connections.discard(task)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            params = await self._handshake(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            return
        authed = asyncio.Event()
        control = asyncio.create_task(self._read_client(reader, writer, authed))
        auth_wait = asyncio.create_task(authed.wait())
        tasks = [control, auth_wait]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if authed.is_set():
                tasks.append(asyncio.create_task(self._send(writer, params)))
                await asyncio.wait((control, tasks[-1]), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._report({"tag": params.get("tag", ""), "event": "closed"})

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, str]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key")
        if key is None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            raise ValueError("not a websocket upgrade")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept_key(key).encode() + b"\r\n\r\n"
        )
        query = parse_qs(urlsplit(target).query)
        return {name: values[-1] for name, values in query.items()}

    async def _read_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authed: asyncio.Event
    ) -> None:
        """Answer AUTH, PING, WebSocket pings and close; returns when the client goes."""
        while True:
            try:
                first, second = await reader.readexactly(2)
                n = second & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await reader.readexactly(8))
                mask = await reader.readexactly(4) if second & 0x80 else b""
                payload = await reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if mask:
                payload = _unmask(payload, mask)
            opcode = first & 0x0F
            if opcode == 0x8:  # close: echo it and stop
                with contextlib.suppress(ConnectionError):
                    writer.write(encode_server_frame(payload[:2], 0x8))
                return
            if opcode == 0x9:
                writer.write(encode_server_frame(payload, 0xA))
                continue
            if opcode != 0x1:
                continue
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            action = message.get("action") if isinstance(message, dict) else None
            if action == "AUTH":
                writer.write(encode_server_frame(AUTH_OK))
                authed.set()
            elif action == "PING":
                writer.write(encode_server_frame(PONG))

    async def _send(self, writer: asyncio.StreamWriter, params: dict[str, str]) -> None:
        total = int(params.get("n", "100000"))
        tag = params.get("tag", "")
        stall = float(params["stall"]) if "stall" in params else None
        kind = params.get("entries", self.default_kind)
        if kind not in self._kinds:
            self._report({"tag": tag, "event": "error", "error": f"no {kind!r} entries"})
            return
        start = time.perf_counter()
        if params.get("mode", "blast") == "rate":
            rate = float(params.get("rate", "2000"))
            sent = await self._send_paced(writer, total, rate, self._pools[kind])
        else:
            sent = await self._send_blast(writer, total, tag, stall, self._kinds[kind])
        if params.get("end") == "1":
            writer.write(END_FRAME)
        await writer.drain()
        seconds = time.perf_counter() - start
        self._report({"tag": tag, "event": "done", "sent": sent, "seconds": seconds})
        # Stay connected (answering PINGs) until the client leaves.
        await asyncio.Event().wait()

    async def _send_blast(
        self,
        writer: asyncio.StreamWriter,
        total: int,
        tag: str,
        stall: float | None,
        blocks: list[_Block],
    ) -> int:
        sent = 0
        stalled = False
        while sent < total:
            count = min(_BLOCK, total - sent)
            block = blocks[(sent // _BLOCK) % len(blocks)]
            writer.write(block.render(self._take_ids(count), count))
            sent += count
            if stall is None or stalled:
                await writer.drain()
                continue
            try:
                await asyncio.wait_for(writer.drain(), stall)
            except asyncio.TimeoutError:
                stalled = True
                self._report({"tag": tag, "event": "stalled", "sent": sent})
                await writer.drain()
        return sent

    async def _send_paced(
        self, writer: asyncio.StreamWriter, total: int, rate: float, pool: list[dict[str, Any]]
    ) -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        while sent < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            while sent < due:
                event_id = self._take_ids(1)
                entry = {**pool[sent % len(pool)], "id": event_id, "sent_at": time.time()}
                frame = encode_server_frame(dumps({"id": event_id, "data": entry}).encode())
                writer.write(frame)
                sent += 1
            await writer.drain()
            # Sleep until the next event is due (the loop's timer resolution is ~1 ms).
            await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
        return sent


def client_handshake(host: str, port: int, path: str) -> socket.socket:
    """A connected socket with the WebSocket upgrade done, with no library.

    For socket-level readers: the caller hands the socket to its own protocol.
    """
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    # Byte by byte: the server sends nothing after the 101 until AUTH, but never over-read.
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("connection closed during the websocket upgrade")
        head += byte
    if b" 101 " not in head.split(b"\r\n", 1)[0] or _accept_key(key).encode() not in head:
        raise ConnectionError(f"websocket upgrade refused: {head[:80]!r}")
    sock.setblocking(False)
    return sock


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int = 1,
    report: Callable[[dict[str, Any]], None] | None = None,
    undocumented: bool = False,
) -> tuple[LoadServer, int]:
    """Start a load server; returns it and the port it listens on.

    It serves both kinds of entries (the ``entries`` query parameter); ``undocumented`` makes
    the entries with undocumented fields the default.
    """
    server = LoadServer(
        make_entry_source(seed),
        report or (lambda _: None),
        undocumented=make_entry_source(seed, undocumented=True),
        default_kind="undocumented" if undocumented else "clean",
    )
    return server, await server.start(host, port)


async def _main(args: argparse.Namespace) -> None:
    def report(line: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    server, port = await serve(
        args.host, args.port, seed=args.seed, report=report, undocumented=args.undocumented
    )
    report(
        {
            "port": port,
            "frame_bytes": server.frame_bytes,
            "frame_bytes_by_kind": server.frame_bytes_by_kind,
        }
    )
    # The harness owns this process: it ends when the harness closes our stdin.
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def watch_stdin() -> None:
        while await stdin.read(4096):
            pass
        stdin_closed.set()

    watcher = asyncio.create_task(watch_stdin())
    try:
        await stdin_closed.wait()
    finally:
        await server.aclose()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def main() -> None:
    """Command line: ``python bench/_loadserver.py [--port 0]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--undocumented",
        action="store_true",
        help="send entries with ten undocumented fields unless a connection asks otherwise",
    )
    parser.add_argument("--asyncio", action="store_true", help="do not use uvloop")
    args = parser.parse_args()
    runner: Any = asyncio.run
    if not args.asyncio:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    if not sys.stdin.isatty():
        # Driven through a pipe: Ctrl-C reaches the whole process group, but the server ends
        # cleanly when its driver exits and the pipe closes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        runner(_main(args))


# ---------------------------------------------------------------------------- parent side


class LoadServerProcess:
    """This server run as a child process by a benchmark (``bench/throughput.py``,
    ``bench/bridge.py``); reports its connection events keyed by each connection's tag."""

    def __init__(self, *, undocumented: bool = False) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.frame_bytes = 0.0
        self.frame_bytes_by_kind: dict[str, float] = {}
        self._undocumented = undocumented
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._pump: asyncio.Task[None] | None = None
        self._tags = itertools.count(1)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            *(["--undocumented"] if self._undocumented else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.proc.stdout is not None
        hello = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))
        self.port = hello["port"]
        self.frame_bytes = hello["frame_bytes"]
        self.frame_bytes_by_kind = hello.get("frame_bytes_by_kind", {})
        self._pump = asyncio.create_task(self._read_reports())

    async def _read_reports(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            report = json.loads(line)
            self.queue(report.get("tag", "")).put_nowait(report)

    def queue(self, tag: str) -> asyncio.Queue[dict[str, Any]]:
        return self._queues.setdefault(tag, asyncio.Queue())

    def url(self, **params: Any) -> tuple[str, str]:
        """A fresh connection URL and its tag."""
        tag = f"c{next(self._tags)}"
        query = "&".join(f"{k}={v}" for k, v in {**params, "tag": tag}.items())
        return f"ws://127.0.0.1:{self.port}/?{query}", tag

    async def wait_for(self, tag: str, events: set[str], timeout: float) -> dict[str, Any]:
        queue = self.queue(tag)
        while True:
            report = await asyncio.wait_for(queue.get(), timeout)
            if report["event"] in events:
                return report

    async def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
