"""The fleet coordinator against real NATS: shares balanced, a joining worker served, a killed
worker's streams taken over from its watermark, a clean leave released at once, fencing when
NATS is gone, and a refused token kept on its holder and reported everywhere.

The bridge side is a small :class:`StreamHost` that records what it is told (the fleet's own
interface, not a mock of the network). Leases are short (ttl 1.5 s) so every test is quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import nats
import pytest

from neuroio.bridge._fleet import Fleet, StreamHost
from neuroio.exceptions import ConfigurationError

from ..helpers import eventually
from ._common import free_port

pytestmark = pytest.mark.nats

TTL = 1.5


class Host:
    """The bridge as the fleet drives it: which streams run here, after which id."""

    def __init__(self, names: Sequence[str]) -> None:
        self.stream_names: Sequence[str] = list(names)
        self.running: dict[str, int | None] = {}
        self.starts: list[tuple[str, int | None]] = []
        self.stopped: list[tuple[str, float]] = []
        self.marks: dict[str, int] = {}
        self.refused: dict[str, str] = {}

    async def start_stream(self, name: str, after: int | None) -> None:
        assert name not in self.running, f"{name} started twice"
        self.running[name] = after
        self.starts.append((name, after))

    async def stop_stream(self, name: str) -> None:
        self.running.pop(name, None)
        self.stopped.append((name, time.monotonic()))

    def watermark(self, name: str) -> int | None:
        return self.marks.get(name)

    def rejected(self, name: str) -> str | None:
        return self.refused.get(name)


def _typed(host: Host) -> StreamHost:
    return host  # the recording host is a StreamHost (checked by mypy here)


Start = Callable[..., Awaitable[tuple[Fleet, Host]]]


@pytest.fixture
async def bucket(nats_url: str) -> AsyncIterator[str]:
    name = f"fleet-test-{uuid.uuid4().hex[:10]}"
    yield name
    nc = await nats.connect(nats_url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_key_value(name)
    await nc.close()


@pytest.fixture
async def start(nats_url: str, bucket: str) -> AsyncIterator[Start]:
    """Start a coordinator (worker id, streams, ttl); every one is closed at the end."""
    fleets: list[Fleet] = []

    async def run(
        worker: str, names: Sequence[str], ttl: float = TTL, url: str = nats_url
    ) -> tuple[Fleet, Host]:
        fleet = Fleet(url, bucket=bucket, ttl=ttl, worker=worker, connect_timeout=3)
        host = Host(names)
        fleets.append(fleet)
        await fleet.start(_typed(host))
        return fleet, host

    yield run
    await asyncio.gather(*(f.aclose() for f in fleets))


def streams(count: int) -> list[str]:
    return [f"shop-{i}" for i in range(count)]


def spread(hosts: Sequence[Host], total: int, each: Sequence[int]) -> bool:
    """Whether every stream runs on exactly one host and the hosts hold ``each``; a stream
    running on two hosts at any poll fails the test at once."""
    seen: set[str] = set()
    for host in hosts:
        overlap = seen & host.running.keys()
        assert not overlap, f"streams running on two workers: {sorted(overlap)}"
        seen |= host.running.keys()
    return len(seen) == total and sorted(len(h.running) for h in hosts) == sorted(each)


async def get_mark(nats_url: str, bucket: str, stream: str) -> int | None:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            entry = await kv.get(f"mark.{stream}")
        except nats.js.errors.KeyNotFoundError:
            return None
        return int(entry.value or b"")
    finally:
        await nc.close()


async def test_three_workers_share_twelve_streams_and_a_fourth_gets_its_share(
    start: Start,
) -> None:
    """Three coordinators started together hold 4 streams each, none twice; a fourth joins
    and the others give it theirs until each holds 3."""
    names = streams(12)
    started = await asyncio.gather(*(start(w, names) for w in ("w1", "w2", "w3")))
    hosts = [h for _, h in started]
    await eventually(lambda: spread(hosts, 12, [4, 4, 4]), "4 streams each", 6)
    fleet, _ = started[0]
    status = fleet.status()
    assert status["workers"] == ["w1", "w2", "w3"] and status["target"] == 4
    assert set(status["streams"].values()) == {"w1", "w2", "w3"}

    _, fourth = await start("w4", names)
    hosts.append(fourth)
    await eventually(lambda: spread(hosts, 12, [3, 3, 3, 3]), "3 streams each", 6)
    assert all(after is None for _, after in fourth.starts)  # no marks written yet


async def test_a_killed_worker_s_streams_are_taken_from_its_watermark(
    start: Start, nats_url: str, bucket: str
) -> None:
    """A worker that vanishes (no release) loses its streams to the others within about a
    ttl; each starts after the watermark the dead worker last wrote."""
    names = streams(6)
    started = await asyncio.gather(*(start(w, names) for w in ("w1", "w2", "w3")))
    hosts = [h for _, h in started]
    await eventually(lambda: spread(hosts, 6, [2, 2, 2]), "2 streams each", 6)
    victim, victim_host = started[2]
    theirs = sorted(victim_host.running)
    for number, name in enumerate(theirs):
        victim_host.marks[name] = 1000 + number

    async def marks_written() -> bool:
        return all([await get_mark(nats_url, bucket, n) == 1000 + i for i, n in enumerate(theirs)])

    await eventually(marks_written, "the victim's watermarks in the bucket", 5)

    await victim._abandon()  # as a SIGKILL leaves it: nothing released
    killed = time.monotonic()
    survivors = hosts[:2]
    await eventually(lambda: spread(survivors, 6, [3, 3]), "the survivors hold all", 3 * TTL)
    took = time.monotonic() - killed
    assert took <= TTL + 1.0, f"takeover took {took:.2f} s"
    taken = {name: after for h in survivors for name, after in h.starts if name in theirs}
    assert taken == {name: 1000 + i for i, name in enumerate(theirs)}


async def test_a_clean_leave_releases_at_once_with_final_watermarks(
    start: Start, nats_url: str, bucket: str
) -> None:
    """aclose() stops the streams, writes their watermarks and deletes the leases: the other
    worker takes them well before a ttl, after those watermarks."""
    ttl = 4.0
    names = streams(6)
    (stay, stay_host), (leave, leave_host) = await asyncio.gather(
        start("w1", names, ttl), start("w2", names, ttl)
    )
    await eventually(lambda: spread([stay_host, leave_host], 6, [3, 3]), "3 each", 6)
    theirs = sorted(leave_host.running)
    for name in theirs:
        leave_host.marks[name] = 7  # never yet written: the final write publishes it

    began = time.monotonic()
    await leave.aclose()
    assert leave_host.running == {}
    await eventually(lambda: len(stay_host.running) == 6, "all streams on w1", ttl)
    took = time.monotonic() - began
    assert took < ttl / 2, f"takeover after a clean leave took {took:.2f} s"
    assert {n: a for n, a in stay_host.starts if n in theirs} == dict.fromkeys(theirs, 7)
    assert stay.status()["workers"] == ["w1"]
    assert await get_mark(nats_url, bucket, theirs[0]) == 7


class OwnNats:
    """A NATS server of the test's own, on a free port, to be killed and started again (with
    the same store: the bucket survives)."""

    def __init__(self, store: str) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = store
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await eventually(self._reachable, "the test's own NATS server", 10)

    async def _reachable(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(b"INFO")
        finally:
            writer.close()
            await writer.wait_closed()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
async def own_nats() -> AsyncIterator[OwnNats]:
    with tempfile.TemporaryDirectory() as store:
        server = OwnNats(store)
        await server.start()
        try:
            yield server
        finally:
            server.kill()


async def test_a_worker_cut_off_from_nats_stops_its_streams_before_the_ttl(
    start: Start, own_nats: OwnNats
) -> None:
    """NATS dies: the holder cannot renew, and stops every stream ttl - margin after its last
    successful renewal, before any other worker could see the leases expire. NATS back, it
    watches the bucket again and takes its streams once their old leases expire."""
    fleet, host = await start("w1", streams(3), TTL, own_nats.url)
    await eventually(lambda: len(host.running) == 3, "all streams held", 5)

    own_nats.kill()
    killed = time.monotonic()
    await eventually(lambda: host.running == {}, "every stream stopped", 2 * TTL)
    last = max(at for _, at in host.stopped) - killed
    assert last < TTL - fleet.margin + 0.3, f"stopped {last:.2f} s after NATS died"
    assert any(p.startswith("fleet: NATS unreachable") for p in fleet.problems())

    await own_nats.start()
    await eventually(lambda: len(host.running) == 3, "streams taken again", 4 + 2 * TTL)
    assert fleet.problems() == []
    began = time.monotonic()
    own_nats.kill()
    await fleet.aclose()  # NATS gone: nothing to release, and no waiting for it
    assert time.monotonic() - began < TTL


async def test_a_refused_token_stays_with_its_holder_and_is_reported_everywhere(
    start: Start,
) -> None:
    """The holder keeps the lease of a stream whose token is refused (it does not wander),
    and every worker's problems() names it until it is accepted again."""
    names = streams(4)
    started = await asyncio.gather(start("w1", names), start("w2", names))
    hosts = [h for _, h in started]
    await eventually(lambda: spread(hosts, 4, [2, 2]), "2 each", 6)
    (holder, holder_host), (other, other_host) = (
        started if "shop-0" in started[0][1].running else started[::-1]
    )
    holder_host.refused["shop-0"] = "close code 4001"
    refused = time.monotonic()
    line = f"stream shop-0: token rejected on {holder.worker}: close code 4001"
    await eventually(
        lambda: line in holder.problems() and line in other.problems(), "reported on both", 5
    )
    # A whole ttl of renewals later it is still where it was.
    await eventually(
        lambda: holder._held["shop-0"].renewed > refused + TTL, "renewed past a ttl", 3 * TTL
    )
    assert "shop-0" in holder_host.running
    assert all(name != "shop-0" for name, _ in holder_host.stopped)
    assert all(name != "shop-0" for name, _ in other_host.starts)

    del holder_host.refused["shop-0"]
    await eventually(lambda: not holder.problems() and not other.problems(), "cleared", 5)


