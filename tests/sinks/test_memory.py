"""MemorySink: records events, and fails on demand for pipeline tests."""

from __future__ import annotations

import pytest

from neuroio.exceptions import PermanentSinkError, SinkError
from neuroio.sinks import MemorySink, SpooledEvent, from_uri


def events(*ids: int) -> list[SpooledEvent]:
    return [SpooledEvent(i, i, b'{"id":%d,"data":{}}' % i, 0.0) for i in ids]


async def test_records_fails_and_refuses() -> None:
    """send() appends; fail() makes it raise until recover(); refused ids raise permanently."""
    sink = from_uri("memory:m")
    assert isinstance(sink, MemorySink) and sink.name == "m"
    await sink.start()
    await sink.send(events(1, 2))
    sink.fail()
    with pytest.raises(SinkError):
        await sink.send(events(3))
    sink.recover()
    sink.refuse = {4}
    with pytest.raises(PermanentSinkError):
        await sink.send(events(3, 4))
    await sink.send(events(3))
    assert sink.ids == [1, 2, 3] and sink.sends == 4
    assert len(await sink.wait_for(3, timeout=0.1)) == 3
    with pytest.raises(TimeoutError):
        await sink.wait_for(4, timeout=0.05)
    await sink.aclose()
    assert sink.closed
