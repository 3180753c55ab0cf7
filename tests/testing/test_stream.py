"""The emulator's generated stream (``rate``): spaces taking turns, ``stream_count``, and no
spinning on a coarse clock."""

from __future__ import annotations

import asyncio
import math

from neuroio.testing import Emulator


async def test_stream_takes_turns_across_spaces() -> None:
    """``rate`` per space: three spaces at 40 events/s each, emitted in turn (spaces 1, 2, 3,
    1, ...), so counts never differ by more than one and are seen unequal between ticks;
    never ahead of the rate."""
    seen: set[tuple[int, ...]] = set()
    async with Emulator(spaces=3, rate=40, push_while_disconnected=False) as emu:
        spaces = [emu.space(t) for t in emu.space_tokens]
        started = asyncio.get_running_loop().time()

        def counts() -> bool:
            now = tuple(s.emitted for s in spaces)
            seen.add(now)
            return min(now) >= 10

        await emu.wait_until(counts, timeout=5)
        elapsed = asyncio.get_running_loop().time() - started
    assert all(max(c) - min(c) <= 1 for c in seen)
    assert all(list(c) == sorted(c, reverse=True) for c in seen)  # space 1 goes first
    assert any(max(c) != min(c) for c in seen)  # not all spaces in one tick
    assert elapsed >= 9 / 40


async def test_stream_count_ends_the_stream() -> None:
    """``stream_count``: that many events in each space, then the stream ends; the ids are
    each space's first ones."""
    async with Emulator(spaces=2, rate=500, stream_count=4) as emu:
        assert emu.streaming
        await emu.wait_until(lambda: not emu.streaming, timeout=5)
        assert emu.emitted == 8
        for k, token in enumerate(emu.space_tokens, start=1):
            history = emu.space(token).history
            assert len(history) == 4
            assert history.find(k * 10**9 + 4) is not None
            assert history.find(k * 10**9 + 5) is None


class _CoarseClockLoop(asyncio.SelectorEventLoop):
    """A loop whose clock counts whole milliseconds, as uvloop's does; counts its reads."""

    reads = 0

    def time(self) -> float:
        self.reads += 1
        return math.floor(super().time() * 1000) / 1000


def test_stream_does_not_spin_on_a_millisecond_clock() -> None:
    """At 1,000 events/s in all (1,000 spaces at 1 a second) an event is often due exactly
    at a clock tick; the stream still sleeps a tick then, instead of asking the clock again
    and again until it moves (a busy loop that cost a fifth of a core)."""

    async def run() -> int:
        async with Emulator(spaces=1000, rate=1) as emu:
            loop = asyncio.get_running_loop()
            assert isinstance(loop, _CoarseClockLoop)
            await emu.wait_until(lambda: emu.emitted >= 300, timeout=5)
            return loop.reads

    loop = _CoarseClockLoop()
    try:
        reads = loop.run_until_complete(run())
    finally:
        loop.close()
    # About 4 reads per 4 ms tick, plus the start; a spin reads it hundreds of times a tick.
    assert reads < 3000, reads
