"""`healthsync keys retire` and `keys rewrap` against the jobs' sealed output files.

A job seals what names a patient with the key that was active when it ran, so
retiring that key would leave the run's files unreadable: retire refuses while
any file is sealed under it, rewrap seals each again under the active key at
the same name, and then retire goes through with every file still readable.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.jobs.output import JobOutput, open_store
from healthsync.security.codec import Codec
from healthsync.security.crypto import key_id_of
from healthsync.security.keyring import Keyring
from healthsync.stack import Service
from healthsync.store.runs import RunStore
from tests.store.archive.conftest import Moto, moto  # noqa: F401 - the fixture
from tests.test_cli import run_cli

DOCS = {
    "patients/a.json": {"patient": "PX-1", "heart_rate": [{"count": 3, "mean": 80}]},
    "patients/b.json": {"patient": "PX-2", "spo2": [{"count": 2, "mean": 95.5}]},
}
SUMMARY = {"patients": 2}


def _settings(redis_server: Service, keyring: Path, tmp_path: Path, jobs_url: str) -> Settings:
    return Settings(
        redis={
            "url": f"redis://{redis_server.host}:{redis_server.port}/0",
            "prefix": f"t{uuid.uuid4().hex[:10]}",
        },
        crypto={"keyring_file": str(keyring)},
        archive={"url": (tmp_path / "archive").as_uri()},
        jobs={"output_url": jobs_url},
    )


def _write_run(settings: Settings, job: str, run_id: str, docs: dict[str, Any]) -> JobOutput:
    """A run's files as a job writes them: sealed documents and a plain summary."""
    output = JobOutput(open_store(settings.jobs.output_url), job, run_id)
    codec = Codec.from_settings(settings)
    for name, doc in docs.items():
        output.write_sealed(name, doc, codec)
    output.write_json("summary.json", SUMMARY)
    output.commit()
    return output


def _sealed_under(output: JobOutput, docs: dict[str, Any]) -> list[str | None]:
    return [key_id_of(output.store.get(output.prefix + name)) for name in docs]


def _rotate(keyring: Path) -> None:
    ring = Keyring.load(keyring)
    ring.rotate()
    ring.save(keyring)


