"""/v1/patients/{id}/vitals over Redis and the archive: one ordered, paged list of readings."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.security.keyring import Keyring
from healthsync.stack import Service
from tests.api.history_data import DAY_S, ask, follow, reading, to_archive, to_redis
from tests.conftest import Credentials, make_settings

PATIENT = "PV-4242"


@pytest.fixture
def archived(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    return make_settings(broker, redis_server, archive={"url": f"file://{tmp_path}/archive"})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _seam_readings(settings: Settings, now: float) -> tuple[list[Reading], list[Reading]]:
    """(archived, in Redis): readings two days old only in the archive, those near the
    retention's end in both, the last minutes only in Redis (not yet rolled)."""
    ages = [2 * DAY_S, 2 * DAY_S - 600, DAY_S + 3600, DAY_S - 300, DAY_S - 360, 7200, 600, 60]
    readings = [
        reading(settings, PATIENT, i, now - age, heart_rate=60 + i) for i, age in enumerate(ages)
    ]
    # Two devices measuring in the same millisecond: both kept, ordered by reading id.
    twin = reading(settings, PATIENT, 100, now - DAY_S - 3600, heart_rate=99)
    twin = Reading(twin.reading_id, "mon-twin", PATIENT, twin.ts, twin.received_at, twin.vitals)
    readings.append(twin)
    return [*readings[:6], twin], readings


