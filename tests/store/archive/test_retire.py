"""`healthsync keys retire` and `keys rewrap` against the archive, end to end.

Retiring a key whose data keys still wrap archived objects would make that
history unreadable for good: retire refuses, rewrap moves the objects to the
current key, and then retire goes through with every reading still there.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from healthsync.config import Settings
from healthsync.security.keyring import Keyring
from healthsync.stack import Service
from healthsync.store.archive.layout import Span
from healthsync.store.archive.rekey import key_usage
from healthsync.store.archive.setup import Archive
from tests.store.archive.conftest import OTHER, PATIENT, T0, Moto, batch
from tests.test_cli import run_cli

HOUR = 3600.0


def _settings(redis_server: Service, keyring: Path, url: str, **crypto: Any) -> Settings:
    return Settings(
        redis={
            "url": f"redis://{redis_server.host}:{redis_server.port}/0",
            "prefix": f"t{uuid.uuid4().hex[:10]}",
        },
        crypto={"keyring_file": str(keyring), **crypto},
        archive={"url": url},
    )


def _readings(settings: Settings) -> list[list[dict[str, Any]]]:
    reader = Archive.from_settings(settings).reader()
    try:
        return [reader.readings(p, T0, T0 + 3 * HOUR) for p in (PATIENT, OTHER)]
    finally:
        reader.close()


def test_retire_refuses_while_the_archive_needs_the_key_and_succeeds_after_rewrap(
    redis_server: Service, private_keyring: Path, tmp_path: Path
) -> None:
    settings = _settings(redis_server, private_keyring, (tmp_path / "archive").as_uri())
    writer = Archive.from_settings(settings).writer()
    writer.write_readings(Span(0, 0, 179), batch(T0, 90))  # hours 10 and 11
    writer.write_readings(Span(1, 0, 119), batch(T0 + 2 * HOUR, 60))  # hour 12
    before = _readings(settings)
    assert [len(points) for points in before] == [150, 150]
    ring = Keyring.load(private_keyring)
    ring.rotate()
    ring.save(private_keyring)

    refused = run_cli(settings, "keys", "retire", "k1")
    assert refused.returncode == 2, refused.stderr
    assert "3 archive objects" in refused.stderr and "keys rewrap" in refused.stderr
    assert "k1" in Keyring.load(private_keyring).keys, "nothing was retired"

    rewrapped = run_cli(settings, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert "rewrote 3 of 3 encrypted archive objects" in rewrapped.stdout, rewrapped.stdout

    retired = run_cli(settings, "keys", "retire", "k1")
    assert retired.returncode == 0, retired.stderr
    url = settings.archive.url
    assert f"no archive object in {url} depends on k1 (3 encrypted objects)" in retired.stdout
    assert Keyring.load(private_keyring).retired == ["k1"]
    assert _readings(settings) == before


def test_with_kms_the_archive_moves_from_keyring_keys_to_the_kms_key(
    redis_server: Service,
    private_keyring: Path,
    tmp_path: Path,
    moto: Moto,
) -> None:
    """Objects written before crypto.kms_key_id was set name a keyring key; rewrap moves them."""
    url = (tmp_path / "archive").as_uri()
    before_kms = _settings(redis_server, private_keyring, url)
    Archive.from_settings(before_kms).writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    ring = Keyring.load(private_keyring)
    ring.rotate()
    ring.save(private_keyring)
    kms: Any = moto.client("kms")
    kms_key = kms.create_key(Description="archive")["KeyMetadata"]["KeyId"]
    settings = _settings(
        redis_server,
        private_keyring,
        url,
        kms_key_id=kms_key,
        kms_endpoint_url=moto.endpoint,
        aws_region="eu-west-1",
    )
    Archive.from_settings(settings).writer().write_readings(Span(1, 0, 59), batch(T0 + HOUR, 30))
    assert key_usage(Archive.from_settings(settings).store) == {"k1": 1, kms_key: 1}
    before = _readings(settings)

    refused = run_cli(settings, "keys", "retire", "k1")
    assert refused.returncode == 2 and "1 archive objects" in refused.stderr, refused.stderr
    rewrapped = run_cli(settings, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert f"rewrote 1 of 2 encrypted archive objects in {url} under {kms_key}" in (
        rewrapped.stdout
    )
    assert key_usage(Archive.from_settings(settings).store) == {kms_key: 2}
    retired = run_cli(settings, "keys", "retire", "k1")
    assert retired.returncode == 0, retired.stderr
    assert _readings(settings) == before
    assert [len(points) for points in before] == [90, 90]


def test_rewrap_with_encryption_at_rest_off_still_rewrites_the_archive(
    redis_server: Service, private_keyring: Path, tmp_path: Path
) -> None:
    """crypto.enabled leaves Redis plain, but the identified archive is encrypted either way."""
    settings = _settings(
        redis_server, private_keyring, (tmp_path / "archive").as_uri(), enabled=False
    )
    Archive.from_settings(settings).writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    before = _readings(settings)
    ring = Keyring.load(private_keyring)
    ring.rotate()
    ring.save(private_keyring)

    rewrapped = run_cli(settings, "keys", "rewrap")

    assert rewrapped.returncode == 0, rewrapped.stderr
    assert "nothing in Redis to reseal" in rewrapped.stdout
    assert "rewrote 1 of 1 encrypted archive objects" in rewrapped.stdout
    assert run_cli(settings, "keys", "retire", "k1").returncode == 0
    assert _readings(settings) == before
