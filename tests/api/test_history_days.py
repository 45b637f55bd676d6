"""History across day objects, hour objects and Redis: /v1/patients/{id}/vitals and the
FHIR Observation search after day compaction serve each reading once, in order."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.stack import Service
from healthsync.store.archive.compact import Compactor
from healthsync.store.archive.days import DAY_S, DayCompactor, day_of
from healthsync.store.archive.setup import Archive
from tests.api.history_data import follow, follow_fhir, reading, to_archive, to_redis
from tests.conftest import Credentials, make_settings

PATIENT = "PV-5151"


@pytest.fixture
def archived(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    return make_settings(broker, redis_server, archive={"url": f"file://{tmp_path}/archive"})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _readings(settings: Settings, now: float) -> list[list[Reading]]:
    """Three archived batches (two days ago, yesterday, the last hours) and the last
    minute, which only Redis holds yet."""
    today = day_of(now) * DAY_S
    times: list[list[float]] = [
        [today - 2 * DAY_S + h * 3600 for h in (8, 12, 20)],
        [today - DAY_S + 6 * 3600, today - DAY_S + 23.5 * 3600],
        [now - 7200, now - 600],
        [now - 60],
    ]
    found: list[list[Reading]] = []
    seq = 0
    for batch in times:
        found.append([])
        for ts in batch:
            found[-1].append(reading(settings, PATIENT, seq, ts, heart_rate=60 + seq))
            seq += 1
    return found


def test_history_across_day_objects_hour_objects_and_redis_comes_back_once_in_order(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    batches = _readings(archived, now)
    offset = 0
    for batch in batches[:3]:
        to_archive(archived, batch, first_offset=offset)
        offset += len(batch)
    every = [r for batch in batches for r in batch]
    to_redis(archived, every)  # the processor's sink keeps the last 24 hours of them
    archive = Archive.from_settings(archived)
    compactor = Compactor(archive.store, archive.crypto, archive.writer())
    today = day_of(now)
    days = DayCompactor(compactor, today=today)
    for day in (today - 2, today - 1):
        days.day("readings", day)
    root = Path(archived.archive.url.removeprefix("file://")) / "identified/readings"
    day_objects = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.parquet"))
    # Two days ago is one day object; yesterday's batch is whole (a later one followed).
    assert [name.split("/")[1] for name in day_objects] == [
        "p0-0-2.compacted.parquet",
        "p0-3-4.compacted.parquet",
    ]
    assert list(root.glob("*/hour=*/p0-0-2.parquet")) == []

    token = credentials.api_keys["clinician"]
    path = f"/v1/patients/{PATIENT}/vitals?since={now - 3 * DAY_S}&until={now}&limit=2"
    pages = follow(archived, token, path)
    got = [point["reading_id"] for page in pages for point in page["readings"]]
    assert got == [r.reading_id for r in sorted(every, key=lambda r: r.ts)]

    search = f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * DAY_S)}&code=8867-4"
    bundles = follow_fhir(archived, token, search)
    entries = [e["resource"] for b in bundles for e in b.get("entry", [])]
    values = sorted(e["valueQuantity"]["value"] for e in entries)
    assert values == [60 + n for n in range(len(every))]
