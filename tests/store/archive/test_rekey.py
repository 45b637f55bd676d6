"""Which key wraps each archived object, and rewriting them under the active key.

`keys retire` must know, without decrypting anything, which objects still
depend on a key; `keys rewrap` must move them to the active key and lose no row.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from healthsync.config import Settings
from healthsync.domain.alerts import Alert
from healthsync.security.keyring import Keyring
from healthsync.store.archive.compact import Compactor
from healthsync.store.archive.days import DAY_S, DayCompactor, day_of
from healthsync.store.archive.errors import ArchiveReadError
from healthsync.store.archive.layout import Span
from healthsync.store.archive.rekey import key_usage, rewrap
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.wrapping import TAIL_BYTES, wrapping_key
from tests.store.archive.conftest import OTHER, PATIENT, T0, Moto, batch

HOUR = 3600.0


@pytest.fixture
def ring_file(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    Keyring.generate().save(path)
    return path


def _rotate(path: Path) -> None:
    ring = Keyring.load(path)
    ring.rotate()
    ring.save(path)


def _settings(ring_file: Path, url: str, **archive: Any) -> Settings:
    return Settings(crypto={"keyring_file": str(ring_file)}, archive={"url": url, **archive})


def _alert(n: int, patient: str = PATIENT) -> tuple[str, Alert]:
    at = T0 + 60 * n
    alert = Alert(
        alert_id=f"a{n:04d}",
        patient_id=patient,
        kind="threshold:spo2",
        vital="spo2",
        severity="critical",
        status="open",
        opened_at=at,
        updated_at=at,
        value=85,
        band="92..-",
        reading_id=f"r-{n}",
        evidence=[(at - 5, 86.0), (at, 85.0)],
    )
    return "opened", alert


def _everything(archive: Archive) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    reader = archive.reader()
    try:
        return (
            reader.readings(PATIENT, T0, T0 + 3 * HOUR),
            reader.readings(OTHER, T0, T0 + 3 * HOUR),
            reader.alerts_table(PATIENT, T0, T0 + 3 * HOUR),
        )
    finally:
        reader.close()


def test_the_wrapping_key_comes_from_the_tail_of_the_object_alone(
    ring_file: Path, tmp_path: Path
) -> None:
    settings = _settings(ring_file, (tmp_path / "archive").as_uri())
    identified, _hour11, research = (
        Archive.from_settings(settings).writer().write_readings(Span(0, 0, 179), batch(T0, 90))
    )
    _rotate(ring_file)
    archive = Archive.from_settings(settings)
    [newer, *_rest] = archive.writer().write_readings(Span(1, 0, 59), batch(T0 + 2 * HOUR, 30))

    assert wrapping_key(archive.store, identified) == "k1"
    assert wrapping_key(archive.store, newer) == "k2"
    assert wrapping_key(archive.store, research) is None, "the research set is plain"
    assert key_usage(archive.store) == {"k1": 2, "k2": 1}

    # Nothing before the footer is read: the key id survives a wrecked body.
    path = tmp_path / "archive" / identified
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    path.write_bytes(bytes(len(data) - length - 8) + data[-length - 8 :])
    assert wrapping_key(archive.store, identified) == "k1"
    # A truncated object is named, not guessed at.
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveReadError, match=r"hour=10/p0-0-179\.parquet"):
        wrapping_key(archive.store, identified)


def test_a_footer_longer_than_one_tail_read_is_read_whole(ring_file: Path, tmp_path: Path) -> None:
    settings = _settings(ring_file, (tmp_path / "archive").as_uri())
    archive = replace(Archive.from_settings(settings), row_group_rows=2)
    [key, *_rest] = archive.writer().write_readings(Span(0, 0, 599), batch(T0, 300, step_s=6))
    data = (tmp_path / "archive" / key).read_bytes()
    assert int.from_bytes(data[-8:-4], "little") > TAIL_BYTES
    assert wrapping_key(archive.store, key) == "k1"


def test_rewrap_moves_every_object_to_the_active_key_with_the_same_rows(
    ring_file: Path, tmp_path: Path
) -> None:
    settings = _settings(ring_file, (tmp_path / "archive").as_uri())
    old = Archive.from_settings(settings)
    writer = old.writer()
    for n in range(3):  # three rolls of hour 10, compacted into one object
        writer.write_readings(Span(0, n * 20, n * 20 + 19), batch(T0 + n * 600, 10))
    Compactor(old.store, old.crypto, writer).hour("readings", int(T0 // HOUR))
    writer.write_readings(Span(1, 0, 119), batch(T0 + HOUR, 60))
    writer.write_alerts(Span(0, 0, 2), [_alert(0), _alert(1), _alert(2, OTHER)])
    before = _everything(old)
    _rotate(ring_file)

    archive = Archive.from_settings(settings)
    done = rewrap(archive.store, archive.crypto, archive.writer())

    assert (done.checked, done.rewritten, done.failed) == (3, 3, [])
    assert key_usage(archive.store) == {"k2": 3}
    assert [p for p in (tmp_path / "archive").rglob("*") if p.name.startswith(".")] == []
    ring = Keyring.load(ring_file)
    ring.retire("k1")
    ring.save(ring_file)
    after = _everything(Archive.from_settings(settings))
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2].equals(before[2]) and after[2].num_rows == 2
    # A second run finds nothing left to do.
    again = rewrap(archive.store, archive.crypto, archive.writer())
    assert (again.checked, again.rewritten, again.failed) == (3, 0, [])


def test_an_object_no_key_here_opens_is_reported_and_left_as_it_is(
    ring_file: Path, tmp_path: Path
) -> None:
    url = (tmp_path / "archive").as_uri()
    Archive.from_settings(_settings(ring_file, url)).writer().write_readings(
        Span(0, 0, 119), batch(T0, 60)
    )
    foreign = tmp_path / "foreign.json"
    ring = Keyring.generate()
    ring.rotate()  # its active key is k2: the object under k1 is "old" to it, and unreadable
    ring.save(foreign)
    path = next((tmp_path / "archive" / "identified").rglob("*.parquet"))
    data = path.read_bytes()

    archive = Archive.from_settings(_settings(foreign, url))
    done = rewrap(archive.store, archive.crypto, archive.writer())

    assert (done.checked, done.rewritten) == (1, 0)
    [(location, reason)] = done.failed
    assert location.endswith("hour=10/p0-0-119.parquet") and "does not authenticate" in reason
    assert path.read_bytes() == data


def test_rewrap_on_s3_keeps_server_side_encryption(
    moto: Moto, ring_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3: Any = moto.client("s3")
    s3.create_bucket(
        Bucket="hs-rekey", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    settings = _settings(ring_file, "s3://hs-rekey/ward-7")
    writer = Archive.from_settings(settings).writer()
    writer.write_readings(Span(0, 0, 179), batch(T0, 90))
    writer.write_alerts(Span(0, 0, 1), [_alert(0), _alert(1)])
    before = _everything(Archive.from_settings(settings))
    _rotate(ring_file)
    archive = Archive.from_settings(settings)
    assert key_usage(archive.store) == {"k1": 3}

    done = rewrap(archive.store, archive.crypto, archive.writer())

    assert (done.checked, done.rewritten, done.failed) == (3, 3, [])
    assert key_usage(archive.store) == {"k2": 3}
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="hs-rekey")["Contents"]]
    assert len(listed) == 5  # three identified, two research objects: no copies left behind
    for key in listed:
        assert s3.head_object(Bucket="hs-rekey", Key=key)["ServerSideEncryption"] == "AES256"
    ring = Keyring.load(ring_file)
    ring.retire("k1")
    ring.save(ring_file)
    after = _everything(Archive.from_settings(settings))
    assert after[:2] == before[:2] and after[2].equals(before[2])


def test_rewrap_keeps_a_day_objects_large_row_groups(ring_file: Path, tmp_path: Path) -> None:
    settings = _settings(ring_file, (tmp_path / "archive").as_uri())
    old = Archive.from_settings(settings)
    writer = old.writer()
    readings = batch(T0, 1600, step_s=30)  # 10:00 to 23:20, 1,600 readings a patient
    for n in range(4):
        writer.write_readings(Span(0, n * 800, n * 800 + 799), readings[n * 800 : n * 800 + 800])
    writer.write_readings(Span(0, 3200, 3201), batch(T0 + DAY_S, 1))  # the next day
    day = day_of(T0)
    DayCompactor(Compactor(old.store, old.crypto, writer), day + 1).day("readings", day)
    [key] = [k for k in old.store.list("identified/readings/date=2026-11-28/") if "hour=" not in k]

    def groups(archive: Archive) -> list[int]:
        file = pq.ParquetFile(
            archive.store.open(key), decryption_properties=archive.crypto.decryption_properties()
        )
        return [file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)]

    assert groups(old) == [3200]  # both patients' whole day in one group
    before = _everything(old)
    _rotate(ring_file)

    archive = Archive.from_settings(settings)
    done = rewrap(archive.store, archive.crypto, archive.writer())

    assert (done.rewritten, done.failed) == (2, [])
    assert key_usage(archive.store) == {"k2": 2}
    assert groups(archive) == [3200]
    assert _everything(archive)[:2] == before[:2]
