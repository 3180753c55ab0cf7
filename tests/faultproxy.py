"""A fault-injecting TCP proxy for tests: sits between a client and a server on loopback.

:class:`FaultProxy` listens on ``127.0.0.1`` (port 0) and opens one connection to the target
for every client connection. Bytes are forwarded as they come, unless a fault is in effect:

``latency(s)``
    every chunk is held for ``s`` seconds before it is written; order is kept and reading
    goes on meanwhile, so latency does not become a bandwidth limit.
``throttle(bytes_per_s)``
    writes are paced to that many bytes per second, in each direction.
``split(max_segment)``
    data is written in segments of at most ``max_segment`` bytes with ``TCP_NODELAY``, each
    one drained and followed by a turn of the event loop, so a peer in the same loop reads
    frames in pieces.
``blackhole(direction)``
    the connections open now stay open but the bytes (and a FIN) going ``"up"`` (client to
    server), ``"down"`` or ``"both"`` ways are dropped: a half-open connection, as behind a
    NAT entry that expired. ``restore()`` lets bytes through again and passes on a close
    that was held back, as TCP's retransmission of a FIN would.
``cut()``
    every open connection is reset on both sides (``SO_LINGER`` 0, then abort: an RST).
``cut_mid_frame()``
    the next server-to-client chunk is forwarded only in part, then the connection is cut.

Faults other than ``blackhole`` (which, by default, hits only the connections open when it is
called) apply to every connection, open or later. Counters: :attr:`connections`,
:attr:`bytes_up`, :attr:`bytes_down` (forwarded), :attr:`writes_up`, :attr:`writes_down`,
:attr:`dropped_up`, :attr:`dropped_down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Literal

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["both", "up", "down"]

_CHUNK = 65536
# Chunks read but not yet written, per direction. Small, so TCP backpressure still reaches the
# sender when the proxy writes slowly (latency, throttle, split).
_QUEUE_CHUNKS = 16
# A throttled write is cut into slices that take about this long at the configured rate.
_THROTTLE_SLICE_S = 0.01


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: SO_LINGER with a zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pipe:
    """One direction of one proxied connection."""

    def __init__(
        self,
        proxy: FaultProxy,
        link: _Link,
        name: Literal["up", "down"],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.link = link
        self.name = name
        self.reader = reader
        self.writer = writer
        self.blackholed = False
        # Chunks waiting to be written, with the loop time they arrived; None marks the end.
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        self.held_eof = False  # the sender closed while this direction was blackholed
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        self.next_send = 0.0  # throttle pacing

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await self.reader.read(_CHUNK)
                if not chunk:
                    break
                await self.queue.put((loop.time(), chunk))
        except (ConnectionError, OSError):
            # The sender reset the connection: reset the other side too, once the path lets
            # anything through.
            await self.unblocked.wait()
            self.link.reset()
            return
        await self.queue.put(None)

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    await self._eof()
                    return
                arrived, chunk = item
                delay = arrived + self.proxy.latency_s - loop.time()
                if delay > 0:
                    # This is the fault itself (the chunk is held back), not a test's wait.
                    await asyncio.sleep(delay)
                if self.blackholed:
                    self._count_dropped(len(chunk))
                    continue
                if not await self._send(chunk):
                    return
        except (ConnectionError, OSError):
            self.link.reset()

    async def _eof(self) -> None:
        if self.blackholed:
            self.held_eof = True
            await self.unblocked.wait()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await self.writer.drain()
        self.link.half_closed(self)

    async def _send(self, chunk: bytes) -> bool:
        """Write one chunk under the current faults; ``False`` once this pipe is cut."""
        proxy = self.proxy
        if self.name == "down" and proxy._cut_next_down and len(chunk) >= 2:
            proxy._cut_next_down = False
            await self._cut_after(chunk[: len(chunk) // 2], fin=proxy._cut_with_fin)
            proxy._mid_frame_cuts += 1
            proxy._notify()
            return False
        view = memoryview(chunk)
        while view:
            size = len(view)
            if proxy.segment is not None:
                size = min(size, proxy.segment)
            rate = proxy.rate_bps
            if rate is not None:
                size = min(size, max(1, int(rate * _THROTTLE_SLICE_S)))
            piece = bytes(view[:size])
            view = view[size:]
            if rate is not None:
                loop = asyncio.get_running_loop()
                now = loop.time()
                if self.next_send > now:
                    await asyncio.sleep(self.next_send - now)
                    now = loop.time()
                self.next_send = max(self.next_send, now) + size / rate
            if self.blackholed:
                self._count_dropped(size)
                continue
            self.writer.write(piece)
            self._count(size)
            await self.writer.drain()
            if proxy.segment is not None:
                # One turn of the loop lets a reader in this process take this segment alone.
                await asyncio.sleep(0)
        return True

    async def _cut_after(self, part: bytes, *, fin: bool) -> None:
        self.writer.write(part)
        self._count(len(part))
        await self.writer.drain()
        if fin:
            # The fragment then a FIN: the client reads the fragment, then the end of the
            # stream. The target side is reset; the link ends when the client closes too.
            self.writer.write_eof()
            _reset(self.link.server_writer)
            self.link.half_closed(self)
            return
        # Two turns of the loop: a reader in this process takes the fragment before the RST
        # (the loop runs this task's wake-up before the socket's read callback).
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.link.reset()

    def _count(self, n: int) -> None:
        if self.name == "up":
            self.proxy.bytes_up += n
            self.proxy.writes_up += 1
        else:
            self.proxy.bytes_down += n
            self.proxy.writes_down += 1
        self.proxy._notify()

    def _count_dropped(self, n: int) -> None:
        if self.name == "up":
            self.proxy.dropped_up += n
        else:
            self.proxy.dropped_down += n
        self.proxy._notify()

    def set_blackhole(self, on: bool) -> None:
        self.blackholed = on
        if on:
            self.unblocked.clear()
        else:
            self.unblocked.set()


class _Link:
    """One proxied connection: a client socket, a target socket and the two pipes."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_writer = client[1]
        self.server_writer = server[1]
        self.up = _Pipe(proxy, self, "up", client[0], server[1])
        self.down = _Pipe(proxy, self, "down", server[0], client[1])
        self._eofs = 0
        self.closed = asyncio.Event()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.up.read_loop()),
            asyncio.create_task(self.up.write_loop()),
            asyncio.create_task(self.down.read_loop()),
            asyncio.create_task(self.down.write_loop()),
        ]
        try:
            await self.closed.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._abort_both()
            self.proxy._notify()

    def reset(self) -> None:
        """RST both sides and end the link."""
        for writer in (self.client_writer, self.server_writer):
            _reset(writer)
        self.closed.set()

    def half_closed(self, pipe: _Pipe) -> None:
        self._eofs += 1
        if self._eofs == 2:
            self.closed.set()

    def _abort_both(self) -> None:
        for writer in (self.client_writer, self.server_writer):
            if not writer.transport.is_closing():
                writer.transport.abort()

    def pipes(self, direction: Direction) -> list[_Pipe]:
        if direction == "both":
            return [self.up, self.down]
        return [self.up if direction == "up" else self.down]


