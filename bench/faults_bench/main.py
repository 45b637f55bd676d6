"""Run the faults one at a time under a steady load, then count what each one cost.

Per phase: the phase's label goes on every reading acknowledged from then on;
the previous phase settles (all its readings stored, or the rest lost for
good); a lead-in of `--lead-in` seconds lets the archive write the previous
phase's readings; then the fault, and the seconds until the rate is back.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from faults_bench.faults import Fault, Injector, faults
from faults_bench.fleet import Fleet, Load
from faults_bench.measure import Watch, recovery
from faults_bench.netns import Namespace
from faults_bench.report import Row, alerts_by_episode, archive_counts, charge_archive, table
from faults_bench.stack import GroupLag, Up
from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.store.archive.setup import Archive

# The most a phase waits for its readings to be stored before the next fault.
_SETTLE_CAP_S = 60.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2000.0, help="readings/s in all")
    p.add_argument("--devices", type=int, default=40)
    p.add_argument("--alerting", type=int, default=20, help="devices that raise alerts")
    p.add_argument("--warm-up", type=float, default=15.0, help="seconds before the first fault")
    p.add_argument("--lead-in", type=float, default=8.0, help="seconds of load before each fault")
    p.add_argument("--stall", type=float, default=5.0, help="seconds Redis stays stopped")
    p.add_argument("--partition", type=float, default=15.0, help="seconds of partition")
    p.add_argument("--cap", type=float, default=45.0, help="most seconds to wait for recovery")
    p.add_argument("--roll", type=float, default=5.0, help="the archiver's roll, seconds")
    p.add_argument(
        "--only", help="run the faults whose name contains one of these (comma-separated)"
    )
    return p.parse_args()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def snapshot_twice(watch: Watch) -> int:
    """Readings stored twice so far, retried while Redis is away."""
    while True:
        try:
            return await asyncio.to_thread(watch.stored_twice)
        except RedisError:
            await asyncio.sleep(1.0)


async def run(
    args: argparse.Namespace, up: Up, chosen: list[Fault], namespace: Namespace | None
) -> list[Row]:
    settings = up.settings()
    codec = Codec.from_settings(settings)
    client = up.redis(settings)
    load = Load(args.devices, args.rate, min(args.alerting, args.devices))
    fleet = Fleet(up.ingest_port, load)
    watch = Watch(
        client,
        codec.keys,
        fleet,
        GroupLag(settings, settings.processor.group_id),
        GroupLag(settings, settings.archive.group_id),
    )
    port = urlsplit(str(settings.redis.url)).port or 6379
    injector = Injector(up, namespace, port, args.stall, args.partition)
    where = "" if namespace is None else ", processor in a namespace"
    rows = {"warm-up": Row(f"no fault (warm-up{where})")}
    sending = asyncio.create_task(fleet.run())
    confirming = asyncio.create_task(watch.run())
    await asyncio.sleep(args.warm_up)
    previous, twice = "warm-up", 0
    for fault in [*chosen, None]:
        phase = fault.name if fault else "after"
        rows[phase] = Row(phase if fault else f"no fault (after the last{where})")
        fleet.phase = phase
        rows[previous].settled = await watch.settle(previous, stable_s=8.0, cap_s=_SETTLE_CAP_S)
        now = await snapshot_twice(watch)
        rows[previous].twice, twice = now - twice, now
        say(f"{previous}: {rows[previous].settled}")
        if fault is None:
            break
        acked, processed = len(fleet.acked), await asyncio.to_thread(watch.processed)
        await asyncio.sleep(args.lead_in)
        stored = await asyncio.to_thread(watch.processed)
        rows[phase].before = (
            (len(fleet.acked) - acked) / args.lead_in,
            None if stored is None or processed is None else (stored - processed) / args.lead_in,
        )
        say(f"injecting: {fault.name}")
        since = time.monotonic()
        await injector.inject(fault)
        rows[phase].recovery = await recovery(watch, since, args.cap, args.roll)
        previous = phase
    await asyncio.sleep(5.0)
    fleet.stopping = True
    await sending
    rows["after"].settled = await watch.settle("after", stable_s=8.0, cap_s=_SETTLE_CAP_S)
    rows["after"].twice = await snapshot_twice(watch) - twice
    confirming.cancel()
    await asyncio.to_thread(watch.confirm)
    await finish(settings, watch, codec, rows, args.cap)
    return list(rows.values())


async def finish(
    settings: Settings, watch: Watch, codec: Codec, rows: dict[str, Row], cap: float
) -> None:
    """Wait for the archive, then count alerts and archived readings per phase."""
    fleet = watch.fleet
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline and await asyncio.to_thread(watch.archiver.lag) != 0:
        await asyncio.sleep(1.0)
    for phase, _device in fleet.acked.values():
        rows[phase].acked += 1
    for phase, row in rows.items():
        row.lost = watch.count(phase)
    kinds = await asyncio.to_thread(alerts_by_episode, watch.client, codec, fleet, rows)
    say("alerts in Redis: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    archive = Archive.from_settings(settings)
    counts = await asyncio.to_thread(archive_counts, archive, fleet.t0 - 60, time.time() + 60)
    charge_archive(counts, fleet, rows)


def _interrupted(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def chosen_faults(args: argparse.Namespace) -> list[Fault]:
    wanted = [part.strip() for part in (args.only or "").split(",") if part.strip()]
    return [
        f
        for f in faults(args.stall, args.partition)
        if not wanted or any(w in f.name for w in wanted)
    ]


def on_one_pipeline(
    args: argparse.Namespace, directory: Path, chosen: list[Fault], namespaced: bool
) -> tuple[list[Row], list[str]]:
    """Start a pipeline, run `chosen` on it, stop it; the rows and the restarts `up` saw."""
    namespace = Namespace.for_this_process() if namespaced else None
    up: Up | None = None
    try:
        if namespace is not None:
            namespace.create()
        up = Up(directory, args.roll, None if namespace is None else namespace.name)
        up.wait_ready()
        say(f"pipeline ready{' (processor in a namespace)' if namespace else ''}; devices start")
        rows = asyncio.run(run(args, up, chosen, namespace))
        return rows, up.restarts()
    finally:
        if up is not None:
            up.stop()
        if namespace is not None:
            namespace.close()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    chosen = chosen_faults(args)
    # Only the partition needs the processor in a namespace, so it gets a pipeline of
    # its own, last; every other fault hits `healthsync up` as shipped.
    pipelines = [
        (name, group, namespaced)
        for name, group, namespaced in (
            ("up", [f for f in chosen if not f.needs_namespace], False),
            ("netns", [f for f in chosen if f.needs_namespace], True),
        )
        if group
    ]
    started = time.monotonic()
    rows: list[Row] = []
    restarts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="healthsync-faults-") as tmp:
        for name, group, namespaced in pipelines:
            directory = Path(tmp) / name
            directory.mkdir()
            got, seen = on_one_pipeline(args, directory, group, namespaced)
            rows += got
            restarts += [f"{name}: {line}" for line in seen]
    print(
        f"offered {args.rate:.0f} readings/s from {args.devices} devices "
        f"({args.alerting} raising alerts); run took {time.monotonic() - started:.0f} s"
    )
    print("\n".join(table(rows, args.cap)))
    print("phases ended: " + "; ".join(f"{r.name}: {r.settled}" for r in rows))
    print("restarts seen by up: " + "; ".join(restarts))
    return 0