def test_a_range_across_the_seam_comes_back_once_in_order_over_small_pages(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    in_archive, in_redis = _seam_readings(archived, now)
    to_archive(archived, in_archive)
    to_redis(archived, in_redis)
    expected = sorted(in_redis, key=lambda r: (round(r.ts * 1000), r.reading_id))
    token = credentials.api_keys["clinician"]
    since = now - 3 * DAY_S
    path = f"/v1/patients/{PATIENT}/vitals?vital=heart_rate&since={since}&until={now}&limit=2"

    pages = follow(archived, token, path)

    assert [len(p["readings"]) for p in pages] == [2, 2, 2, 2, 1]
    got = [point for p in pages for point in p["readings"]]
    assert [p["reading_id"] for p in got] == [r.reading_id for r in expected]
    assert [p["vitals"] for p in got] == [r.vitals for r in expected]
    assert [p["ts"] for p in got] == pytest.approx([r.ts for r in expected], abs=0.001)
    # The oldest readings are gone from Redis: they came from the archive.
    redis_only = follow(archived, token, path.replace(f"since={since}", f"since={now - 3600}"))
    recent = [p["reading_id"] for p in redis_only[0]["readings"]]
    assert recent == [r.reading_id for r in expected[-2:]]


def test_iso_8601_periods_and_epoch_seconds_give_the_same_readings(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    in_archive, _ = _seam_readings(archived, now)
    to_archive(archived, in_archive)
    since, until = now - 2 * DAY_S - 60, now - DAY_S
    base = f"/v1/patients/{PATIENT}/vitals"
    offset = datetime.fromtimestamp(until, UTC).isoformat().replace("+", "%2B")
    epoch, iso = ask(
        archived,
        credentials.api_keys["clinician"],
        f"{base}?since={since}&until={until}",
        f"{base}?since={_iso(since)}&until={offset}",
    )
    assert epoch.status_code == iso.status_code == 200, iso.text
    assert epoch.json()["readings"] == iso.json()["readings"]
    assert len(iso.json()["readings"]) == 4
    assert iso.json()["next_cursor"] is None
    naive, words, infinite = ask(
        archived,
        credentials.api_keys["clinician"],
        f"{base}?since=2026-11-28T10:00:00",
        f"{base}?since=yesterday",
        f"{base}?until=inf",
    )
    assert naive.status_code == 400 and "no time zone" in naive.text
    assert words.status_code == 400 and "neither ISO 8601 nor epoch" in words.text
    assert infinite.status_code == 422


def test_until_alone_asks_for_the_default_span_before_it(
    archived: Settings, credentials: Credentials
) -> None:
    """The default `since` was an hour before now, whatever `until` said: `until` two
    hours ago alone was a 400, "since must not be after until", for a since never sent."""
    now = time.time()
    in_archive, in_redis = _seam_readings(archived, now)
    to_archive(archived, in_archive)
    to_redis(archived, in_redis)
    until = now - 7200 + 1  # just after the reading two hours old; the next is 10 min old
    [answer] = ask(
        archived,
        credentials.api_keys["clinician"],
        f"/v1/patients/{PATIENT}/vitals?until={until}",
    )
    assert answer.status_code == 200, answer.text
    assert [p["reading_id"] for p in answer.json()["readings"]] == [in_redis[5].reading_id]
    assert answer.json()["since"] == pytest.approx(until - 3600)


def test_a_cursor_is_opaque_and_one_tampered_or_moved_is_refused(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    in_archive, _ = _seam_readings(archived, now)
    to_archive(archived, in_archive)
    token = credentials.api_keys["clinician"]
    path = f"/v1/patients/{PATIENT}/vitals?since={now - 3 * DAY_S}&until={now}&limit=1"
    [first] = ask(archived, token, path)
    cursor = first.json()["next_cursor"]
    assert cursor
    shown = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    point = first.json()["readings"][0]
    for secret in (PATIENT, point["reading_id"], str(round(point["ts"] * 1000))):
        assert secret.encode() not in shown and secret not in cursor
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    tampered, other_patient, other_vital, garbage, good = ask(
        archived,
        token,
        f"{path}&cursor={flipped}",
        path.replace(PATIENT, "PV-OTHER") + f"&cursor={cursor}",
        f"{path}&vital=spo2&cursor={cursor}",
        f"{path}&cursor=not-a-cursor",
        f"{path}&cursor={cursor}",
    )
    for refused in (tampered, other_patient, other_vital, garbage):
        assert refused.status_code == 400, refused.text
        assert "cursor is not valid for this query" in refused.json()["error"]["message"]
    assert good.status_code == 200
    assert good.json()["readings"][0]["ts"] > point["ts"]
    [metrics] = ask(archived, token, "/metrics")
    assert "healthsync_api_bad_cursor_total" in metrics.text


@pytest.mark.parametrize("damage", ["truncated", "foreign key"])
def test_an_archived_object_that_cannot_be_read_fails_the_answer_naming_it(
    archived: Settings, credentials: Credentials, tmp_path: Path, damage: str
) -> None:
    now = time.time()
    in_archive, _ = _seam_readings(archived, now)
    keys = to_archive(archived, in_archive)
    broken = next(k for k in keys if k.startswith("identified/"))
    reader = archived
    if damage == "truncated":
        path = tmp_path / "archive" / broken
        path.write_bytes(path.read_bytes()[:-40])
    else:
        foreign = tmp_path / "foreign-keyring.json"
        Keyring.generate().save(foreign)
        reader = archived.model_copy(
            update={"crypto": archived.crypto.model_copy(update={"keyring_file": foreign})}
        )
    [answer] = ask(
        reader,
        credentials.api_keys["clinician"],
        f"/v1/patients/{PATIENT}/vitals?since={now - 3 * DAY_S}&until={now}",
    )
    assert answer.status_code == 500, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith("cannot read archived object file://") and broken in message
    assert PATIENT not in answer.text


def test_an_unknown_patient_is_still_404_and_an_archived_one_is_not(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    in_archive, _ = _seam_readings(archived, now)
    to_archive(archived, in_archive)
    unknown, discharged = ask(
        archived,
        credentials.api_keys["clinician"],
        "/v1/patients/PV-NOBODY/vitals",
        f"/v1/patients/{PATIENT}/vitals?since={now - 3 * DAY_S}",
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "no vitals for patient PV-NOBODY"
    # Redis answers for its retention (less a margin); the archive for what is older.
    older = [r for r in in_archive if r.ts < now - DAY_S + 900]
    assert discharged.status_code == 200 and len(discharged.json()["readings"]) == len(older)
