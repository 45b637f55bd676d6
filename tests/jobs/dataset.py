"""A small archive for the jobs' tests, small enough to compute every result by hand.

Times are on 2026-11-30 UTC. Monitored patient-hours: P-1 in hours 10 and 11,
P-2 in hour 10: three in all.

| alert | patient | kind                  | severity | opened | acknowledged | resolved |
| a1    | P-1     | threshold:heart_rate  | warning  | 10:00  | 10:04        | 10:30    |
| a2    | P-1     | news2                 | critical | 10:30  | 10:32        | open     |
| a3    | P-2     | threshold:spo2        | warning  | 10:05  | -            | 10:07    |
| a4    | P-2     | device_offline:mon-9  | warning  | 10:10  | -            | 10:30    |
| a5    | P-1     | threshold:heart_rate  | warning  | 12:30  | -            | 12:31    |

a5 (and P-1's 12:30 reading) fall after the period SINCE..UNTIL, 10:00 to 12:00.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from healthsync.domain.alerts import Alert, Severity
from healthsync.domain.readings import Reading
from healthsync.store.period import ArchivedAlert, MemoryArchive

SINCE = datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp()
UNTIL = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()


def t(hhmm: str) -> float:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2026, 11, 30, hour, minute, tzinfo=UTC).timestamp()


def reading(patient: str, hhmm: str, **vitals: float) -> Reading:
    ts = t(hhmm)
    return Reading(f"r-{patient}-{hhmm}", "mon-1", patient, ts, ts, vitals or {"heart_rate": 80.0})


def alert(
    alert_id: str, patient: str, kind: str, severity: Severity, span: tuple[str, str | None]
) -> Alert:
    """An alert opened at span[0] and resolved at span[1] (None: still open)."""
    opened, resolved = span
    return Alert(
        alert_id=alert_id,
        patient_id=patient,
        kind=kind,
        vital=kind.partition(":")[2] or None,
        severity=severity,
        status="open" if resolved is None else "resolved",
        opened_at=t(opened),
        updated_at=t(resolved or opened),
        value=1.0,
        band="high",
        reading_id=f"r-{patient}-{opened}",
        resolved_at=None if resolved is None else t(resolved),
        category="technical" if kind.startswith("device_offline") else "clinical",
    )


READINGS = [
    reading("P-1", "10:00"),
    reading("P-1", "10:30"),
    reading("P-1", "11:10"),
    reading("P-2", "10:05"),
    reading("P-1", "12:30"),
]

ALERTS = [
    ArchivedAlert(
        alert("a1", "P-1", "threshold:heart_rate", "warning", ("10:00", "10:30")), t("10:04")
    ),
    ArchivedAlert(alert("a2", "P-1", "news2", "critical", ("10:30", None)), t("10:32")),
    ArchivedAlert(alert("a3", "P-2", "threshold:spo2", "warning", ("10:05", "10:07"))),
    ArchivedAlert(alert("a4", "P-2", "device_offline:mon-9", "warning", ("10:10", "10:30"))),
    ArchivedAlert(alert("a5", "P-1", "threshold:heart_rate", "warning", ("12:30", "12:31"))),
]


def archive() -> MemoryArchive:
    return MemoryArchive(READINGS, ALERTS)


def shifted(hours: int) -> tuple[list[Reading], list[ArchivedAlert]]:
    """The dataset moved by whole hours (patient-hours stay the same), for stores that keep
    only a recent window."""
    s = hours * 3600.0
    readings = [replace(r, ts=r.ts + s, received_at=r.received_at + s) for r in READINGS]
    alerts = []
    for row in ALERTS:
        a = row.alert
        moved = replace(
            a,
            opened_at=a.opened_at + s,
            updated_at=a.updated_at + s,
            resolved_at=None if a.resolved_at is None else a.resolved_at + s,
        )
        ack = None if row.acknowledged_at is None else row.acknowledged_at + s
        alerts.append(ArchivedAlert(moved, ack))
    return readings, alerts


def hours_until_now() -> int:
    """Whole hours from the dataset's period end to the last full hour."""
    return int((time.time() // 3600 * 3600 - UNTIL) // 3600)
