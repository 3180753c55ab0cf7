"""What a named stream has received but not yet seen confirmed by every route: the part of
its watermark the pipeline knows (``Input.lowest_unconfirmed``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from neuroio.bridge.spool import Spool
from neuroio.sinks import MemorySink, SpooledEvent

from ..helpers import until
from ._common import run_pipeline

pytestmark = pytest.mark.asyncio


class Gated(MemorySink):
    """Takes a batch only once ``open`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.open = asyncio.Event()

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        await self.open.wait()
        await super().send(events)


def frame(event_id: int) -> str:
    return json.dumps({"id": event_id, "data": {"id": event_id, "created": "2026-12-01T10:00:00Z"}})


async def test_the_lowest_id_not_confirmed_by_every_route(tmp_path: Path) -> None:
    fast, slow = MemorySink(), Gated("slow")
    fast.name = "fast"
    with Spool(tmp_path / "spool.db", streams=True) as spool:
        pipeline = await run_pipeline(spool, [fast, slow])
        try:
            one = pipeline.input(spool.stream_number("one"), "one")
            two = pipeline.input(spool.stream_number("two"), "two")
            assert one.lowest_unconfirmed() is None
            for event_id in (5, 6, 7):
                await one.handle(frame(event_id))
            await two.handle(frame(5))  # the same id in another stream is its own
            await one.put_event({"id": 3, "data": {"id": 3}, "backfilled": True})  # recovered
            assert one.lowest_unconfirmed() == 3  # queued counts, committed or not
            await pipeline.flush(5)
            await until(lambda: len(fast.events) == 5)
            assert one.lowest_unconfirmed() == 3 and two.lowest_unconfirmed() == 5
            await one.handle(frame(6))  # a repeat the spool drops stays held until confirmed
            slow.open.set()
            await pipeline.wait_delivered(5)
            assert one.lowest_unconfirmed() is None and two.lowest_unconfirmed() is None
            stored = {(json.loads(e.payload)["stream"], e.id) for e in slow.events}
            assert stored == {("one", 3), ("one", 5), ("one", 6), ("one", 7), ("two", 5)}
        finally:
            await pipeline.close()
