"""What the bench reads while the pipeline runs: stored readings, rates, backlogs.

:class:`Watch` checks every acknowledged reading against the patient's
`seen` set in Redis (ZMSCORE, once a second, until found), so each phase
knows how many of its readings are not stored yet. A phase is settled once
none are missing, or once the number missing has not moved for `stable_s`
with the processor's consumer group caught up: those readings are lost, and
nothing later can take or give them.

Readings stored twice are the processor's stored-readings counter minus the
distinct ids in the `seen` sets, read in one MULTI so the two agree (the
processor writes both in one transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from redis import Redis
from redis.exceptions import RedisError

from faults_bench.fleet import PATIENT, Fleet
from faults_bench.stack import GroupLag
from healthsync.names import RedisKeys

_CHUNK = 5000
_PROCESSED = "readings_processed_total"


@dataclass
class Watch:
    client: Redis
    keys: RedisKeys
    fleet: Fleet
    processor: GroupLag
    archiver: GroupLag
    # phase -> device -> reading ids acknowledged and not yet seen in Redis
    missing: dict[str, dict[int, set[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )

    def count(self, phase: str) -> int:
        return sum(len(ids) for ids in self.missing[phase].values())

    def confirm(self) -> None:
        """Move the newly acknowledged in, and drop every id Redis now holds."""
        fresh, self.fleet.fresh = self.fleet.fresh, []
        for reading_id, phase, device in fresh:
            self.missing[phase][device].add(reading_id)
        by_device: dict[int, list[str]] = defaultdict(list)
        for devices in self.missing.values():
            for device, ids in devices.items():
                by_device[device].extend(ids)
        pipe = self.client.pipeline(transaction=False)
        asked: list[list[str]] = []
        for device, waiting in by_device.items():
            for start in range(0, len(waiting), _CHUNK):
                chunk = waiting[start : start + _CHUNK]
                pipe.zmscore(self.keys.seen(PATIENT.format(n=device)), chunk)
                asked.append(chunk)
        if not asked:
            return
        found: set[str] = set()
        for chunk, scores in zip(asked, pipe.execute(), strict=True):
            found.update(rid for rid, score in zip(chunk, scores, strict=True) if score is not None)
        for devices in self.missing.values():
            for ids in devices.values():
                ids -= found

    def processed(self) -> int | None:
        try:
            raw = self.client.hget(self.keys.stats("processor"), _PROCESSED)
            return int(cast("bytes", raw) or 0)
        except RedisError:
            return None

    def stored_twice(self) -> int:
        """Readings the processor stored minus distinct readings stored, right now."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.keys.stats("processor"), _PROCESSED)
        for device in range(self.fleet.load.devices):
            pipe.zcard(self.keys.seen(PATIENT.format(n=device)))
        processed, *cards = pipe.execute()
        return int(processed or 0) - sum(int(c) for c in cards)

    async def run(self) -> None:
        """Confirm once a second until cancelled; Redis being down only delays it."""
        while True:
            with contextlib.suppress(RedisError):
                await asyncio.to_thread(self.confirm)
            await asyncio.sleep(1.0)

    async def settle(self, phase: str, stable_s: float, cap_s: float) -> str:
        """Wait until `phase`'s readings are all stored or the rest is lost; how it ended."""
        deadline = time.monotonic() + cap_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            missing = self.count(phase)
            if missing == 0:
                return "all stored"
            if missing != last:
                last, since = missing, time.monotonic()
            elif time.monotonic() - since >= stable_s:
                lag = await asyncio.to_thread(self.processor.lag)
                if lag is not None and lag < self.fleet.load.rate:
                    return f"{missing} never stored"
            await asyncio.sleep(1.0)
        return f"{self.count(phase)} still missing after {cap_s:.0f} s"


@dataclass(frozen=True)
class Recovery:
    """Seconds from the fault until the rate was back, for the pipeline and the archive."""

    pipeline: float | None
    archive: float | None


async def _first(test: Callable[[], bool | None], since: float, cap_s: float) -> float | None:
    """Seconds from `since` until `test` held twice running (checked each second)."""
    good_at: float | None = None
    while time.monotonic() - since < cap_s:
        started = time.monotonic()
        await asyncio.sleep(1.0)
        if await asyncio.to_thread(test):
            if good_at is not None:
                return round(good_at - since, 1)
            good_at = started
        else:
            good_at = None
    return None


async def recovery(watch: Watch, since: float, cap_s: float, roll_s: float) -> Recovery:
    """Rate back: acknowledged and stored readings per second both >= 90% of offered, for
    two 1-s windows running; the archive back when its backlog is under one roll and 2 s."""
    rate = watch.fleet.load.rate
    last: list[int | None] = [len(watch.fleet.acked), watch.processed()]

    def pipeline_ok() -> bool:
        acked, processed = len(watch.fleet.acked), watch.processed()
        acked_before, processed_before = last
        last[:] = [acked, processed]
        if processed is None or processed_before is None or acked_before is None:
            print(f"  acked/s {acked - (acked_before or 0)}, Redis away", file=sys.stderr)
            return False
        print(
            f"  acked/s {acked - acked_before}, stored/s {processed - processed_before}",
            file=sys.stderr,
        )
        return acked - acked_before >= 0.9 * rate and processed - processed_before >= 0.9 * rate

    def archive_ok() -> bool:
        lag = watch.archiver.lag()
        return lag is not None and lag <= rate * (roll_s + 2)

    pipeline, archive = await asyncio.gather(
        _first(pipeline_ok, since, cap_s), _first(archive_ok, since, cap_s)
    )
    return Recovery(pipeline, archive)
