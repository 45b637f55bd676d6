"""The record of each topic's first incarnation, in a local directory and on S3 (moto)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from healthsync.config import Settings
from healthsync.store.archive.layout import Span
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.rekey import key_usage
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.topics import FirstIncarnations, record_key
from tests.store.archive.conftest import PATIENT, T0, Moto, batch

FIRST = "0190f3a2" + "1" * 24
LATER = "0190f3a2" + "2" * 24
TOPIC = "healthsync.vitals"


def s3_store(moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    s3: Any = moto.client("s3")
    # moto keeps its buckets for the whole process: a name of its own per test.
    bucket = f"hs-topics-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    settings = Settings(
        crypto={"keyring_file": str(session_keyring)}, archive={"url": f"s3://{bucket}/ward-7"}
    )
    return Archive.from_settings(settings).store


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest,
    archive: Archive,
    session_keyring: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> ObjectStore:
    if request.param == "local":
        return archive.store
    moto: Moto = request.getfixturevalue("moto")
    return s3_store(moto, session_keyring, monkeypatch)


def test_create_writes_only_where_no_object_is(store: ObjectStore) -> None:
    assert store.create("identified/_topics/a.json", b"first") is True
    assert store.create("identified/_topics/a.json", b"second") is False
    with store.open("identified/_topics/a.json") as file:
        assert file.read() == b"first"
    assert store.list("identified/_topics/") == ["identified/_topics/a.json"]


def test_the_first_id_seen_keeps_plain_names_and_later_ones_carry_theirs(
    store: ObjectStore,
) -> None:
    archiver = FirstIncarnations(store)
    assert archiver.marker(TOPIC, "") == ""  # a broker without topic ids records nothing
    assert store.list(record_key(TOPIC)) == []
    assert archiver.marker(TOPIC, FIRST) == ""
    assert archiver.marker(TOPIC, LATER) == LATER
    # Another archiver, started later or racing this one, gets the record as it stands.
    other = FirstIncarnations(store)
    assert other.marker(TOPIC, LATER) == LATER
    assert other.marker(TOPIC, FIRST) == ""
    with store.open(record_key(TOPIC)) as file:
        assert orjson.loads(file.read()) == {"topic": TOPIC, "topic_id": FIRST}


def test_readers_and_rekeying_never_take_the_record_for_data(archive: Archive) -> None:
    archive.writer().write_readings(Span(0, 0, 59), batch(T0, 30))
    FirstIncarnations(archive.store).marker(TOPIC, FIRST)
    assert archive.store.list(record_key(TOPIC)) == [record_key(TOPIC)]
    # One encrypted object, whose key is found; the record is not read as Parquet.
    assert sum(key_usage(archive.store).values()) == 1
    reader = archive.reader()
    try:
        assert len(reader.readings(PATIENT, T0, T0 + 3600)) == 30
    finally:
        reader.close()
