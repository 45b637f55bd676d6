"""The anomaly engine in the running pipeline: state across a processor restart,
per-patient rules set through the API, and devices that go quiet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, Device, make_settings, wait_for


@pytest.fixture
def settings(broker: Service, redis_server: Service) -> Settings:
    """The pipeline's settings, with the processor's group forgetting a killed member after
    3 s instead of 6: a restarted processor gets the partitions of the one it replaces then."""
    return make_settings(broker, redis_server, processor={"session_timeout_ms": 3000})


def open_alerts(api: httpx.Client, patient: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = api.get("/v1/alerts", params={"patient_id": patient}).json()[
        "alerts"
    ]
    return rows


def test_a_persistence_timer_survives_a_processor_restart(
    pipeline: Pipeline, device: Device, api: httpx.Client, redis: Redis
) -> None:
    t = int(time.time()) - 60
    assert device.send(f"device_id=m1 patient_id=P-R seq=1 ts={t} spo2=88".encode()).startswith(
        "OK"
    )
    keys = Codec.from_settings(pipeline.settings).keys
    saved = keys.patient("P-R")  # the field is the patient's pseudonym
    engine = keys.engine(keys.group_of("P-R"))
    wait_for(lambda: redis.hexists(engine, saved), what="the engine's state saved")
    assert open_alerts(api, "P-R") == [], "one low sample: pending, not open"

    pipeline.children["process"].kill()
    pipeline.start_child("process")

    line = f"device_id=m1 patient_id=P-R seq=2 ts={t + 15} spo2=88"
    assert device.send(line.encode()).startswith("OK")
    [alert] = wait_for(lambda: open_alerts(api, "P-R"), what="the SpO2 alert")
    assert alert["kind"] == "threshold:spo2"
    assert alert["window_s"] == 15, "the timer started before the restart"
    assert [value for _, value in alert["evidence"]] == [88, 88]
    assert "spo2 < 90" in alert["rule"]


def test_rules_set_through_the_api_decide_when_alerts_open(
    device: Device, api: httpx.Client
) -> None:
    assert api.get("/v1/patients/P-X/rules").json()["source"] == "default"
    bad = api.put("/v1/patients/P-X/rules", json={"bands": {"heart_rate": {"low": 90, "high": 80}}})
    assert bad.status_code == 422
    assert api.put("/v1/patients/P-X/rules", json={"bands": {"glucose": {}}}).status_code == 422

    rules = {"bands": {"heart_rate": {"high": 100}}}
    view = api.put("/v1/patients/P-X/rules", json=rules).json()
    assert view["source"] == "api"
    assert view["bands"]["heart_rate"]["high"] == 100
    assert view["bands"]["heart_rate"]["low"] == 45, "limits not named keep their default"
    # P-X has sent nothing yet: the processor reads its rules with its first reading (it
    # caches a patient's rules for 5 s only once it has read them).

    t = int(time.time()) - 60
    for seq, at in ((1, 0), (2, 15)):
        line = f"device_id=m2 patient_id=P-X seq={seq} ts={t + at} hr=110"
        assert device.send(line.encode()).startswith("OK")
    [alert] = wait_for(lambda: open_alerts(api, "P-X"), what="a heart-rate alert at 110/min")
    assert (alert["kind"], alert["band"]) == ("threshold:heart_rate", "45..100")

    assert api.delete("/v1/patients/P-X/rules").json()["source"] == "default"


def test_only_those_who_may_act_on_alerts_change_a_patients_rules(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    cfg = pipeline.settings.api
    url = f"http://{cfg.host}:{cfg.port}/v1/patients/P-Y/rules"
    body = {"bands": {"heart_rate": {"high": 130}}}
    assert httpx.put(url, json=body).status_code == 401
    assert httpx.put(url, json=body, headers=credentials.headers("viewer")).status_code == 403
    done = httpx.put(url, json=body, headers=credentials.headers("clinician"))
    assert done.status_code == 200
    audit_file = pipeline.settings.auth.audit_log_file
    assert audit_file is not None
    audit = audit_file.read_text().splitlines()
    assert any('"update"' in line and "P-Y" in line for line in audit), "the change is audited"


@pytest.fixture
def quick_offline(broker: Service, redis_server: Service, tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(broker, redis_server, anomaly={"offline_min_s": 2.0})
    running = Pipeline(settings, tmp_path)
    running.start()
    yield settings
    running.stop()


def test_a_device_that_goes_quiet_raises_a_technical_alert_until_it_sends_again(
    quick_offline: Settings, credentials: Credentials
) -> None:
    cfg = quick_offline
    device = Device(cfg.ingest.host, cfg.ingest.port)
    base_url = f"http://{cfg.api.host}:{cfg.api.port}"
    with httpx.Client(base_url=base_url, timeout=10, headers=credentials.headers()) as api:
        for seq in range(1, 4):
            assert device.send(f"device_id=m3 patient_id=P-Q seq={seq} hr=70".encode()).startswith(
                "OK"
            )
            time.sleep(0.2)
        [alert] = wait_for(lambda: open_alerts(api, "P-Q"), what="the device-offline alert")
        assert (alert["kind"], alert["category"], alert["device_id"]) == (
            "device_offline:m3",
            "technical",
            "m3",
        )
        # The de-identified summary counts it without naming the device.
        viewer = credentials.headers("viewer")
        summary = httpx.get(f"{base_url}/v1/summary", headers=viewer, timeout=10).json()
        assert summary["open_alerts"]["by_kind"] == {"device_offline": 1}
        assert device.send(b"device_id=m3 patient_id=P-Q seq=4 hr=70").startswith("OK")
        wait_for(lambda: open_alerts(api, "P-Q") == [], what="the alert to resolve")
        [resolved] = api.get("/v1/alerts", params={"status": "resolved"}).json()["alerts"]
        assert resolved["alert_id"] == alert["alert_id"]
    device.close()
