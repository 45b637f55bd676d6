"""`trends` over a small dataset, every figure worked out by hand.

P-1 heart rate: 60 at 10:00, 70 at 10:30, 80 at 11:00 on 2026-11-30, and 90 six days
earlier (11-24 11:00), which only the 7-day direction sees. P-2 SpO2: 95 at 10:05, 91
at 10:20. The period is 10:00 to 12:00.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis import Redis

from healthsync.commands.jobs import jobs_for
from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.jobs.base import JobParams
from healthsync.jobs.execute import Executor
from healthsync.jobs.output import JobOutput, LocalStore
from healthsync.jobs.trends import Trends
from healthsync.security.codec import Codec
from healthsync.store.period import MemoryArchive
from healthsync.store.runs import RunStore
from tests.jobs.dataset import SINCE, UNTIL, t

DAY_START = SINCE - 10 * 3600


def reading(patient: str, ts: float, **vitals: float) -> Reading:
    return Reading(f"r-{patient}-{ts}", "mon-1", patient, ts, ts, vitals)


READINGS = [
    reading("P-1", t("10:00"), heart_rate=60),
    reading("P-1", t("10:30"), heart_rate=70),
    reading("P-1", t("11:00"), heart_rate=80),
    reading("P-1", t("11:00") - 6 * 86400, heart_rate=90),
    reading("P-2", t("10:05"), spo2=95),
    reading("P-2", t("10:20"), spo2=91),
]


@pytest.fixture
def store(
    settings: Settings, redis: Redis, codec: Codec, tmp_path: Path
) -> tuple[Executor, LocalStore]:
    local = LocalStore(tmp_path / "archive")
    runs = RunStore(redis, settings.redis.keys)
    return Executor(runs, local, MemoryArchive(READINGS), lock_ttl_s=60, codec=codec), local


def test_aggregates_directions_and_news2_match_the_hand_count(
    store: tuple[Executor, LocalStore], codec: Codec
) -> None:
    executor, local = store
    record = executor.run(Trends(), JobParams("t1", SINCE, UNTIL))
    output = JobOutput(local, "trends", "t1")
    one = output.read_sealed(f"patients/{codec.pseudonym('P-1')}.json", codec)
    heart = one["vitals"]["heart_rate"]
    assert one["patient_id"] == "P-1"
    assert heart["hourly"] == [
        {"start": t("10:00"), "count": 2, "min": 60, "max": 70, "mean": 65.0, "median": 65.0},
        {"start": t("11:00"), "count": 1, "min": 80, "max": 80, "mean": 80.0, "median": 80.0},
    ]
    assert heart["daily"] == [
        {"start": DAY_START, "count": 3, "min": 60, "max": 80, "mean": 70.0, "median": 70.0}
    ]
    # +10/min every half hour: 20 per hour over the hour the readings span.
    assert heart["last_24h"] == {
        "samples": 3,
        "span_h": 1.0,
        "rate_per_h": 20.0,
        "change": 20.0,
        "direction": "rising",
    }
    # With the 90 from six days before, the week's fitted line falls: slope -2142.5 /
    # 15444.6875 per hour (least squares over x = -143, 0, 0.5, 1 h), over 144 h.
    assert heart["last_7d"] == {
        "samples": 4,
        "span_h": 144.0,
        "rate_per_h": -0.139,
        "change": -19.976,
        "direction": "falling",
    }
    assert one["news2"] == [
        {"start": t("10:00"), "max": 0, "last": 0, "band": "low", "complete": False},
        {"start": t("11:00"), "max": 0, "last": 0, "band": "low", "complete": False},
    ]
    two = output.read_sealed(f"patients/{codec.pseudonym('P-2')}.json", codec)
    # SpO2 95 scores 1, then 91 scores 3: a single parameter at 3 is band low-medium.
    assert two["news2"] == [
        {"start": t("10:00"), "max": 3, "last": 3, "band": "low-medium", "complete": False}
    ]
    # -4 points in a quarter hour: -16 per hour, beyond the SpO2 margin of 2.
    assert two["vitals"]["spo2"]["last_24h"]["rate_per_h"] == -16.0
    assert two["vitals"]["spo2"]["last_24h"]["direction"] == "falling"
    summary = {"patients": 2, "last_24h": {"heart_rate": {"rising": 1}, "spo2": {"falling": 1}}}
    assert record.summary == summary
    written = local.root / "jobs/trends/t1"
    assert (
        json.loads((written / "summary.json").read_text())
        == {
            "since": SINCE,
            "until": UNTIL,
        }
        | summary
    )
    # What names a patient is sealed, under a pseudonym.
    for path in written.rglob("*"):
        if path.is_file():
            assert b"P-1" not in path.read_bytes() and "P-1" not in path.name


def test_a_patient_without_readings_in_the_period_gets_no_file(
    store: tuple[Executor, LocalStore],
) -> None:
    executor, local = store
    record = executor.run(Trends(), JobParams("t2", t("11:30"), UNTIL))
    assert record.summary["patients"] == 0
    assert not (local.root / "jobs/trends/t2/patients").exists()


def test_the_job_holds_a_direction_to_the_configured_margins(
    store: tuple[Executor, LocalStore], settings: Settings, codec: Codec
) -> None:
    """The job the command runs used the default margins whatever `anomaly.margins`
    said: a heart rate 20/min up called rising where the ward counts 30 as steady."""
    settings.anomaly.margins["heart_rate"] = 30.0
    executor, local = store
    executor.run(jobs_for(settings)["trends"], JobParams("t3", SINCE, UNTIL))
    one = JobOutput(local, "trends", "t3").read_sealed(
        f"patients/{codec.pseudonym('P-1')}.json", codec
    )
    assert one["vitals"]["heart_rate"]["last_24h"]["direction"] == "steady"
