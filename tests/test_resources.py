"""Resource bounds: memory under a flood with a stuck handler, descriptors and tasks across
many reconnects.

Memory is the resident set of this process (``/proc/self/statm``), so the flooding server
runs in a subprocess: its own buffers must not count against the listener.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import Callable

import pytest

from neuroio import EventListener, State
from neuroio.emulator import Emulator

from .faultproxy import FaultProxy
from .helpers import until

TOKEN = "resource-test-token"
MB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="needs Linux /proc for RSS and descriptors"
)


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    """File descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


async def settled(read: Callable[[], int], *, quiet: float = 0.3, timeout: float = 5.0) -> int:
    """A counter's value once it stopped moving for ``quiet`` seconds, or after ``timeout``.

    An observation window, not a synchronisation: the caller asserts on the value.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = read()
    while loop.time() < deadline:
        await asyncio.sleep(quiet)
        now = read()
        if now == last:
            break
        last = now
    return last


# The flooding server: an Emulator in its own process, steered by lines on stdin.
#   "warm N"  emit N events        "flood N"  emit N events
#   "sent"    print how many event frames it has written to the client so far
# It prints its port first and exits when stdin closes.
_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from neuroio.emulator import Emulator

    async def main():
        async with Emulator(tokens=[sys.argv[1]], seed=11, history_size=1000) as emu:
            print(emu.port, flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
            )
            while line := (await reader.readline()).decode().split():
                if line[0] in ("warm", "flood"):
                    await emu.burst(int(line[1]))
                    print("ok", flush=True)
                elif line[0] == "sent":
                    print(sum(c.events_sent for c in emu.clients), flush=True)

    asyncio.run(main())
    """
)


class FloodServer:
    """The subprocess above, with a line-oriented call per command."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls) -> FloodServer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _SERVER,
            TOKEN,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        return cls(proc, int(line))

    async def call(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), 20)).decode().strip()

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@pytest.mark.parametrize("mode", ["handler", "iterator"])
async def test_stuck_consumer_under_flood_keeps_memory_bounded(mode: str) -> None:
    """50 000 events at a handler stuck forever (or an ``async for`` that stopped iterating):
    the listener reads at most about max_queue frames, TCP pushes back on the server, and
    this process grows by far less than 30 MB."""
    max_queue = 1024
    warm = 3000
    flood = 50_000
    stuck = asyncio.Event()
    never = asyncio.Event()
    taken = 0

    async def handler(message: str | bytes) -> None:
        nonlocal taken
        if stuck.is_set():
            await never.wait()
        taken += 1

    async def iterate(events: EventListener, n: int) -> None:
        nonlocal taken
        async for _ in events:
            taken += 1
            if taken == n:
                return

    server = await FloodServer.start()
    listener = EventListener(
        TOKEN,
        handler if mode == "handler" else None,
        url=f"ws://127.0.0.1:{server.port}/",
        ping_interval=0.1,
        ping_timeout=0.3,
        max_queue=max_queue,
        drain_timeout=0.1,
    )
    task = asyncio.create_task(listener.listen()) if mode == "handler" else None
    if task is None:
        await listener.__aenter__()
    try:
        await until(lambda: listener.state is State.LIVE)
        # Warm up: the same kinds of allocations as the flood, so the baseline includes them.
        assert await server.call(f"warm {warm}") == "ok"
        if mode == "iterator":
            await asyncio.wait_for(iterate(listener, warm), 10)
        await until(lambda: listener.stats.events == warm and taken >= warm)
        stuck.set()  # from here on nothing is taken from the listener
        baseline = rss_bytes()
        fds = open_fds()

        assert await server.call(f"flood {flood}") == "ok"
        messages = await settled(lambda: listener.stats.messages)
        grown = rss_bytes() - baseline
        sent = int(await server.call("sent"))

        read_since_stuck = messages - listener.stats.pongs - 1 - warm
        assert grown < 30 * MB, f"RSS grew by {grown / MB:.1f} MB"
        # The listener stopped reading: at most max_queue frames, aiohttp's read buffer and
        # a few PONGs beyond it, out of 50 000.
        assert read_since_stuck <= max_queue + 600, read_since_stuck
        # TCP pushed back on the server: it could not write the whole flood.
        assert sent < warm + flood
        assert open_fds() <= fds + 1
        # Stuck, not dead: the heartbeat is paused while nothing is taken.
        assert listener.state is State.LIVE
        assert listener.stats.total_reconnects == 0
    finally:
        if task is not None:
            await listener.close()
            await asyncio.wait_for(task, 10)
        else:
            await listener.__aexit__(None, None, None)
        await server.stop()
    print(f"\nflood ({mode}): RSS +{grown / MB:.1f} MB, read {read_since_stuck}, wrote {sent}")


async def test_descriptors_and_tasks_flat_across_30_reconnects() -> None:
    """30 connection losses (aborts and RSTs): no descriptor and no task accumulates."""
    handled = 0

    async def handler(message: str | bytes) -> None:
        nonlocal handled
        handled += 1

    async with Emulator(tokens=[TOKEN], seed=12) as emu, FaultProxy("127.0.0.1", emu.port) as proxy:
        listener = EventListener(
            TOKEN, handler, url=proxy.url_for(), reconnect_delay=0.005, max_reconnect_delay=0.01
        )
        task = asyncio.create_task(listener.listen())
        await emu.wait_for_clients(1)
        await until(lambda: listener.state is State.LIVE)
        fds: list[int] = []
        tasks: list[int] = []
        for cycle in range(30):
            await emu.emit()
            if cycle % 2:
                await emu.abort_clients()
            else:
                proxy.cut()
            await emu.wait_for_clients(cycle + 2)
            await until(lambda: listener.state is State.LIVE)
            await proxy.wait_until(lambda: proxy.open_connections == 1)
            await emu.wait_until(lambda: len(emu.live_clients) == 1)
            fds.append(open_fds())
            tasks.append(len(asyncio.all_tasks()))
        await listener.close()
        await asyncio.wait_for(task, 5)
    assert listener.stats.total_reconnects == 30
    # After a few cycles the counts are those of one connection, whatever came before.
    assert max(fds[5:]) <= fds[4] + 1, fds
    assert max(tasks[5:]) <= tasks[4], tasks
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_half_open_connections_are_released() -> None:
    """Connections abandoned as dead (no PONG) are closed by the listener, not leaked."""
    async with Emulator(tokens=[TOKEN], seed=13) as emu, FaultProxy("127.0.0.1", emu.port) as proxy:
        listener = EventListener(
            TOKEN,
            None,
            url=proxy.url_for(),
            ping_interval=0.05,
            ping_timeout=0.15,
            reconnect_delay=0.005,
            max_reconnect_delay=0.01,
        )
        async with listener:
            await emu.wait_for_clients(1)
            await proxy.wait_until(lambda: proxy.open_connections == 1)
            fds: list[int] = []
            for cycle in range(8):
                proxy.blackhole("both")
                await emu.wait_for_clients(cycle + 2, timeout=3)
                # The path heals: whatever the listener did to the old socket (FIN or RST)
                # now reaches the proxy, which closes that link if the listener did close it.
                proxy.restore()
                await proxy.wait_until(lambda: proxy.open_connections == 1, timeout=3)
                await emu.wait_until(lambda: len(emu.live_clients) == 1)
                fds.append(open_fds())
            assert listener.stats.reconnects["heartbeat_timeout"] == 8
        assert max(fds[2:]) <= fds[1] + 1, fds
    assert asyncio.all_tasks() == {asyncio.current_task()}
