"""Archive fixtures: readings with known values, a local archive, and moto's S3 and KMS.

moto runs in server mode on a loopback port (a real HTTP endpoint boto3 talks
to), never as in-process patching.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.stack import free_port
from healthsync.store.archive.setup import Archive

# 2026-11-28 10:00:00 UTC: two days before these tests were written, so older than Redis keeps.
T0 = 1_795_860_000.0
PATIENT = "PX-73910"
OTHER = "PX-20077"
DEMOGRAPHICS = {
    "patient_name": "Grace Hopper",
    "birth_date": "1931-12-09",
    "gender": "female",
    "mrn": "MRN-558211",
    "address": "1 Navy Way, Arlington",
    "phone": "+1 555 0100",
}


def reading(patient: str, device: str, seq: int, ts: float, **vitals: float) -> Reading:
    ts_ms = round(ts * 1000)
    return Reading(
        reading_id=reading_id_for(device, seq, ts_ms),
        device_id=device,
        patient_id=patient,
        ts=ts,
        received_at=ts + 0.25,
        vitals=vitals,
        seq=seq,
    )


def batch(start: float, count: int, step_s: float = 60.0) -> list[Reading]:
    """Two patients, one reading each per `step_s`, interleaved as Kafka would carry them."""
    readings: list[Reading] = []
    for i in range(count):
        ts = start + i * step_s
        readings.append(
            reading(PATIENT, "mon-41", i, ts, heart_rate=70 + i % 30, spo2=94 + i % 5, temp=38.73)
        )
        readings.append(reading(OTHER, "mon-42", i, ts + 1, heart_rate=100 + i % 7))
    return readings


@pytest.fixture
def archive_settings(session_keyring: Path, tmp_path: Path) -> Settings:
    return Settings(
        crypto={"keyring_file": str(session_keyring)},
        archive={"url": (tmp_path / "archive").as_uri()},
    )


@pytest.fixture
def archive(archive_settings: Settings) -> Archive:
    return Archive.from_settings(archive_settings)


@dataclass
class Moto:
    endpoint: str

    def client(self, service: str) -> object:
        return boto3.client(service, region_name="eu-west-1", endpoint_url=self.endpoint)


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    """moto's S3 and KMS in server mode on a loopback port, with test credentials."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield Moto(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def codec_settings_pseudonym(archive_settings: Settings) -> str:
    """The live store's pseudonym of PATIENT (Redis keys, Kafka message keys)."""
    from healthsync.security.codec import Codec

    return Codec.from_settings(archive_settings).pseudonym(PATIENT)