# -- the URI --------------------------------------------------------------------------------


def test_from_uri_reads_bucket_ttl_and_worker() -> None:
    """Every option of the query, and the defaults."""
    fleet = Fleet.from_uri("nats://127.0.0.1:4222?bucket=b-1&ttl=2.5&worker=host.a-1")
    assert (fleet.bucket, fleet.ttl, fleet.worker) == ("b-1", 2.5, "host.a-1")
    assert fleet.margin == 0.5 and fleet.renew_interval == pytest.approx(2.5 / 3)
    default = Fleet.from_uri("nats://127.0.0.1:4222")
    assert (default.bucket, default.ttl) == ("neuroio-fleet", 10.0)
    assert default.worker.endswith(f"-{__import__('os').getpid()}")
    assert Fleet.from_uri("nats://h?ttl=5m").ttl == 300.0


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("nats://h?tll=3", "unknown option 'tll' (did you mean 'ttl'?); known options: "),
        ("nats://h?bucket=a&bucket=b", "option 'bucket' is given twice"),
        ("nats://h?ttl=soon", "ttl must be a duration in seconds"),
        ("nats://h?ttl=0.1", "ttl must be >= 0.5 seconds"),
        ("nats://h?bucket=a.b", "bucket must be [A-Za-z0-9_-]+"),
        ("nats://h?worker=a..b", "worker must be [A-Za-z0-9_.-]+"),
        ("redis://h", "expected nats://host:port"),
        ("nats://h:99999", "invalid URL"),
    ],
)
def test_bad_uris_are_one_line_errors(uri: str, message: str) -> None:
    """Each mistake is one line naming the URI and what is wrong."""
    with pytest.raises(ConfigurationError) as caught:
        Fleet.from_uri(uri)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert text.startswith("fleet ")


