"""Disk writes per event of the spool: bytes the kernel counts as written, per event and per day.

Drives the real spool in a child process per case and reads that child's own ``write_bytes``
from ``/proc/self/io`` (bytes it caused to be written to storage: the write-ahead log, the
checkpoints into the database, the file growth), from after the spool was opened to the end of
the run (the final close, a one-off checkpoint, is left out). Two workloads, each event about
``--event-bytes`` of JSON like the platform's:

- **5 events/s**: each event its own commit, then the sink's acknowledgement its own commit,
  as the bridge does at a low rate (the file sink confirms before the next event arrives).
  Runs in real time (``--seconds``, 60 by default) so that everything driven by the clock
  (pruning every ``prune_interval``, the kernel's writeback of dirty pages) happens as it
  would; a shorter run over-counts nothing but sees fewer checkpoints.
- **1,000 events/s**: a commit every 10 ms with the 10 events that arrived meanwhile and the
  acknowledgement of the previous commit, for ``--fast-seconds`` (10 by default).

Each runs for the spool of this tree and for the previous design, the spool of commit
``3b6f9e2`` (read with ``git show`` at run time into a temporary file, never a copy in the
tree), with ``synchronous`` FULL and NORMAL. The CRC-32 the new spool computes per stored
batch is timed on the same payloads and shown beside the time of a commit.

With ``--streams N``, it measures the cost of keeping many streams in one spool instead:
commits of 10 events for this spool alone (``synchronous`` NORMAL), at 1,000 events/s and
then flat out (``--fast-seconds`` each), one case after the other: the single stream of
today (stream 0), one stream numbered 1, and N streams taking turns event by event (each
stream's ids growing). It prints the time of ``write`` per event and its ratio to the
single stream's.

With ``--bridge``, it measures what users meet instead: the ``neuroio-events bridge`` CLI as
a subprocess, with a file sink, fed by ``neuroio-events emulate --rate 5`` (and ``--rate``
1000 for ``--fast-seconds``), the bridge of this tree beside the bridge of ``3b6f9e2`` (its
tree extracted with ``git archive`` into a temporary directory). The figure is the bridge
process's ``write_bytes``. A third bridge of this tree keeps its spool in ``/dev/shm``
(tmpfs counts no writes), so its figure is the file sink's own writes (it syncs each batch it
appends). ``ev/commit`` is the mean events per stored batch among the rows held at the end.

Usage::

    .venv/bin/python bench/spool_writes.py [--seconds 60] [--fast-seconds 10] [--event-bytes 800]
    .venv/bin/python bench/spool_writes.py --bridge [--seconds 60] [--fast-seconds 10]
    .venv/bin/python bench/spool_writes.py --streams 1000 [--fast-seconds 5]

The directory (``--dir``, a temporary one on the file system of ``/var/tmp`` by default) must
be on a disk-backed file system: tmpfs counts no writes.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_COMMIT = "3b6f9e2"


def _write_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def _payloads(count: int, size: int) -> list[bytes]:
    """Events as the emulator makes them (about 840 bytes of JSON: ids, times, names, URLs),
    cut or padded with random characters to about ``size`` bytes so that their compressibility
    stays that of real entries."""
    sys.path.insert(0, str(ROOT))
    from neuroio.testing import EntryFactory

    factory = EntryFactory(seed=1)
    out = []
    for i in range(1, count + 1):
        entry = factory.make()
        body = json.dumps({"id": i, "data": entry}, separators=(",", ":"))
        if len(body) < size:
            entry["note"] = base64.b64encode(os.urandom(size)).decode()[: size - len(body) - 10]
        out.append(json.dumps({"id": i, "data": entry}, separators=(",", ":")).encode())
    return out


def _load_spool_class(impl: str) -> Any:
    if impl == "new":
        sys.path.insert(0, str(ROOT))
        from neuroio.bridge.spool import Spool

        return Spool
    import neuroio  # the base spool imports its exceptions relative to the package

    spec = importlib.util.spec_from_file_location("neuroio._base_spool", impl)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert neuroio is not None
    return module.Spool


def child(args: argparse.Namespace) -> None:
    """One case: open a spool, run the workload in real time, print the figures as JSON."""
    spool_class = _load_spool_class(args.impl)
    path = Path(args.dir) / "spool.db"
    options = {"streams": True} if args.streams else {}
    spool = spool_class(path, synchronous=args.sync, check=False, **options)
    spool.register(["file"])
    start_bytes = _write_bytes()
    rate, batch = args.rate, args.batch
    period = batch / rate
    started = time.monotonic()
    deadline = started + args.seconds
    next_at = started
    events = commits = 0
    write_time = 0.0
    pending_ack = 0
    pool = _payloads(1000, args.event_bytes)
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if now < next_at:
            time.sleep(next_at - now)
            continue
        next_at += period
        received = time.time()
        batch_events: list[Any]
        if args.streams:
            # Round robin: event k is of stream k % streams + 1, its id growing in its stream.
            n = args.streams
            batch_events = [
                (
                    (events + i) // n + 1,
                    pool[(events + i) % len(pool)],
                    received,
                    (events + i) % n + 1,
                )
                for i in range(batch)
            ]
        else:
            batch_events = [
                (events + i + 1, pool[(events + i) % len(pool)], received) for i in range(batch)
            ]
        t0 = time.perf_counter()
        if args.separate_acks:
            stored = spool.write(batch_events)
            commits += 1
            # The sink confirmed the event before the next one arrived: its own commit.
            spool.write(acks={"file": stored[-1].seq})
            commits += 1
        else:
            acks = {"file": pending_ack} if pending_ack else None
            stored = spool.write(batch_events, acks)
            commits += 1
            pending_ack = stored[-1].seq
        write_time += time.perf_counter() - t0
        events += batch
    # One checkpoint charged to every run (one per 16 MiB of log in steady state, so a short
    # run over-counts it): the log's pages copied into the database are part of the cost.
    checkpoint = sqlite3.connect(path)
    checkpoint.execute("PRAGMA wal_checkpoint(PASSIVE)")
    checkpoint.close()
    written = _write_bytes() - start_bytes
    spool.close()
    joined = b"".join(pool)
    t0 = time.perf_counter()
    for _ in range(20):
        zlib.crc32(joined)
    crc_ns = (time.perf_counter() - t0) / 20 / len(pool) * 1e9
    json.dump(
        {
            "events": events,
            "commits": commits,
            "written": written,
            "event_bytes": round(len(joined) / len(pool)),
            "write_us_per_event": write_time / max(events, 1) * 1e6,
            "crc_ns_per_event": crc_ns,
            "file_bytes": sum(
                os.stat(f"{path}{s}").st_size for s in ("", "-wal") if os.path.exists(f"{path}{s}")
            ),
        },
        sys.stdout,
    )


def _base_spool_file(tmp: Path) -> str:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BASE_COMMIT}:neuroio/spool.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = tmp / "base_spool.py"
    path.write_text(source)
    return str(path)


def _spawn(
    impl: str,
    sync: str,
    rate: int,
    batch: int,
    seconds: float,
    separate: bool,
    work: Path,
    event_bytes: int,
    streams: int = 0,
) -> subprocess.Popen[str]:
    work.mkdir(parents=True)
    command = [
        sys.executable, __file__, "--child", "--impl", impl, "--sync", sync,
        "--rate", str(rate), "--batch", str(batch), "--seconds", str(seconds),
        "--dir", str(work), "--event-bytes", str(event_bytes), "--streams", str(streams),
    ]  # fmt: skip
    if separate:
        command.append("--separate-acks")
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _proc_write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError(f"no write_bytes for pid {pid}")


def _lines(path: Path) -> tuple[int, int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, 0
    return data.count(b"\n"), len(data)


class _BridgeRun:
    """One emulator and one ``neuroio-events bridge`` with a file sink, both subprocesses."""

    def __init__(
        self, tree: Path, work: Path, rate: float, sync: str, spool_dir: Path | None = None
    ) -> None:
        work.mkdir(parents=True)
        self.events = work / "events.jsonl"
        self.spool = (spool_dir or work) / "spool.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
        env.update(NEUROIO_API_TOKEN="bench-token", PYTHONPATH=str(tree))
        self.emulator = subprocess.Popen(
            [sys.executable, "-m", "neuroio", "emulate", "--port", "0", "--rate", str(rate),
             "--token", "bench-token"],
            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.emulator.stdout is not None
        url = self.emulator.stdout.readline().strip()
        api_url = self.emulator.stdout.readline().strip()
        self.bridge = subprocess.Popen(
            [sys.executable, "-m", "neuroio", "bridge", "--to", f"file:{self.events}",
             "--spool", str(self.spool), "--spool-sync", sync, "--url", url,
             "--api-url", api_url, "--metrics-port", "0"],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def events_per_commit(self) -> float:
        """Events per stored batch among the rows the spool holds now (one row per commit)."""
        try:
            conn = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=5)
            rows, events = conn.execute(
                "SELECT count(*), sum(last_seq - first_seq + 1) FROM segments"
            ).fetchone()
            conn.close()
        except sqlite3.Error:
            return float("nan")
        return events / rows if rows else float("nan")

    def mark(self) -> tuple[int, int, int]:
        """(bridge write_bytes, events in the sink's file, the file's size)."""
        return (_proc_write_bytes(self.bridge.pid), *_lines(self.events))

    def stop(self) -> None:
        for proc in (self.bridge, self.emulator):
            proc.terminate()
        for proc in (self.bridge, self.emulator):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bridge_main(args: argparse.Namespace, tmp: Path) -> None:
    """The CLI bridge of this tree and of the base commit, side by side."""
    base = tmp / "base-tree"
    base.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BASE_COMMIT, "neuroio"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    # tmpfs counts no writes: with the spool there, what is left is the file sink's own.
    shm = Path("/dev/shm")
    cases: list[tuple[str, Path, Path | None]] = [
        ("previous (3b6f9e2)", base, None),
        ("this tree", ROOT, None),
    ]
    if shm.is_dir() and os.access(shm, os.W_OK):
        cases.append(("sink alone (spool in /dev/shm)", ROOT, shm))
    print(
        f"{'workload':9} {'bridge':31} {'sync':6} {'event B':>7} {'events':>7} "
        f"{'ev/commit':>9} {'KiB/event':>9} {'GB/day':>8}"
    )
    for rate, seconds in ((5, args.seconds), (1000, args.fast_seconds)):
        runs = []
        for i, (name, tree, spool_dir) in enumerate(cases):
            for sync in ("full", "normal"):
                work = tmp / f"bridge-{rate}-{i}-{sync}"
                where = None
                if spool_dir is not None:
                    where = Path(tempfile.mkdtemp(dir=spool_dir, prefix="spool-writes-"))
                runs.append((name, sync, _BridgeRun(tree, work, rate, sync, where)))
        try:
            deadline = time.monotonic() + 30
            while any(_lines(r.events)[0] == 0 for _, _, r in runs):
                if time.monotonic() > deadline:
                    raise SystemExit("a bridge delivered nothing within 30 s")
                time.sleep(0.1)
            starts = [r.mark() for _, _, r in runs]
            time.sleep(seconds)
            ends = [r.mark() for _, _, r in runs]
            batches = [r.events_per_commit() for _, _, r in runs]
        finally:
            for _, _, run in runs:
                run.stop()
                if run.spool.parent.parent == shm:
                    shutil.rmtree(run.spool.parent, ignore_errors=True)
        for (name, sync, _), start, end, batch in zip(runs, starts, ends, batches, strict=True):
            events = max(1, end[1] - start[1])
            per_event = (end[0] - start[0]) / events
            size = (end[2] - start[2]) / events
            print(
                f"{f'{rate}/s':9} {name:31} {sync:6} {size:7.0f} {events:7d} {batch:9.1f} "
                f"{per_event / 1024:9.2f} {per_event * rate * 86400 / 1e9:8.2f}"
            )


def streams_main(args: argparse.Namespace, tmp: Path) -> None:
    """1 stream against ``args.streams`` round robin: time per event, the same run."""
    cases = [
        ("single stream (0)", 0),
        ("stream 1 alone", 1),
        (f"{args.streams} streams", args.streams),
    ]
    # At 1,000/s (as a bridge meets it: caches cool between commits), and flat out (the CPU
    # cost of a write alone, with a full dedupe window).
    paces = [("1000/s", 1000), ("flat out", 10**9)]
    print(f"{'10 events/commit':28} {'events':>8} {'KiB/event':>9} {'us/event':>8} {'ratio':>6}")
    for pace, rate in paces:
        rows = []
        for i, (label, streams) in enumerate(cases):
            # One after the other: concurrent cases would skew the time per write.
            proc = _spawn(
                "new", "normal", rate, 10, args.fast_seconds, False, tmp / f"{rate}-{i}",
                args.event_bytes, streams,
            )  # fmt: skip
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"{label}: the child failed")
            rows.append((f"{pace}, {label}", json.loads(out)))
        base = rows[0][1]["write_us_per_event"]
        for label, result in rows:
            per_event = result["written"] / max(result["events"], 1)
            us = result["write_us_per_event"]
            print(
                f"{label:28} {result['events']:8d} {per_event / 1024:9.2f} {us:8.1f} "
                f"{us / base:6.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="5 events/s run length")
    parser.add_argument("--fast-seconds", type=float, default=10.0, help="1,000/s run length")
    parser.add_argument("--event-bytes", type=int, default=800)
    parser.add_argument("--dir", default=None, help="a directory on a disk (not tmpfs)")
    parser.add_argument(
        "--bridge", action="store_true", help="the neuroio-events bridge CLI, file sink"
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=0,
        help="compare one stream with this many streams round robin (1,000/s workload)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="new", help=argparse.SUPPRESS)
    parser.add_argument("--sync", default="normal", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--separate-acks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp", prefix="spool-writes-") as d:
        tmp = Path(d)
        if args.bridge:
            bridge_main(args, tmp)
            return
        if args.streams:
            streams_main(args, tmp)
            return
        base = _base_spool_file(tmp)
        designs = [
            ("previous (3b6f9e2)", base, "full"),
            ("previous (3b6f9e2)", base, "normal"),
            ("this spool", "new", "full"),
            ("this spool", "new", "normal"),
        ]
        workloads = [
            ("5/s, 1 event + 1 ack commit", 5, 1, args.seconds, True),
            ("1000/s, 10 events/commit", 1000, 10, args.fast_seconds, False),
        ]
        rows = []
        for w, (label, rate, batch, seconds, separate) in enumerate(workloads):
            procs = [
                (name, sync, _spawn(impl, sync, rate, batch, seconds, separate,
                                    tmp / f"{w}-{i}", args.event_bytes))
                for i, (name, impl, sync) in enumerate(designs)
            ]  # fmt: skip
            for name, sync, proc in procs:
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"{name} {sync} {label}: the child failed")
                result = json.loads(out)
                per_event = result["written"] / max(result["events"], 1)
                rows.append((label, rate, name, sync, result, per_event))
        print(
            f"{'workload':30} {'design':20} {'sync':6} {'event B':>7} {'events':>7} "
            f"{'commits':>7} {'KiB/event':>9} {'GB/day':>8} {'us/event':>8}"
        )
        for label, rate, name, sync, result, per_event in rows:
            print(
                f"{label:30} {name:20} {sync:6} {result['event_bytes']:7d} "
                f"{result['events']:7d} {result['commits']:7d} {per_event / 1024:9.2f} "
                f"{per_event * rate * 86400 / 1e9:8.2f} {result['write_us_per_event']:8.1f}"
            )
        crc = rows[-1][4]["crc_ns_per_event"]
        print(f"CRC-32 of a stored batch: {crc:.0f} ns per event of {rows[-1][4]['event_bytes']} B")


if __name__ == "__main__":
    main()
