"""/fhir/Observation?patient=&date= reaches into the archive for dates Redis no longer holds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.fhir.observations import observations_for
from healthsync.stack import Service
from tests.api.history_data import DAY_S, ask, follow_fhir, reading, to_archive, to_redis
from tests.conftest import Credentials, clear_prefix, make_settings

PATIENT = "PF-7"


@pytest.fixture
def archived(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    return make_settings(broker, redis_server, archive={"url": f"file://{tmp_path}/archive"})


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entries(bundles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry["resource"] for bundle in bundles for entry in bundle.get("entry", [])]


def test_observations_two_days_old_come_back_from_the_archive_with_their_ids(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    old = [
        # Measured at a sub-millisecond instant, as a reading stamped on receipt is.
        reading(archived, PATIENT, 1, now - 2 * DAY_S + 0.0007, heart_rate=71, spo2=97),
        reading(archived, PATIENT, 2, now - 2 * DAY_S + 60, heart_rate=72, bp_sys=120, bp_dia=80),
    ]
    to_archive(archived, old)
    token = credentials.api_keys["clinician"]
    search = f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * DAY_S)}&_sort=date"

    [bundle] = follow_fhir(archived, token, search)

    expected = [o for r in old for o in observations_for(r)]
    assert bundle["total"] == 4
    assert _entries([bundle]) == sorted(expected, key=lambda o: (o["effectiveDateTime"], o["id"]))
    day, coded = ask(
        archived,
        token,
        f"/fhir/Observation?patient=Patient/{PATIENT}&date={_day(now - 2 * DAY_S + 60)}",
        f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * DAY_S)}&code=8867-4",
    )
    assert day.json()["total"] >= 1  # the day of the later reading, whatever hour it is now
    assert {o["resource"]["code"]["coding"][0]["code"] for o in coded.json()["entry"]} == {"8867-4"}
    assert coded.json()["total"] == 2


def test_an_observation_from_the_archive_is_the_one_served_live(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    recent = [
        reading(archived, PATIENT, i, now - 7200 + i + 0.0006, heart_rate=80 + i) for i in range(3)
    ]
    to_archive(archived, recent)
    to_redis(archived, recent)
    token = credentials.api_keys["clinician"]
    search = f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * 3600)}"
    live = _entries(follow_fhir(archived, token, search))
    assert len(live) == 3
    # Redis loses them (a retention of a minute, and the keys gone): the archive answers.
    client = Redis.from_url(str(archived.redis.url))
    clear_prefix(client, archived.redis.prefix)
    client.close()
    later = archived.model_copy(
        update={"redis": archived.redis.model_copy(update={"history_retention_s": 60})}
    )
    assert _entries(follow_fhir(later, token, search)) == live


def test_a_search_across_the_seam_pages_each_observation_once_newest_first(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    ages = [2 * DAY_S, DAY_S + 600, DAY_S - 300, DAY_S - 400, 3600, 120]
    readings = [
        reading(archived, PATIENT, i, now - a, heart_rate=60 + i) for i, a in enumerate(ages)
    ]
    to_archive(archived, readings[:5])  # the last is not rolled yet
    to_redis(archived, readings)  # trims the two older than the retention
    token = credentials.api_keys["clinician"]
    search = f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * DAY_S)}&_count=2"

    bundles = follow_fhir(archived, token, search)

    newest_first = sorted(readings, key=lambda r: r.ts, reverse=True)
    assert [o["id"] for o in _entries(bundles)] == [
        f"{r.reading_id}-heart-rate" for r in newest_first
    ]
    assert [len(b.get("entry", [])) for b in bundles] == [2, 2, 2]
    assert {b["total"] for b in bundles} == {6}


def test_without_a_date_the_search_stays_with_redis(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    to_archive(archived, [reading(archived, PATIENT, 1, now - 2 * DAY_S, heart_rate=70)])
    to_redis(archived, [reading(archived, PATIENT, 2, now - 60, heart_rate=71)])
    [bundle] = follow_fhir(
        archived, credentials.api_keys["clinician"], f"/fhir/Observation?patient={PATIENT}"
    )
    assert bundle["total"] == 1


def test_a_corrupt_archived_object_is_an_operation_outcome_naming_it(
    archived: Settings, credentials: Credentials, tmp_path: Path
) -> None:
    now = time.time()
    keys = to_archive(archived, [reading(archived, PATIENT, 1, now - 2 * DAY_S, heart_rate=70)])
    broken = next(k for k in keys if k.startswith("identified/"))
    (tmp_path / "archive" / broken).write_bytes(b"PAR1 not really parquet PAR1")
    [answer] = ask(
        archived,
        credentials.api_keys["clinician"],
        f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * DAY_S)}",
    )
    assert answer.status_code == 500, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert broken in str(outcome) and "cannot read archived object" in str(outcome)


def test_a_search_out_of_reach_is_a_400_operation_outcome_at_once(
    archived: Settings, credentials: Credentials
) -> None:
    """The archive is read a day at a time: a window opening in the year 1000 read for
    most of a minute; a date in the year 9999 or a 5,000-digit _count was a plain 500."""
    now = time.time()
    to_archive(archived, [reading(archived, PATIENT, 1, now - 2 * DAY_S, heart_rate=70)])
    search = f"/fhir/Observation?patient={PATIENT}"
    answers = ask(
        archived,
        credentials.api_keys["clinician"],
        f"{search}&date=ge1000-01-01&_count=1",
        f"{search}&date=ge{_iso(now - 400 * DAY_S)}",
        f"{search}&date=9999-12-31",
        f"{search}&_count={'9' * 5000}",
        f"{search}&date=ge{_iso(now - 300 * DAY_S)}",
    )
    *refused, within = answers
    for answer, why in zip(
        refused, ("366 days", "366 days", "not a valid date", "maximum"), strict=True
    ):
        assert answer.status_code == 400, answer.text
        outcome = answer.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert why in str(outcome), outcome
    assert within.status_code == 200, within.text
    assert within.json()["total"] == 1


def test_a_live_page_that_scanned_without_a_match_keeps_its_place_before_the_archive(
    archived: Settings, credentials: Credentials
) -> None:
    """A filtered live page whose scan ran out may hold nothing and still link `next`.
    Archived Observations filled that page, and its `next` pointed two days back, past
    every live match the scan had not reached: they were never returned."""
    now = time.time()
    old = reading(archived, PATIENT, 1, now - 2 * DAY_S, heart_rate=70)
    to_archive(archived, [old])
    hourly = reading(archived, PATIENT, 2, now - 3600, heart_rate=71)
    # Newer readings without a heart rate: more than one live page scans.
    others = [reading(archived, PATIENT, 3 + i, now - 1800 + i, spo2=97) for i in range(30)]
    to_redis(archived, [hourly, *others])
    search = f"/fhir/Observation?patient={PATIENT}&date=ge{_iso(now - 3 * DAY_S)}&code=8867-4"

    bundles = follow_fhir(archived, credentials.api_keys["clinician"], search, scan_limit=10)

    assert [o["id"] for o in _entries(bundles)] == [
        f"{hourly.reading_id}-heart-rate",
        f"{old.reading_id}-heart-rate",
    ]
