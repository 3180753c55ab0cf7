"""The benchmark's client processes: one variant per process, one JSON result line on stdout.

Throughput variants (count ``--events`` events, timed from the first to the last):

``null``
    no WebSocket library: reads the socket and throws the bytes away. Its rate is what the
    load server can send, the ceiling every other client is measured against.
``bare``
    an aiohttp receive loop that counts event frames and decodes nothing.
``bare-handler``
    the same loop, awaiting for each frame the same async handler ``raw`` is given: what
    calling a user's handler costs by itself, listener or not.
``bare-typed``
    the same loop, decoding each event with one reused msgspec decoder into
    :class:`neuroio.Event` / :class:`neuroio.Entry`.
``raw``
    :class:`neuroio.EventListener` with a raw handler that counts event frames.
``typed``
    :class:`neuroio.EventListener` iterated for typed events.
``raw-orjson`` / ``raw-msgspec``
    ``raw`` with a handler that decodes each event into plain Python objects, with orjson
    (not a dependency: install it into the benchmark's environment) or, as its stand-in,
    msgspec's untyped decoder.

Latency variants (``lat-bare``, ``lat-raw``, ``lat-typed``) read the server's
``data.sent_at`` stamp and report how long each event took to reach the handler.

``stuck`` runs a listener whose handler never returns, prints ``{"event": "stuck"}`` when the
handler is entered, and reports its memory when the harness writes a line to stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from _common import (
    EVENT_PREFIX,
    current_rss_kb,
    emit,
    peak_rss_kb,
    percentile,
    rates,
    run,
    stdin_lines,
)
from _loadserver import END_FRAME, client_handshake, encode_client_frame

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neuroio._protocol.frames import encode_auth  # noqa: E402
from neuroio.messages import Entry, Event  # noqa: E402

TOKEN = "bench-token-0123456789"


class _WireEvent(msgspec.Struct):
    id: int
    data: Entry


class _StampData(msgspec.Struct):
    sent_at: float = 0.0


class _Stamp(msgspec.Struct):
    data: _StampData


_wire_decoder = msgspec.json.Decoder(_WireEvent)
_stamp_decoder = msgspec.json.Decoder(_Stamp)


class _Counter:
    """Counts events and notes when the first and the last one arrived."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first = self.last = 0.0
        self.first_cpu = self.last_cpu = 0.0
        self.done = asyncio.get_running_loop().create_future()

    def hit(self) -> None:
        count = self.count = self.count + 1
        if count == 1:
            self.first = time.perf_counter()
            self.first_cpu = time.process_time()
        if count >= self.target:
            self.last = time.perf_counter()
            self.last_cpu = time.process_time()
            if not self.done.done():
                self.done.set_result(None)

    def result(self) -> dict[str, Any]:
        return rates(self.count, self.last - self.first, self.last_cpu - self.first_cpu)


def _listener_class() -> Any:
    try:
        from neuroio import EventListener
    except ImportError as exc:
        emit({"error": f"neuroio.EventListener is not available: {exc}"})
        raise SystemExit(3) from None
    return EventListener


# ---------------------------------------------------------------------------- throughput


class _Discard(asyncio.Protocol):
    """Counts and drops bytes until the server's end frame: no WebSocket parsing at all."""

    def __init__(self) -> None:
        self.received = 0
        self.first = self.first_cpu = 0.0
        self.tail = b""
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.received:
            self.first = time.perf_counter()
            self.first_cpu = time.process_time()
        self.received += len(data)
        self.tail = (self.tail + data[-len(END_FRAME) :])[-len(END_FRAME) :]
        if self.tail == END_FRAME and not self.done.done():
            self.done.set_result((time.perf_counter(), time.process_time()))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("server closed before the end frame"))


async def null_client(url: str, events: int) -> dict[str, Any]:
    parts = urlsplit(url)
    sock = client_handshake(
        parts.hostname or "127.0.0.1", parts.port or 80, f"{parts.path or '/'}?{parts.query}&end=1"
    )
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_connection(_Discard, sock=sock)
    transport.write(encode_client_frame(encode_auth(TOKEN).encode()))
    end, end_cpu = await sink.done
    transport.close()
    result = rates(events + 1, end - sink.first, end_cpu - sink.first_cpu)
    result.update(events=events, bytes=sink.received)
    return result


async def bare_client(
    url: str, events: int, typed: bool, call_handler: bool = False
) -> dict[str, Any]:
    counter = _Counter(events)
    decode = _wire_decoder.decode
    handler = _counting_handler(counter)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=8 * 2**20) as ws:
            await ws.send_str(encode_auth(TOKEN))
            text = aiohttp.WSMsgType.TEXT
            while counter.count < events:
                msg = await ws.receive()
                if msg.type is not text:
                    raise ConnectionError(f"unexpected {msg.type!r} after {counter.count} events")
                data = msg.data
                if call_handler:
                    await handler(data)
                elif data.startswith(EVENT_PREFIX):
                    if typed:
                        wire = decode(data)
                        Event(id=wire.id, entry=wire.data)
                    counter.hit()
    return counter.result()


