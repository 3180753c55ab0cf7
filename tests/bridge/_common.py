"""Helpers shared by the bridge's tests: frames, a started pipeline, a bridge's test options."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path

from neuroio.bridge import Pipeline
from neuroio.bridge.spool import Spool
from neuroio.sinks import Sink
from neuroio.testing import Emulator

from ..independent_server import IndependentServer

TOKEN = "bridge-secret-token-42"


def frame(event_id: int, **extra: object) -> str:
    data = {"id": event_id, "created": "2024-05-01T10:00:00Z", "result": "exact", **extra}
    return json.dumps({"id": event_id, "data": data})


async def run_pipeline(spool: Spool, sinks: Sequence[Sink], **options: float) -> Pipeline:
    options.setdefault("retry_delay", 0.01)
    options.setdefault("max_retry_delay", 0.05)
    pipeline = Pipeline(spool, sinks, **options)  # type: ignore[arg-type]
    await pipeline.start()
    return pipeline


async def feed(pipeline: Pipeline, ids: range) -> None:
    for i in ids:
        await pipeline.handle(frame(i))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bridge_options(server: IndependentServer | Emulator, tmp_path: Path) -> dict[str, object]:
    return {
        "url": server.url,
        "api_url": server.api_url,
        "spool": tmp_path / "spool.db",
        "ping_interval": 0.1,
        "ping_timeout": 1.0,
        "reconnect_delay": 0.01,
        "sink_retry_delay": 0.01,
        "sink_max_retry_delay": 0.05,
    }
