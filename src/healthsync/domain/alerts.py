"""Alerts, and the per-vital bands they are drawn against.

An :class:`Alert` is one episode: one is open per patient and kind at a time,
a worse value escalates it in place, and it resolves once its condition has
cleared. Which conditions open, escalate and resolve alerts is the anomaly
engine's business (engine.py); this module holds what they produce.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from healthsync.domain.bands import DEFAULT_LIMITS, PatientRules, merged_limits
from healthsync.domain.readings import EPOCH_2000, LAST_EPOCH, epoch, finite_number, keyed_digest

Severity = Literal["warning", "critical"]
Category = Literal["clinical", "technical"]
EventType = Literal["opened", "escalated", "resolved"]
RANK: dict[str | None, int] = {None: 0, "warning": 1, "critical": 2}


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

    def inside(self, value: float, margin: float) -> bool:
        """Back inside the normal band by at least `margin` (hysteresis for resolving).

        A critical value is never inside, whatever the warning limits say.
        """
        return (
            self.severity(value) != "critical"
            and (self.low is None or value >= self.low + margin)
            and (self.high is None or value <= self.high - margin)
        )

    def past(self, value: float) -> float:
        """How far the value lies beyond the normal band (0 inside it)."""
        below = self.low - value if self.low is not None else 0.0
        above = value - self.high if self.high is not None else 0.0
        return max(below, above, 0.0)

    def describe(self) -> str:
        low = "-" if self.low is None else f"{self.low:g}"
        high = "-" if self.high is None else f"{self.high:g}"
        return f"{low}..{high}"


# Adult bands (``rules.DEFAULT_LIMITS`` says where they come from).
DEFAULT_THRESHOLDS: tuple[Threshold, ...] = tuple(
    Threshold(vital, *limits) for vital, limits in DEFAULT_LIMITS.items()
)


def thresholds_for(rules: PatientRules | None) -> dict[str, Threshold]:
    """The bands for one patient: the defaults with the patient's overrides applied."""
    return {vital: Threshold(vital, *limits) for vital, limits in merged_limits(rules).items()}


@dataclass(slots=True)
class Alert:
    """One alert episode, with what fired it so a clinician can see why.

    `rule` says which rule fired and with what limits; `evidence` holds the
    (time, value) samples that met it; `window_s` is how long the condition
    had held when the alert opened. `vital` is None for alerts that are not
    about one vital (NEWS2, a device going offline).
    """

    alert_id: str
    patient_id: str
    kind: str
    vital: str | None
    severity: Severity
    status: Literal["open", "resolved"]
    opened_at: float
    updated_at: float
    value: float
    band: str
    reading_id: str
    resolved_at: float | None = None
    category: Category = "clinical"
    rule: str = ""
    window_s: float = 0.0
    evidence: list[tuple[float, float]] = field(default_factory=list)
    device_id: str | None = None
    # The parameters behind it: its vital, or the NEWS2 parameters that scored.
    drivers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def snapshot(self) -> Alert:
        """A copy that later changes to this alert do not touch (for events)."""
        return replace(self, evidence=list(self.evidence), drivers=list(self.drivers))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Alert:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["evidence"] = [(float(t), float(v)) for t, v in values.get("evidence", [])]
        values["drivers"] = [str(d) for d in values.get("drivers", [])]
        return cls(**values)


def checked_alert(doc: object) -> Alert:
    """An alert from JSON that anything may have written (the alerts topic): every field
    of the type and in the range the processor writes it with; ValueError, naming the
    field, otherwise. :meth:`Alert.from_dict` trusts what the pipeline stored itself."""
    if not isinstance(doc, dict):
        raise ValueError("alert: not an object")
    _check_texts(doc)
    _check_choices(doc)
    _check_numbers(doc)
    _check_lists(doc)
    return Alert.from_dict(doc)


def _check_texts(doc: dict[str, Any]) -> None:
    for name in ("alert_id", "patient_id", "kind", "band", "reading_id"):
        _text(name, doc.get(name))
    for name in ("vital", "device_id", "rule"):
        if doc.get(name) is not None:
            _text(name, doc[name])


def _check_choices(doc: dict[str, Any]) -> None:
    for name, allowed, default in (
        ("severity", get_args(Severity), None),
        ("status", ("open", "resolved"), None),
        ("category", get_args(Category), "clinical"),
    ):
        if doc.get(name, default) not in allowed:
            raise ValueError(f"{name}: not one of {', '.join(allowed)}")


def _check_numbers(doc: dict[str, Any]) -> None:
    for name in ("opened_at", "updated_at"):
        epoch(name, doc.get(name), EPOCH_2000, LAST_EPOCH)
    if doc.get("resolved_at") is not None:
        epoch("resolved_at", doc["resolved_at"], EPOCH_2000, LAST_EPOCH)
    finite_number("value", doc.get("value"))
    if finite_number("window_s", doc.get("window_s", 0.0)) < 0:
        raise ValueError("window_s: negative")


def _check_lists(doc: dict[str, Any]) -> None:
    evidence = doc.get("evidence", [])
    if not isinstance(evidence, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in evidence
    ):
        raise ValueError("evidence: not a list of (time, value) pairs")
    for at, value in evidence:
        epoch("evidence", at, EPOCH_2000, LAST_EPOCH)
        finite_number("evidence", value)
    drivers = doc.get("drivers", [])
    if not isinstance(drivers, list) or not all(isinstance(d, str) for d in drivers):
        raise ValueError("drivers: not a list of names")


def _text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name}: not a string")


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A change of an alert, with a snapshot of the alert as it was then."""

    type: EventType
    alert: Alert


@dataclass(frozen=True, slots=True)
class Artefact:
    """A sample set aside as a probable artefact rather than raised as an alarm."""

    patient_id: str
    vital: str
    ts: float
    value: float
    reading_id: str


def alert_id_for(patient_id: str, kind: str, reading_id: str, *, key: bytes | None = None) -> str:
    """Deterministic: replaying what opened an alert gives the same id.

    Keyed (HMAC) with the keyring's id key when there is one: an unkeyed digest
    let anyone holding an alert try patient ids until one matched.
    """
    basis = f"{patient_id}\x1f{kind}\x1f{reading_id}".encode()
    return keyed_digest(basis, 10, key)
