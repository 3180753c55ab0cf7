"""The bridge: listener → durable spool → routes (each a sink, with a filter and a cooldown
in front or not).

The package's parts, in the order an event meets them:

- :mod:`~neuroio.bridge.config`: :class:`BridgeConfig`, every option, embedding the listener's
  :class:`~neuroio._config.ConnectionOptions` and :class:`~neuroio._config.RecoveryOptions`,
  and the routes (:class:`RouteConfig`, :class:`FilterConfig`, :class:`CooldownConfig`), and
  the streams of a bridge serving several spaces (:class:`StreamConfig`, ``docs/scaling.md``).
- :mod:`~neuroio.bridge.pipeline`: :class:`Pipeline`, the input (the listener's handler), the
  writer (batched commits to the spool in a worker thread) and backpressure (the handler waits
  while the spool is full or commits fail, so the socket pauses; nothing is dropped).
- :mod:`~neuroio.bridge.delivery`: one worker per route: read, select what the route takes
  (its filter, then its cooldown, from :mod:`neuroio._routing`; each event judged once for
  every route by the pipeline), send, acknowledge, retry, bisect a refused batch, dead
  letters, :class:`SinkStatus`.
- ``_recovery``: the gaps the socket left, recovered from the REST API by the package's one
  recovery component (:mod:`neuroio._recovery`), with where each starts kept in the spool
  (:data:`RECOVER_AFTER`, :data:`RESUME_POINT`), and damaged spool batches fetched again;
  recovered events are spooled with ``"backfilled": true``.
- :mod:`~neuroio.bridge.metrics`: ``/metrics`` and ``/healthz`` (the ``metrics`` extra), from
  a :class:`BridgeSnapshot` taken on the event loop.
- :class:`Bridge`: wiring, lifecycle, and the graceful-then-forced stop.

The spool is :mod:`neuroio.bridge.spool`.
"""

from ._bridge import FORCE_GRACE, Bridge
from ._recovery import RECOVER_AFTER, RESUME_POINT
from ._snapshot import BridgeSnapshot, SinkSnapshot, StreamSnapshot
from .config import (
    BRIDGE_RECOVERY,
    BridgeConfig,
    CooldownConfig,
    FilterConfig,
    RouteConfig,
    StreamConfig,
)
from .delivery import LATENCY_BUCKETS, SinkStatus
from .pipeline import FAILING_MAX_PENDING, Pipeline, SinkLag

__all__ = [
    "BRIDGE_RECOVERY",
    "FAILING_MAX_PENDING",
    "FORCE_GRACE",
    "LATENCY_BUCKETS",
    "RECOVER_AFTER",
    "RESUME_POINT",
    "Bridge",
    "BridgeConfig",
    "BridgeSnapshot",
    "CooldownConfig",
    "FilterConfig",
    "Pipeline",
    "RouteConfig",
    "StreamConfig",
    "StreamSnapshot",
    "SinkLag",
    "SinkSnapshot",
    "SinkStatus",
]
