"""Path parameters and response shapes of the v1 API, for validation and the OpenAPI document.

Models name the fields every answer has. Parts whose shape belongs to the
store (vitals, NEWS2 scores, alerts, rules) stay open mappings, so the
answer is exactly what the store returns; rows allow extra fields for the
same reason, so a field added there reaches clients without a change here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict

# The same characters the wire protocol allows in ids, so a path cannot reach other keys.
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
PatientId = Annotated[str, Path(pattern=ID_PATTERN)]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]


class AlertCounts(BaseModel):
    total: int
    by_severity: dict[str, int]
    by_kind: dict[str, int]


class Summary(BaseModel):
    """De-identified aggregates: counts only."""

    patients: int
    open_alerts: AlertCounts
    news2_bands: dict[str, int]


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class PatientRow(_Row):
    patient_id: str
    last_seen: float
    vitals: dict[str, Any]
    news2: dict[str, Any] | None
    open_alerts: int


class PatientList(BaseModel):
    patients: list[PatientRow]
    count: int


class LatestVitals(BaseModel):
    patient_id: str
    vitals: dict[str, Any]
    news2: dict[str, Any] | None


class HistoryPoint(_Row):
    ts: Any
    reading_id: str
    device_id: str
    vitals: dict[str, Any]


class History(BaseModel):
    patient_id: str
    since: float
    until: float
    readings: list[HistoryPoint]
    # Present when the period holds more readings: pass it as `cursor` for the next page.
    next_cursor: str | None = None


class AlertList(BaseModel):
    alerts: list[dict[str, Any]]
    count: int
    # Present when more alerts match: pass it as `cursor` for the next page.
    next_cursor: str | None = None


class RulesView(BaseModel):
    patient_id: str
    source: Literal["api", "config", "default"]
    rules: dict[str, Any]
    bands: dict[str, dict[str, Any]]
