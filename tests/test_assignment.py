"""Devices bound to their patients: from the settings, and set by device admins through the API."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.stack import Service, free_port
from healthsync.supervisor import Pipeline
from tests.api.auth_client import AuthApi
from tests.conftest import Credentials, Device, make_settings, wait_for


@pytest.fixture
def running(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AuthApi]:
    settings = make_settings(
        broker,
        redis_server,
        ingest={"plain_enabled": True, "device_patients": {"mon-bed-1": ["P-BED-1"]}},
    )
    pipeline = Pipeline(settings, tmp_path_factory.mktemp("assign"))
    pipeline.start(stages=("ingest", "api"))
    base = f"http://{settings.api.host}:{settings.api.port}"
    http = httpx.Client(base_url=base, timeout=10)
    client = Redis.from_url(str(settings.redis.url))
    yield AuthApi(settings, http, client, credentials, pipeline.logs)
    http.close()
    client.close()
    pipeline.stop()


UNASSIGNED = "device_id=mon-bed-9 patient_id=P-10 hr=70"


def send(settings: Settings, line: str) -> str:
    device = Device(settings.ingest.host, settings.ingest.port)
    try:
        return device.send(line.encode())
    finally:
        device.close()


def test_a_device_sends_only_for_its_assigned_patients(running: AuthApi) -> None:
    assert send(running.settings, "device_id=mon-bed-1 patient_id=P-BED-1 hr=70").startswith("OK ")
    assert send(running.settings, "device_id=mon-bed-1 patient_id=P-BED-2 hr=70") == (
        "ERR 403 patient_not_assigned: this device is not assigned to that patient"
    )
    # A device with no assignment is not restricted.
    assert send(running.settings, "device_id=mon-free patient_id=P-ANY hr=70").startswith("OK ")


def test_device_admins_assign_devices_through_the_api_and_it_is_audited(
    running: AuthApi, credentials: Credentials
) -> None:
    admin = credentials.api_keys["device-admin"]
    path = "/v1/devices/mon-bed-9/patients"
    refused = running.call("PUT", path, credentials.api_keys["viewer"], json={"patients": ["P-9"]})
    assert refused.status_code == 403
    made = running.call("PUT", path, admin, json={"patients": ["P-9"]})
    assert made.status_code == 200, made.text
    assert made.json() == {"device_id": "mon-bed-9", "patients": ["P-9"]}
    assert running.get(path, admin).json()["patients"] == ["P-9"]
    wait_for(
        lambda: send(running.settings, UNASSIGNED).startswith("ERR 403"),
        timeout=15,
        what="ingest to pick the assignment up",
    )
    assert send(running.settings, "device_id=mon-bed-9 patient_id=P-9 hr=70").startswith("OK ")
    records = running.audit("apikey:test-device-admin")
    assert [r["action"] for r in records] == ["assign", "read"]
    record = records[0]
    assert (record["action"], record["patients"], record["resource"]) == (
        "assign",
        ["P-9"],
        "mon-bed-9",
    )
    assert running.call("DELETE", path, admin).status_code == 200
    wait_for(
        lambda: send(running.settings, UNASSIGNED).startswith("OK "),
        timeout=15,
        what="the assignment to be lifted",
    )


def test_until_ingest_has_read_the_assignments_it_accepts_no_reading(
    broker: Service, redis_server: Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Started while Redis was away, ingest kept "the previous" assignments, which were
    none: every device restricted through the API could send for any patient."""
    settings = make_settings(broker, redis_server, ingest={"plain_enabled": True})
    settings.redis.url = f"redis://127.0.0.1:{free_port()}/0"  # Redis away
    pipeline = Pipeline(settings, tmp_path_factory.mktemp("assign-away"))
    pipeline.start(stages=("ingest",))
    try:
        assert send(settings, "device_id=mon-bed-9 patient_id=P-10 hr=70") == (
            "ERR 503 assignments_unavailable: the device assignments could not be read yet; "
            "send it again later"
        )
    finally:
        pipeline.stop()