def test_retire_refuses_while_job_files_are_sealed_under_the_key_and_succeeds_after_rewrap(
    redis_server: Service, private_keyring: Path, tmp_path: Path
) -> None:
    url = (tmp_path / "jobs-out").as_uri()
    settings = _settings(redis_server, private_keyring, tmp_path, url)
    old = _write_run(settings, "trends", "trends-1", DOCS)
    summary = old.store.get(old.prefix + "summary.json")
    _rotate(private_keyring)
    new = _write_run(settings, "reprocess", "reprocess-1", {"alerts.json": [{"kind": "hr"}]})
    assert _sealed_under(old, DOCS) == ["k1", "k1"]

    refused = run_cli(settings, "keys", "retire", "k1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"still seals 2 job output files in {url}" in refused.stderr, refused.stderr
    assert "healthsync keys rewrap" in refused.stderr
    assert "k1" in Keyring.load(private_keyring).keys, "nothing was retired"

    rewrapped = run_cli(settings, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stdout + rewrapped.stderr
    assert f"rewrote 2 of 3 sealed job output files in {url} under k2" in rewrapped.stdout
    assert _sealed_under(old, DOCS) == ["k2", "k2"]
    assert old.store.get(old.prefix + "summary.json") == summary, "plain files are left as-is"
    left = [p.name for p in (tmp_path / "jobs-out").rglob(".*")]
    assert left == [], "no temporary file is left behind"
    again = run_cli(settings, "keys", "rewrap")
    assert "rewrote 0 of 3 sealed job output files" in again.stdout, again.stdout

    retired = run_cli(settings, "keys", "retire", "k1")
    assert retired.returncode == 0, retired.stdout + retired.stderr
    assert f"no job output file in {url} is sealed under k1 (3 sealed files)" in retired.stdout
    assert Keyring.load(private_keyring).retired == ["k1"]
    codec = Codec.from_settings(settings)
    assert {name: old.read_sealed(name, codec) for name in DOCS} == DOCS
    assert new.read_sealed("alerts.json", codec) == [{"kind": "hr"}]


def test_rewrap_leaves_a_running_jobs_files_for_the_next_rewrap(
    redis_server: Service, private_keyring: Path, tmp_path: Path
) -> None:
    """A run that reuses its run id could write a file while it is being resealed."""
    url = (tmp_path / "jobs-out").as_uri()
    settings = _settings(redis_server, private_keyring, tmp_path, url)
    output = _write_run(settings, "trends", "trends-1", DOCS)
    _rotate(private_keyring)
    assert settings.redis.url
    runs = RunStore(Redis.from_url(settings.redis.url), settings.redis.keys)
    runs.acquire("trends", "trends-1", 60)

    busy = run_cli(settings, "keys", "rewrap")
    assert busy.returncode == 1, busy.stdout + busy.stderr
    assert "rewrote 0 of 2 sealed job output files" in busy.stdout, busy.stdout
    assert "job trends is already running (run trends-1)" in busy.stdout
    assert _sealed_under(output, DOCS) == ["k1", "k1"]
    assert runs.holder("trends") == "trends-1"

    runs.release("trends", "trends-1")
    done = run_cli(settings, "keys", "rewrap")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rewrote 2 of 2 sealed job output files" in done.stdout
    assert _sealed_under(output, DOCS) == ["k2", "k2"]
    assert runs.holder("trends") is None, "the job can run again"
    runs.client.close()


def test_rewrap_on_s3_keeps_server_side_encryption(
    redis_server: Service,
    private_keyring: Path,
    tmp_path: Path,
    moto: Moto,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    s3: Any = moto.client("s3")
    s3.create_bucket(Bucket="out", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    settings = _settings(redis_server, private_keyring, tmp_path, "s3://out/hs")
    output = _write_run(settings, "trends", "trends-1", DOCS)
    _rotate(private_keyring)
    assert run_cli(settings, "keys", "retire", "k1").returncode == 2

    rewrapped = run_cli(settings, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stdout + rewrapped.stderr
    assert "rewrote 2 of 2 sealed job output files in s3://out/hs under k2" in rewrapped.stdout
    for name in DOCS:
        head = s3.head_object(Bucket="out", Key=f"hs/jobs/trends/trends-1/{name}")
        assert head["ServerSideEncryption"] == "AES256"
    assert _sealed_under(output, DOCS) == ["k2", "k2"]
    assert run_cli(settings, "keys", "retire", "k1").returncode == 0
    codec = Codec.from_settings(settings)
    assert {name: output.read_sealed(name, codec) for name in DOCS} == DOCS


def test_with_encryption_at_rest_turned_off_files_sealed_before_still_move(
    redis_server: Service, private_keyring: Path, tmp_path: Path
) -> None:
    """New files are then written plain, but those sealed earlier name a key all the same."""
    url = (tmp_path / "jobs-out").as_uri()
    settings = _settings(redis_server, private_keyring, tmp_path, url)
    output = _write_run(settings, "trends", "trends-1", DOCS)
    settings.crypto.enabled = False
    _rotate(private_keyring)
    assert run_cli(settings, "keys", "retire", "k1").returncode == 2

    rewrapped = run_cli(settings, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stdout + rewrapped.stderr
    assert "rewrote 2 of 2 sealed job output files" in rewrapped.stdout, rewrapped.stdout
    assert _sealed_under(output, DOCS) == ["k2", "k2"]
    assert run_cli(settings, "keys", "retire", "k1").returncode == 0
    settings.crypto.enabled = True
    codec = Codec.from_settings(settings)
    assert {name: output.read_sealed(name, codec) for name in DOCS} == DOCS
