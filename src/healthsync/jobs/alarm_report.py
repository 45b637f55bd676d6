"""`alarm-report`: the alarm burden of a period.

- alerts per monitored patient-hour (an hour in which a patient had at least
  one reading), by kind and by severity;
- time to acknowledge, for the alerts someone acknowledged;
- alerts that resolved within `quick_s` (default 5 minutes) without anyone
  acknowledging them: a proxy for alarms nobody needed to act on.

Output: ``report.json`` and ``report.html`` (plots by matplotlib, embedded, so
a charge nurse can open the one file). No patient id appears in either: the
report is about the burden, not about patients. A device's offline alerts are
counted under ``device_offline``, since a device id can point to a bed.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from healthsync.jobs.base import JobContext, JobError
from healthsync.store.period import ArchivedAlert

QUICK_S = 300.0


def kind_class(kind: str) -> str:
    return "device_offline" if kind.startswith("device_offline") else kind


@dataclass
class Burden:
    patient_hours: int = 0
    alerts: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_severity: Counter[str] = field(default_factory=Counter)
    ack_delays: list[float] = field(default_factory=list)
    quick_unacknowledged: int = 0

    def add(self, row: ArchivedAlert, quick_s: float) -> None:
        alert = row.alert
        self.alerts += 1
        self.by_kind[kind_class(alert.kind)] += 1
        self.by_severity[alert.severity] += 1
        if row.acknowledged_at is not None:
            self.ack_delays.append(max(0.0, row.acknowledged_at - alert.opened_at))
        elif alert.resolved_at is not None and alert.resolved_at - alert.opened_at <= quick_s:
            self.quick_unacknowledged += 1

    def to_dict(self, quick_s: float) -> dict[str, Any]:
        hours = self.patient_hours

        def rate(n: int) -> float | None:
            return round(n / hours, 4) if hours else None

        delays = sorted(self.ack_delays)
        return {
            "patient_hours": hours,
            "alerts": self.alerts,
            "alerts_per_patient_hour": rate(self.alerts),
            "by_kind": {
                k: {"alerts": n, "per_patient_hour": rate(n)}
                for k, n in sorted(self.by_kind.items())
            },
            "by_severity": {
                k: {"alerts": n, "per_patient_hour": rate(n)}
                for k, n in sorted(self.by_severity.items())
            },
            "acknowledged": len(delays),
            "time_to_acknowledge_s": _spread(delays),
            "resolved_unacknowledged_quickly": {
                "within_s": quick_s,
                "alerts": self.quick_unacknowledged,
                "share": round(self.quick_unacknowledged / self.alerts, 4) if self.alerts else None,
            },
        }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return {
        "median": round(statistics.median(values), 3),
        "p90": round(p90, 3),
        "max": round(values[-1], 3),
    }


class AlarmReport:
    name = "alarm-report"
    description = "alarm burden: alerts per patient-hour, time to acknowledge, quick self-resolves"

    def run(self, ctx: JobContext) -> dict[str, Any]:
        params = ctx.params
        try:
            quick_s = float(params.options.get("quick_s", QUICK_S))
        except ValueError:
            raise JobError("option quick_s must be a number of seconds") from None
        burden = Burden()
        hours = {
            (r.patient_id, int(r.ts // 3600))
            for r in ctx.reader.readings(params.since, params.until, params.patients)
        }
        burden.patient_hours = len(hours)
        for row in ctx.reader.alerts(params.since, params.until, params.patients):
            burden.add(row, quick_s)
        report = {"since": params.since, "until": params.until} | burden.to_dict(quick_s)
        ctx.output.write_json("report.json", report)
        from healthsync.jobs.plots import alarm_report_html

        ctx.output.write("report.html", alarm_report_html(report, burden.ack_delays))
        return {
            "alerts": burden.alerts,
            "patient_hours": burden.patient_hours,
            "alerts_per_patient_hour": report["alerts_per_patient_hour"],
        }
