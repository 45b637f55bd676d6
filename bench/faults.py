"""Fault injection on a running `healthsync up`: what each fault costs, measured.

Starts `healthsync up` in a temporary directory, drives it with simulated
devices at a fixed rate (default 2,000 readings/s), and injects one fault at
a time: kill -9 of ingest, the processor, redis-server, the broker and its
HAProxy front, and a Redis stall (SIGSTOP for 5 s). The devices behave as
`docs/OPERATIONS.md` asks of real ones: an unanswered or refused line is sent
again, with the same `seq`, on a new connection after a backoff.

For each fault it prints: acknowledged readings lost (acknowledged during the
phase, not in Redis once the pipeline settled; the next fault waits until the
backlog is processed, so a loss belongs to its phase), readings stored twice
(readings the processor stored minus distinct readings in Redis, for the
whole run), and seconds until the processor was back at the offered rate.
No alerts are raised by this load, so alerts are not counted. Figures are
printed, never asserted (STYLE.md).

Run: ``.venv/bin/python bench/faults.py [--rate 2000] [--devices 40]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError

from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.stack import free_port

# The processor counts as recovered once it stores this share of the offered rate.
_RECOVERED_SHARE = 0.9
_RECOVERY_CAP_S = 90.0
_RECONNECT_S = 0.5


@dataclass(frozen=True)
class Fault:
    name: str
    pattern: str  # the victim's command line
    action: str  # "kill" or "stall"


FAULTS = [
    Fault("kill -9 ingest", r"-m healthsync ingest", "kill"),
    Fault("kill -9 processor", r"-m healthsync process", "kill"),
    Fault("kill -9 redis-server", r"redis-server", "kill"),
    Fault("redis stall (SIGSTOP 5 s)", r"redis-server", "stall"),
    Fault("kill -9 HAProxy (broker TLS front)", r"haproxy .*broker-tls", "kill"),
    Fault("kill -9 broker (Tansu, in memory)", r"tansu.* broker ", "kill"),
]


@dataclass
class Fleet:
    """Devices sending `rate` readings/s in all; every OK is kept with its phase."""

    port: int
    devices: int
    rate: float
    phase: str = "warm-up"
    acked: dict[str, str] = field(default_factory=dict)  # reading id -> phase
    stopping: bool = False

    async def run(self) -> None:
        await asyncio.gather(*(self._device(n) for n in range(self.devices)))

    async def _device(self, number: int) -> None:
        interval = self.devices / self.rate
        seq = 0
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        next_at = time.monotonic()
        while not self.stopping:
            line = f"device_id=bench-{number} patient_id=B-{number} seq={seq} hr={60 + seq % 30}\n"
            try:
                connection = connection or await asyncio.open_connection("127.0.0.1", self.port)
                connection[1].write(line.encode())
                reply = await asyncio.wait_for(connection[0].readline(), timeout=10)
            except (OSError, TimeoutError):
                reply = b""
            if reply.startswith(b"OK "):
                self.acked[reply.split()[1].decode()] = self.phase
                seq += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                continue
            if connection is not None:  # resend the same seq on a new connection
                connection[1].close()
                connection = None
            await asyncio.sleep(_RECONNECT_S)
            next_at = time.monotonic()


class Up:
    """`healthsync up` in a directory, its processes and its Redis."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ingest_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
        env |= {
            "HEALTHSYNC_INGEST_PORT": str(self.ingest_port),
            "HEALTHSYNC_INGEST_TLS_PORT": str(free_port()),
            "HEALTHSYNC_API_PORT": str(free_port()),
        }
        self.log = (directory / "up.out").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "healthsync", "up"],
            cwd=directory,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return (self.directory / "up.out").read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"healthsync up did not start:\n{self.output()}")
            time.sleep(0.2)

    def redis(self) -> Redis:
        url = next(ln.split()[1] for ln in self.output().splitlines() if ln.startswith("redis "))
        ca = self.directory / "run" / "certs" / "ca.crt"
        return Redis.from_url(url, ssl_ca_certs=str(ca), socket_timeout=2)

    def pid(self, pattern: str) -> int:
        regex = re.compile(pattern)
        for pid in _descendants(self.process.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if regex.search(cmd):
                return pid
        raise SystemExit(f"no process matches {pattern}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found.extend(sorted(frontier))
    return found


class Meter:
    """The processor's stored-readings counter, read from Redis (None while unreachable)."""

    def __init__(self, up: Up) -> None:
        self.client = up.redis()

    def processed(self) -> int | None:
        try:
            raw = self.client.hget("hs:stats:processor", "readings_processed_total")
        except RedisError:
            return None
        return int(cast("bytes", raw) or 0)


async def recovery_seconds(meter: Meter, rate: float, since: float) -> float | None:
    """Seconds from `since` until two 1-s windows stored at least the offered share."""
    good = 0
    previous = await asyncio.to_thread(meter.processed)
    while time.monotonic() - since < _RECOVERY_CAP_S:
        await asyncio.sleep(1.0)
        current = await asyncio.to_thread(meter.processed)
        if (
            current is not None
            and previous is not None
            and current - previous >= rate * _RECOVERED_SHARE
        ):
            good += 1
            if good == 2:
                return round(time.monotonic() - since - 1.0, 1)
        else:
            good = 0
        previous = current
    return None


def inject(up: Up, fault: Fault) -> None:
    pid = up.pid(fault.pattern)
    if fault.action == "kill":
        os.kill(pid, signal.SIGKILL)
        return
    os.kill(pid, signal.SIGSTOP)
    time.sleep(5)
    os.kill(pid, signal.SIGCONT)


async def run_faults(up: Up, fleet: Fleet, faults: list[Fault]) -> dict[str, float | None]:
    meter = Meter(up)
    recovery: dict[str, float | None] = {}
    await asyncio.sleep(15)  # consumer group joined, rate steady
    for fault in faults:
        fleet.phase = fault.name
        print(f"injecting: {fault.name}", file=sys.stderr, flush=True)
        since = time.monotonic()
        await asyncio.to_thread(inject, up, fault)
        recovery[fault.name] = await recovery_seconds(meter, fleet.rate, since)
        await drained(meter, fleet)
        await asyncio.sleep(5)
    return recovery


async def drained(meter: Meter, fleet: Fleet) -> None:
    """Wait until the backlog the fault left is processed (within a second of load).

    Then the next fault starts from a caught-up pipeline and each loss is its own.
    """
    deadline = time.monotonic() + _RECOVERY_CAP_S
    while time.monotonic() < deadline:
        processed = await asyncio.to_thread(meter.processed)
        if processed is not None and processed >= len(fleet.acked) - fleet.rate:
            return
        await asyncio.sleep(0.5)
    print("backlog not drained; the next fault's figures include it", file=sys.stderr)


def stored_ids(client: Redis, keys: Any, devices: int) -> set[str]:
    found: set[str] = set()
    for n in range(devices):
        members = cast("list[bytes]", client.zrange(keys.seen(f"B-{n}"), 0, -1))
        found.update(m.decode() for m in members)
    return found


def settle(up: Up, fleet: Fleet, timeout: float = 60) -> tuple[set[str], int]:
    """Wait until Redis holds every acknowledged reading or `timeout`; stored ids and count."""
    client = up.redis()
    keys = Codec.from_settings(
        Settings(crypto={"keyring_file": up.directory / "run" / "keyring.json"})
    ).keys
    deadline = time.monotonic() + timeout
    stored: set[str] = set()
    while time.monotonic() < deadline:
        stored = stored_ids(client, keys, fleet.devices)
        if set(fleet.acked) <= stored:
            break
        time.sleep(1)
    processed = int(
        cast("bytes", client.hget("hs:stats:processor", "readings_processed_total")) or 0
    )
    return stored, processed


def report(
    fleet: Fleet, stored: set[str], processed: int, recovery: dict[str, float | None]
) -> None:
    print(
        f"offered {fleet.rate:.0f} readings/s from {fleet.devices} devices; "
        f"{len(fleet.acked)} acknowledged, {len(stored)} in Redis, "
        f"stored twice in all: {processed - len(stored)}"
    )
    print("| fault | acknowledged | lost | seconds to rate |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in recovery.items():
        phase = [rid for rid, p in fleet.acked.items() if p == name]
        lost = sum(1 for rid in phase if rid not in stored)
        shown = f"{seconds:.1f}" if seconds is not None else f"> {_RECOVERY_CAP_S:.0f}"
        print(f"| {name} | {len(phase)} | {lost} | {shown} |")


async def main_async(args: argparse.Namespace, up: Up, faults: list[Fault]) -> None:
    fleet = Fleet(up.ingest_port, args.devices, args.rate)
    sending = asyncio.create_task(fleet.run())
    recovery = await run_faults(up, fleet, faults)
    fleet.stopping = True
    await sending
    stored, processed = await asyncio.to_thread(settle, up, fleet)
    report(fleet, stored, processed, recovery)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="readings/s in all")
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--only", help="run the faults whose name contains this")
    args = parser.parse_args()
    faults = [f for f in FAULTS if args.only is None or args.only in f.name]
    with tempfile.TemporaryDirectory(prefix="healthsync-faults-") as tmp:
        up = Up(Path(tmp))
        try:
            up.wait_ready()
            asyncio.run(main_async(args, up, faults))
            restarts = [ln for ln in up.output().splitlines() if "exited with code" in ln]
            print("restarts seen by up: " + "; ".join(restarts))
        finally:
            up.stop()


if __name__ == "__main__":
    main()
