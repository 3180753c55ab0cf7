"""The bridge through token rotations: its listener and its gap recovery share one provider."""

from __future__ import annotations

from pathlib import Path

from neuroio.bridge import Bridge
from neuroio.emulator import Emulator
from neuroio.sinks import MemorySink

from ..helpers import until
from ._common import bridge_options

ROTATED = [
    "bridge-rot-1f2e3d4c5b6a",
    "bridge-rot-7a8b9c0d1e2f",
    "bridge-rot-3a4b5c6d7e8f",
    "bridge-rot-9f8e7d6c5b4a",
]


async def test_three_rotations_lose_nothing_and_cost_one_reconnect_each(tmp_path: Path) -> None:
    """Old token revoked each time, the provider giving the new one: every event reaches the
    sink once (the gaps through recovery with the new token), one reconnect per rotation."""
    current = [ROTATED[0]]
    sink = MemorySink()
    async with Emulator(tokens=[ROTATED[0]], seed=5, push_while_disconnected=False) as emu:
        bridge = Bridge(
            lambda: current[0],
            [sink],
            backfill=True,
            **bridge_options(emu, tmp_path),  # type: ignore[arg-type]
        )
        async with bridge:
            listener = bridge.listener
            assert listener is not None
            await until(lambda: listener.stats.authenticated == 1)
            sent: list[int] = []
            for n in range(1, 4):
                sent += [e["id"] for e in await emu.burst(20)]
                emu.accept(ROTATED[n])
                current[0] = ROTATED[n]
                await emu.revoke(ROTATED[n - 1])
                sent += [e["id"] for e in await emu.burst(10)]
                await until(lambda: listener.stats.authenticated == n + 1)  # noqa: B023
            sent += [e["id"] for e in await emu.burst(20)]
            await until(lambda: set(sent) <= set(sink.ids), timeout=10)
            stats = listener.stats
    assert sorted(sink.ids) == sorted(sent), "an event was lost or delivered twice"
    assert stats.total_reconnects == 3
    assert all(t not in repr(bridge) for t in ROTATED)
