"""Hourly trends from the latest `trends` job run where it covers the period: the same
buckets and values as computing them from Redis and the archive, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis import Redis

from healthsync.config import Settings
from healthsync.jobs.base import JobParams
from healthsync.jobs.execute import Executor
from healthsync.jobs.output import LocalStore
from healthsync.jobs.trends import Trends
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.period import MemoryArchive
from healthsync.store.runs import RunStore
from tests.api.test_history import PATIENT, T0, get, reading
from tests.conftest import Credentials, make_settings
from tests.test_cli import run_cli

# Hours 10, 11 and 12 of 2026-11-28 (older than Redis keeps: the archive has them).
VALUES = [(T0 + 60, 80), (T0 + 1200, 70), (T0 + 3000, 90), (T0 + 3600, 60), (T0 + 4000, 64),
          (T0 + 5000, 100), (T0 + 7300, 62), (T0 + 7400, 63)]  # fmt: skip
BY_HAND = [
    {"start": T0, "count": 3, "min": 70, "max": 90, "mean": 80, "median": 80},
    {"start": T0 + 3600, "count": 3, "min": 60, "max": 100, "mean": 74.667, "median": 64},
    {"start": T0 + 7200, "count": 2, "min": 62, "max": 63, "mean": 62.5, "median": 62.5},
]


def trends(settings: Settings, token: str, since: float, bucket: str = "1h") -> dict[str, Any]:
    answer = get(
        settings,
        token,
        f"/v1/patients/{PATIENT}/trends?vital=heart_rate&bucket={bucket}"
        f"&since={since}&until={T0 + 3 * 3600}",
    )
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def test_hours_a_trends_run_covered_come_from_it_and_read_the_same(
    broker: Service, redis_server: Service, credentials: Credentials, tmp_path: Path
) -> None:
    url = f"file://{tmp_path}/archive"
    settings = make_settings(broker, redis_server, archive={"url": url}, jobs={"output_url": url})
    batch = [reading(i, ts, hr) for i, (ts, hr) in enumerate(VALUES)]
    Archive.from_settings(settings).writer().write_readings(Span(0, 0, len(batch) - 1), batch)
    token = credentials.api_keys["clinician"]

    computed = trends(settings, token, T0)
    assert (computed["buckets"], computed["precomputed"]) == (BY_HAND, None)
    half = trends(settings, token, T0 + 1800)  # hour 10 only from 10:30: one reading
    assert half["buckets"][0] == {
        "start": T0, "count": 1, "min": 90, "max": 90, "mean": 90, "median": 90
    }  # fmt: skip
    five = trends(settings, token, T0, "5m")

    # The trends job over hours 10 and 11, on the same readings.
    assert settings.redis.url
    runs = RunStore(Redis.from_url(settings.redis.url), settings.redis.keys)
    executor = Executor(
        runs,
        LocalStore(tmp_path / "archive"),
        MemoryArchive(batch),
        60,
        Codec.from_settings(settings),
    )
    executor.run(Trends(), JobParams("trends-1", T0, T0 + 2 * 3600))

    answer = trends(settings, token, T0)
    assert answer["buckets"] == BY_HAND
    assert answer["precomputed"] == {"run_id": "trends-1", "since": T0, "until": T0 + 2 * 3600}
    again = trends(settings, token, T0 + 1800)
    assert again["buckets"] == half["buckets"]
    assert again["precomputed"]["since"] == T0 + 3600  # hour 10 is cut: computed
    assert trends(settings, token, T0, "5m") == five  # no 5-minute buckets precomputed

    # Hours 10 and 11 are the run's: without their archived readings they still answer;
    # hour 12, after the run's period, is computed and goes with them.
    for path in (tmp_path / "archive/identified").rglob("*.parquet"):
        path.unlink()
    assert trends(settings, token, T0)["buckets"] == BY_HAND[:2]


def test_a_trends_run_sealed_under_a_retired_key_is_still_read_after_rewrap(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    private_keyring: Path,
    tmp_path: Path,
) -> None:
    """Rotate, rewrap, retire: the run's files move to the new key, so the route still
    answers from them rather than from the archive (which here holds nothing)."""
    url = f"file://{tmp_path}/archive"
    settings = make_settings(
        broker,
        redis_server,
        archive={"url": url},
        jobs={"output_url": url},
        crypto={"keyring_file": str(private_keyring)},
    )
    batch = [reading(i, ts, hr) for i, (ts, hr) in enumerate(VALUES)]
    assert settings.redis.url
    runs = RunStore(Redis.from_url(settings.redis.url), settings.redis.keys)
    store = LocalStore(tmp_path / "archive")
    executor = Executor(runs, store, MemoryArchive(batch), 60, Codec.from_settings(settings))
    executor.run(Trends(), JobParams("trends-1", T0, T0 + 2 * 3600))
    assert run_cli(settings, "keys", "rotate").returncode == 0

    refused = run_cli(settings, "keys", "retire", "k1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "still seals 1 job output files" in refused.stderr, refused.stderr
    assert "healthsync keys rewrap" in refused.stderr
    rewrapped = run_cli(settings, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stdout + rewrapped.stderr
    assert "rewrote 1 of 1 sealed job output files" in rewrapped.stdout, rewrapped.stdout
    retired = run_cli(settings, "keys", "retire", "k1")
    assert retired.returncode == 0, retired.stdout + retired.stderr

    answer = trends(settings, credentials.api_keys["clinician"], T0)
    assert answer["precomputed"] == {"run_id": "trends-1", "since": T0, "until": T0 + 2 * 3600}
    assert answer["buckets"] == BY_HAND[:2]
    runs.client.close()