def _counting_handler(counter: _Counter) -> Any:
    async def handler(message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith(EVENT_PREFIX):
            counter.hit()

    return handler


def _decoding_handler(counter: _Counter, decoder: str) -> Any:
    """A raw handler that decodes every event into dicts and lists, as a user's would."""
    if decoder == "orjson":
        try:
            import orjson
        except ImportError:
            emit({"error": "orjson is not installed in this environment"})
            raise SystemExit(3) from None
        loads = orjson.loads
    else:
        loads = msgspec.json.Decoder().decode

    async def handler(message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith(EVENT_PREFIX):
            loads(message)
            counter.hit()

    return handler


async def raw_client(url: str, events: int, decoder: str | None = None) -> dict[str, Any]:
    counter = _Counter(events)
    handler = _counting_handler(counter) if decoder is None else _decoding_handler(counter, decoder)
    listener = _listener_class()(TOKEN, handler, url=url)
    task = asyncio.create_task(listener.listen())
    await asyncio.wait({task, counter.done}, return_when=asyncio.FIRST_COMPLETED)
    await listener.close()
    await task
    return counter.result()


async def typed_client(url: str, events: int) -> dict[str, Any]:
    counter = _Counter(events)
    async with _listener_class()(TOKEN, url=url) as stream:
        async for _event in stream:
            counter.hit()
            if counter.count >= events:
                break
    return counter.result()


# ---------------------------------------------------------------------------- latency


def _latency_result(samples: list[float]) -> dict[str, Any]:
    samples.sort()
    return {
        "events": len(samples),
        "p50_ms": percentile(samples, 0.50) * 1000,
        "p90_ms": percentile(samples, 0.90) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
        "max_ms": samples[-1] * 1000 if samples else float("nan"),
    }


async def latency_client(url: str, events: int, kind: str) -> dict[str, Any]:
    samples: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def note(sent_at: float, now: float) -> None:
        samples.append(now - sent_at)
        if len(samples) >= events and not done.done():
            done.set_result(None)

    if kind == "lat-bare":
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                await ws.send_str(encode_auth(TOKEN))
                while len(samples) < events:
                    msg = await ws.receive()
                    now = time.time()
                    if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith(EVENT_PREFIX):
                        note(_stamp_decoder.decode(msg.data).data.sent_at, now)
        return _latency_result(samples)

    listener_class = _listener_class()
    if kind == "lat-raw":

        async def handler(message: str | bytes) -> None:
            now = time.time()
            if isinstance(message, str) and message.startswith(EVENT_PREFIX):
                note(_stamp_decoder.decode(message).data.sent_at, now)

        listener = listener_class(TOKEN, handler, url=url)
        task = asyncio.create_task(listener.listen())
        await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
        await listener.close()
        await task
        return _latency_result(samples)

    async with listener_class(TOKEN, url=url) as stream:
        async for event in stream:
            note(event.entry.extra["sent_at"], time.time())
            if len(samples) >= events:
                break
    return _latency_result(samples)


# ---------------------------------------------------------------------------- stuck handler


async def stuck_client(url: str, max_queue: int) -> None:
    entered = asyncio.Event()

    async def handler(message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith(EVENT_PREFIX):
            entered.set()
            await asyncio.Event().wait()  # never returns

    commands = await stdin_lines()
    baseline = current_rss_kb()
    listener = _listener_class()(TOKEN, handler, url=url, max_queue=max_queue)
    task = asyncio.create_task(listener.listen())
    waiter = asyncio.create_task(entered.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # the listener ended: raise whatever it raised
    emit({"event": "stuck", "rss_kb": current_rss_kb()})
    await commands.readline()
    stats = listener.stats
    emit(
        {
            "baseline_rss_kb": baseline,
            "rss_kb": current_rss_kb(),
            "peak_rss_kb": peak_rss_kb(),
            "received": getattr(stats, "events", None),
            "queue_high_water": getattr(stats, "queue_high_water", None),
        }
    )
    # The handler never returns, so a graceful close would only wait out its drain timeout.
    os._exit(0)


# ---------------------------------------------------------------------------- main


async def _main(args: argparse.Namespace) -> None:
    variant = args.variant
    result: dict[str, Any]
    if variant == "stuck":
        await stuck_client(args.url, args.max_queue)
        return
    if variant == "null":
        result = await null_client(args.url, args.events)
    elif variant in ("bare", "bare-typed", "bare-handler"):
        result = await bare_client(
            args.url,
            args.events,
            typed=variant == "bare-typed",
            call_handler=variant == "bare-handler",
        )
    elif variant == "raw":
        result = await raw_client(args.url, args.events)
    elif variant in ("raw-orjson", "raw-msgspec"):
        result = await raw_client(args.url, args.events, decoder=variant.split("-", 1)[1])
    elif variant == "typed":
        result = await typed_client(args.url, args.events)
    elif variant.startswith("lat-"):
        result = await latency_client(args.url, args.events, variant)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    result.update(variant=variant, loop=args.loop, peak_rss_kb=peak_rss_kb())
    emit(result)


def main() -> None:
    """Command line: ``python bench/_clients.py VARIANT --url URL --events N --loop LOOP``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--max-queue", type=int, default=1024)
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the run here")
    args = parser.parse_args()
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            run(_main(args), args.loop)
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        run(_main(args), args.loop)


if __name__ == "__main__":
    main()
