"""Alerts and the first rule set: per-vital thresholds with warning and critical bands.

One alert is open per patient and kind at a time; a worse value escalates it
in place, a value back inside the band resolves it. The clinical engine
(NEWS2, persistence, trends) builds on the same Alert and AlertEvent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from healthsync.readings import Reading

Severity = Literal["warning", "critical"]
EventType = Literal["opened", "escalated", "resolved"]
_RANK = {None: 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class Threshold:
    """Normal band of one vital; outside it is a warning, beyond the critical limits critical."""

    vital: str
    low: float | None = None
    high: float | None = None
    critical_low: float | None = None
    critical_high: float | None = None

    def severity(self, value: float) -> Severity | None:
        if (self.critical_low is not None and value < self.critical_low) or (
            self.critical_high is not None and value > self.critical_high
        ):
            return "critical"
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            return "warning"
        return None

    def describe(self) -> str:
        low = "-" if self.low is None else f"{self.low:g}"
        high = "-" if self.high is None else f"{self.high:g}"
        return f"{low}..{high}"


# Bands close to common adult early-warning practice (they score NEWS2 2-3 points);
# the clinical anomaly engine replaces them with configurable, persistence-aware rules.
DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("spo2", low=90, critical_low=85),
    Threshold("heart_rate", low=45, high=120, critical_low=40, critical_high=140),
    Threshold("temp", low=35.0, high=38.5, critical_low=34.0, critical_high=39.5),
    Threshold("resp_rate", low=9, high=24, critical_low=6, critical_high=30),
    Threshold("bp_sys", low=90, high=200, critical_low=80, critical_high=220),
    Threshold("bp_dia", low=40, high=120, critical_low=30, critical_high=130),
)


@dataclass(slots=True)
class Alert:
    alert_id: str
    patient_id: str
    kind: str
    vital: str
    severity: Severity
    status: Literal["open", "resolved"]
    opened_at: float
    updated_at: float
    value: float
    band: str
    reading_id: str
    resolved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Alert:
        return cls(**doc)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A change of an alert, with a snapshot of the alert as it was then."""

    type: EventType
    alert: Alert


def alert_id_for(patient_id: str, kind: str, reading_id: str) -> str:
    """Deterministic: replaying the reading that opened an alert gives the same id."""
    basis = f"{patient_id}\x1f{kind}\x1f{reading_id}".encode()
    return hashlib.blake2b(basis, digest_size=10).hexdigest()


class ThresholdRules:
    """A Step: opens, escalates and resolves threshold alerts.

    `open_alerts` is the state: (patient_id, kind) -> Alert. It is loaded
    from the live cache before the first batch and again after `reset()` (the
    processor's partitions moved), so a restart neither duplicates nor
    forgets an alert.
    """

    def __init__(
        self,
        load_open: Callable[[], list[Alert]] | None = None,
        thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS,
    ) -> None:
        self.thresholds = {t.vital: t for t in thresholds}
        self.load_open = load_open
        self.open_alerts: dict[tuple[str, str], Alert] = {}
        self.stale = load_open is not None

    def load(self, alerts: list[Alert]) -> None:
        self.open_alerts = {(a.patient_id, a.kind): a for a in alerts if a.status == "open"}

    def reset(self) -> None:
        self.stale = self.load_open is not None

    def process(self, batch: Any) -> None:
        if self.stale and self.load_open is not None:
            self.load(self.load_open())  # before any change, so a failed load can be retried
            self.stale = False
        for reading in batch.readings:
            batch.alert_events.extend(self.evaluate(reading))

    def evaluate(self, reading: Reading) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for vital, value in reading.vitals.items():
            threshold = self.thresholds.get(vital)
            if threshold is None:
                continue
            kind = f"threshold:{vital}"
            key = (reading.patient_id, kind)
            severity = threshold.severity(value)
            current = self.open_alerts.get(key)
            if severity is not None and current is None:
                alert = Alert(
                    alert_id=alert_id_for(reading.patient_id, kind, reading.reading_id),
                    patient_id=reading.patient_id,
                    kind=kind,
                    vital=vital,
                    severity=severity,
                    status="open",
                    opened_at=reading.ts,
                    updated_at=reading.ts,
                    value=value,
                    band=threshold.describe(),
                    reading_id=reading.reading_id,
                )
                self.open_alerts[key] = alert
                events.append(AlertEvent("opened", replace(alert)))
            elif current is not None and severity is not None:
                current.value = value
                current.updated_at = reading.ts
                if _RANK[severity] > _RANK[current.severity]:
                    current.severity = severity
                    current.reading_id = reading.reading_id
                    events.append(AlertEvent("escalated", replace(current)))
            elif current is not None:
                current.status = "resolved"
                current.value = value
                current.updated_at = current.resolved_at = reading.ts
                del self.open_alerts[key]
                events.append(AlertEvent("resolved", replace(current)))
        return events