class FaultProxy:
    """A TCP proxy on ``127.0.0.1`` that injects network faults (see the module docstring).

    Args:
        target_host: where to forward connections.
        target_port: the target's port.

    Use as ``async with FaultProxy(host, port) as proxy:``; connect clients to
    :meth:`url_for` or :attr:`port`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.latency_s = 0.0
        self.rate_bps: float | None = None
        self.segment: int | None = None
        self.connections = 0
        """Client connections accepted so far."""
        self.bytes_up = 0
        """Bytes forwarded from clients to the target."""
        self.bytes_down = 0
        """Bytes forwarded from the target to clients."""
        self.writes_up = 0
        """Writes (TCP segments when :meth:`split` is in effect) towards the target."""
        self.writes_down = 0
        """Writes towards clients."""
        self.dropped_up = 0
        """Bytes dropped by a blackhole on their way to the target."""
        self.dropped_down = 0
        """Bytes dropped by a blackhole on their way to clients."""
        self._blackhole_new: Direction | None = None
        self._cut_next_down = False
        self._cut_with_fin = False
        self._mid_frame_cuts = 0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting, reset every open connection and end every task."""
        server = self._server
        self._server = None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.reset()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url_for(self, path: str = "/") -> str:
        """``ws://127.0.0.1:PORT/`` (with ``path``) through the proxy."""
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def open_connections(self) -> int:
        """Proxied connections open now."""
        return len(self._links)

    # -- faults ----------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Hold every chunk, each way, ``seconds`` before writing it (0 to stop)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self.latency_s = seconds

    def throttle(self, bytes_per_s: float | None) -> None:
        """Pace writes to ``bytes_per_s`` each way; ``None`` to stop."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("throttle rate must be positive or None")
        self.rate_bps = bytes_per_s

    def split(self, max_segment: int | None = 1) -> None:
        """Write in segments of at most ``max_segment`` bytes; ``None`` to stop."""
        if max_segment is not None and max_segment < 1:
            raise ValueError("max_segment must be at least 1 or None")
        self.segment = max_segment
        for link in self._links:
            for writer in (link.client_writer, link.server_writer):
                self._nodelay(writer)

    def blackhole(self, direction: Direction = "both", *, new_connections: bool = False) -> None:
        """Drop the bytes going ``direction`` on the open connections, keeping them open.

        Args:
            direction: ``"up"`` (client to target), ``"down"``, or ``"both"``.
            new_connections: also blackhole connections accepted from now on (a network
                outage rather than one broken path).
        """
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be 'both', 'up' or 'down', got {direction!r}")
        for link in self._links:
            for pipe in link.pipes(direction):
                pipe.set_blackhole(True)
        self._blackhole_new = direction if new_connections else None

    def restore(self) -> None:
        """Undo every fault: bytes flow again, unthrottled, unsplit, with no latency."""
        self.latency_s = 0.0
        self.rate_bps = None
        self.segment = None
        self._blackhole_new = None
        self._cut_next_down = False
        for link in self._links:
            for pipe in link.pipes("both"):
                pipe.set_blackhole(False)

    def cut(self) -> int:
        """Reset every open connection on both sides (RST); returns how many."""
        links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    def cut_mid_frame(self, *, fin: bool = False) -> None:
        """Forward only the first half of the next server-to-client chunk, then cut.

        Args:
            fin: end the client side with a FIN after the fragment instead of an RST (the
                client then surely reads the fragment before the end of the stream).
        """
        self._cut_with_fin = fin
        self._cut_next_down = True

    @property
    def mid_frame_cuts(self) -> int:
        """How many :meth:`cut_mid_frame` cuts have happened."""
        return self._mid_frame_cuts

    # -- waiting ---------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, checked after each change of the counters.

        Raises:
            TimeoutError: still false after ``timeout`` seconds.
        """

        async def loop() -> None:
            while not predicate():
                changed = self._changed
                await changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"proxy condition still false after {timeout} s") from None

    def _notify(self) -> None:
        changed = self._changed
        self._changed = asyncio.Event()
        changed.set()

    # -- connections -----------------------------------------------------------------------

    @staticmethod
    def _nodelay(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback: asyncio logs an error for a cancelled client_connected_cb task,
        # so the connection runs in a task of our own that aclose() may cancel.
        self.connections += 1
        self._notify()
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)
            return
        except asyncio.CancelledError:
            _reset(writer)
            raise
        for w in (writer, server[1]):
            self._nodelay(w)
        link = _Link(self, (reader, writer), server)
        if self._blackhole_new is not None:
            for pipe in link.pipes(self._blackhole_new):
                pipe.set_blackhole(True)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            self._notify()