def test_credentials_never_shown() -> None:
    """A password or token in the URI is masked in repr, str and errors."""
    fleet = Fleet.from_uri("nats://user:s3cret@127.0.0.1:4222?worker=w1")
    assert "s3cret" not in repr(fleet) and "s3cret" not in str(fleet)
    assert "user:***@" in repr(fleet)
    # Kept as spelled for connecting (nats-py does not decode credentials).
    assert fleet.server == "nats://user:s3cret@127.0.0.1:4222"
    assert Fleet.from_uri("nats://u:p%40ss@h:4222?ttl=2").server == "nats://u:p%40ss@h:4222"
    token = Fleet.from_uri("nats://T0KEN@127.0.0.1:4222")
    assert "T0KEN" not in repr(token)
    with pytest.raises(ConfigurationError) as caught:
        Fleet.from_uri("nats://user:s3cret@h?tll=1")
    assert "s3cret" not in str(caught.value)


async def test_a_stream_name_that_cannot_be_a_key_is_refused(start: Start) -> None:
    """A name with an empty dot part would be an invalid subject: refused at start."""
    with pytest.raises(ConfigurationError, match="stream name 'a..b'"):
        await start("w1", ["ok", "a..b"])


def test_the_recording_host_is_a_stream_host() -> None:
    """The test's host satisfies the protocol the bridge implements."""
    host: Any = _typed(Host(["a"]))
    assert host.stream_names == ["a"]
