"""The archive on S3 (moto in server mode): same layout, SSE on every object, KMS-wrapped keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from healthsync.config import Settings
from healthsync.jobs.output import JobOutput
from healthsync.store.archive.errors import ArchiveReadError, ObjectStoreError
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.job_files import jobs_store
from tests.store.archive.conftest import PATIENT, T0, Moto, batch
from tests.store.archive.test_privacy import EVERYTHING, IDENTIFIERS, admitted, found, values_text

HOUR = 3600.0


def s3_settings(keyring: Path, url: str, **archive: Any) -> Settings:
    return Settings(crypto={"keyring_file": str(keyring)}, archive={"url": url, **archive})


def test_objects_on_s3_have_the_layout_and_server_side_encryption(
    moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3: Any = moto.client("s3")
    s3.create_bucket(
        Bucket="hs-archive", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    # The standard variable alone points boto3 at the endpoint.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    archive = Archive.from_settings(s3_settings(session_keyring, "s3://hs-archive/ward-7"))
    keys = archive.writer().write_readings(Span(3, 40, 219), batch(T0, 90))

    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="hs-archive")["Contents"]]
    assert (
        sorted(listed)
        == sorted(f"ward-7/{k}" for k in keys)
        == [
            f"ward-7/deidentified/readings/year={archive.writer().deidentifier.research_year(T0)}"
            "/p3-40-219.parquet",
            "ward-7/identified/readings/date=2026-11-28/hour=10/p3-40-219.parquet",
            "ward-7/identified/readings/date=2026-11-28/hour=11/p3-40-219.parquet",
        ]
    )
    for key in listed:
        assert s3.head_object(Bucket="hs-archive", Key=key)["ServerSideEncryption"] == "AES256"
    points = archive.reader().readings(PATIENT, T0, T0 + 2 * HOUR)
    assert len(points) == 90


def test_sse_kms_and_kms_wrapped_parquet_keys(
    moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3: Any = moto.client("s3")
    kms: Any = moto.client("kms")
    s3.create_bucket(Bucket="hs-kms", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    key_id = kms.create_key(Description="archive")["KeyMetadata"]["KeyId"]
    settings = Settings(
        crypto={
            "keyring_file": str(session_keyring),
            "kms_key_id": key_id,
            "kms_endpoint_url": moto.endpoint,
            "aws_region": "eu-west-1",
        },
        archive={
            "url": "s3://hs-kms/",
            "s3_endpoint": moto.endpoint,
            "sse": "aws:kms",
            "sse_kms_key_id": key_id,
        },
    )
    archive = Archive.from_settings(settings)
    keys = archive.writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    for key in keys:
        head = s3.head_object(Bucket="hs-kms", Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]
    assert len(archive.reader().readings(PATIENT, T0, T0 + HOUR)) == 60
    # Without KMS, the keyring's keys do not open what KMS wrapped.
    settings.crypto.kms_key_id = None
    keyring_archive = Archive.from_settings(settings)
    with pytest.raises(ArchiveReadError, match=r"s3://hs-kms/identified/readings/.*p0-0-119"):
        keyring_archive.reader().readings(PATIENT, T0, T0 + HOUR)


def test_an_unreachable_bucket_is_a_clear_store_error(moto: Moto, session_keyring: Path) -> None:
    archive = Archive.from_settings(
        s3_settings(session_keyring, "s3://no-such-bucket/x", s3_endpoint=moto.endpoint)
    )
    with pytest.raises(ObjectStoreError, match=r"PutObject s3://no-such-bucket/x/identified/"):
        archive.writer().write_readings(Span(0, 0, 119), batch(T0, 60))


def test_no_identifier_in_clear_in_any_object_on_s3(
    moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3: Any = moto.client("s3")
    s3.create_bucket(
        Bucket="hs-scan", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    archive = Archive.from_settings(s3_settings(session_keyring, "s3://hs-scan/p"))
    archive.writer().write_readings(Span(0, 0, 60), admitted())

    objects = {
        item["Key"]: s3.get_object(Bucket="hs-scan", Key=item["Key"])["Body"].read()
        for item in s3.list_objects_v2(Bucket="hs-scan")["Contents"]
    }
    assert len(objects) == 2
    for key, data in objects.items():
        if key.startswith("p/identified/"):
            assert found(data, EVERYTHING) == [] and values_text(data) is None, key
        else:
            assert found(data, IDENTIFIERS) == [] and values_text(data) is not None, key


def test_compaction_on_s3_merges_an_hour_and_deletes_its_inputs(
    moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from healthsync.store.archive.compact import Compactor

    s3: Any = moto.client("s3")
    s3.create_bucket(
        Bucket="hs-compact", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    archive = Archive.from_settings(s3_settings(session_keyring, "s3://hs-compact/ward-7"))
    writer = archive.writer()
    readings = batch(T0, 30)  # 60 readings in hour 10, three rolls of 20
    for n in range(3):
        writer.write_readings(Span(0, n * 20, n * 20 + 19), readings[n * 20 : n * 20 + 20])
    before = archive.reader().readings(PATIENT, T0, T0 + HOUR)

    done = Compactor(archive.store, archive.crypto, writer).hour("readings", int(T0 // HOUR))

    assert [(m.inputs, m.rows, m.deleted) for m in done.merges] == [(3, 60, 3)]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="hs-compact")["Contents"]]
    assert [k for k in listed if "/identified/" in k] == [
        "ward-7/identified/readings/date=2026-11-28/hour=10/p0-0-59.compacted.parquet"
    ]
    assert s3.head_object(Bucket="hs-compact", Key=listed[-1])["ServerSideEncryption"] == "AES256"
    assert archive.reader().readings(PATIENT, T0, T0 + HOUR) == before


def test_job_files_are_encrypted_as_the_archive_asks(
    moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs write their files to the archive's bucket, whose policy (deploy/aws)
    refuses a PutObject that is not aws:kms; with `archive.sse = "aws:kms"` the job
    files still went as AES256, so every job failed at its first write on AWS."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    s3: Any = moto.client("s3")
    kms: Any = moto.client("kms")
    s3.create_bucket(
        Bucket="hs-jobs", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    key_id = kms.create_key(Description="archive")["KeyMetadata"]["KeyId"]
    settings = Settings(
        crypto={"keyring_file": str(session_keyring)},
        archive={"url": "s3://hs-jobs/", "sse": "aws:kms", "sse_kms_key_id": key_id},
        jobs={"output_url": "s3://hs-jobs/hs", "aws_region": "eu-west-1"},
    )
    JobOutput(jobs_store(settings), "trends", "r1").write_json("summary.json", {"patients": 0})
    head = s3.head_object(Bucket="hs-jobs", Key="hs/jobs/trends/r1/summary.json")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]
