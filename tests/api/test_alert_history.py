"""/v1/patients/{id}/alerts: alerts older than Redis keeps come back from the archive."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.stack import Service
from tests.api.history_data import DAY_S, alerts_to_archive, ask, to_redis
from tests.conftest import Credentials, make_settings

PATIENT = "PA-99"


@pytest.fixture
def archived(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    return make_settings(broker, redis_server, archive={"url": f"file://{tmp_path}/archive"})


def _alert(alert_id: str, opened_at: float, patient: str = PATIENT) -> Alert:
    return Alert(
        alert_id=alert_id,
        patient_id=patient,
        kind="threshold:spo2",
        vital="spo2",
        severity="critical",
        status="open",
        opened_at=opened_at,
        updated_at=opened_at,
        value=85,
        band="92..-",
        reading_id="r-" + alert_id,
        evidence=[(opened_at - 5, 86.0), (opened_at, 85.0)],
    )


def test_alerts_across_the_seam_come_back_once_newest_first_in_pages(
    archived: Settings, credentials: Credentials
) -> None:
    now = time.time()
    old = _alert("a0001", now - 2 * DAY_S)
    resolved = replace(old, status="resolved", updated_at=old.opened_at + 600,
                       resolved_at=old.opened_at + 600)  # fmt: skip
    seam = _alert("a0002", now - DAY_S + 300)
    recent = _alert("a0003", now - 600)
    stranger = _alert("a0004", now - 2 * DAY_S + 60, patient="PA-OTHER")
    events = [AlertEvent("opened", old), AlertEvent("resolved", resolved),
              AlertEvent("opened", seam), AlertEvent("opened", stranger)]  # fmt: skip
    alerts_to_archive(archived, events)
    to_redis(archived, [], [AlertEvent("opened", seam), AlertEvent("opened", recent)])
    token = credentials.api_keys["clinician"]
    since = datetime.fromtimestamp(now - 3 * DAY_S, UTC).isoformat().replace("+00:00", "Z")
    path = f"/v1/patients/{PATIENT}/alerts?since={since}&limit=2"

    [first] = ask(archived, token, path)
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    second, tampered, other = ask(
        archived,
        token,
        f"{path}&cursor={cursor}",
        f"{path}&cursor={cursor[:-2]}{'BB' if cursor.endswith('AA') else 'AA'}",
        f"/v1/patients/PA-OTHER/alerts?since={since}&cursor={cursor}",
    )

    alerts = first.json()["alerts"] + second.json()["alerts"]
    assert [a["alert_id"] for a in alerts] == ["a0003", "a0002", "a0001"]
    assert "next_cursor" not in second.json()
    # Redis's copy of the alert in both, with its acknowledgement state; the archive's
    # as its last event left it.
    assert alerts[1]["acknowledged"] is False
    assert alerts[2]["status"] == "resolved" and alerts[2]["resolved_at"] == pytest.approx(
        old.opened_at + 600, abs=0.001
    )
    assert alerts[2]["evidence"] == [list(p) for p in old.evidence]
    for refused in (tampered, other):
        assert refused.status_code == 400
        assert "cursor is not valid" in refused.json()["error"]["message"]


def test_alerts_opened_within_one_millisecond_each_come_once(
    archived: Settings, credentials: Credentials
) -> None:
    """The cursor holds the opening time to the millisecond: pages ordered by the exact
    time put a monitor's alert and a cuff's opened 0.3 ms apart in one order and the
    cursor in the other, and the second of them never came."""
    now = round(time.time() - 600)
    earlier, later = _alert("a0009", now + 0.0001), _alert("a0001", now + 0.0004)
    to_redis(archived, [], [AlertEvent("opened", earlier), AlertEvent("opened", later)])
    token = credentials.api_keys["clinician"]
    path = f"/v1/patients/{PATIENT}/alerts?limit=1"
    seen: list[str] = []
    cursor = ""
    for _ in range(3):
        [page] = ask(archived, token, path + cursor)
        assert page.status_code == 200, page.text
        seen += [a["alert_id"] for a in page.json()["alerts"]]
        if "next_cursor" not in page.json():
            break
        cursor = f"&cursor={page.json()['next_cursor']}"
    assert sorted(seen) == ["a0001", "a0009"]
    assert len(seen) == 2
