"""FHIR R4 (4.0.1) resources built from readings, alerts and NEWS2 scores.

Vital signs follow the HL7 vital-signs profiles (``meta.profile`` set, LOINC
code, UCUM quantity, category vital-signs); blood pressure is always the
85354-9 panel with systolic and diastolic components, so an Observation id is
a function of (reading id, vital) alone. Every id is derived from what the
resource describes (reading, alert, patient, device, NEWS2 time), so a
replayed reading maps to the same resources.

The Observation builder is on the processor's hot path: what does not depend
on the reading is built once here, what every Observation of a reading shares
is built once per reading, and the shared parts are referenced, not copied
(resources are serialised, never mutated, once built).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from itertools import islice
from typing import Any, Final

from healthsync.readings import VITALS, Reading, isoformat_ms
from healthsync.stream.alerts import DEFAULT_THRESHOLDS, Alert, Threshold
from healthsync.stream.batch import Batch
from healthsync.stream.news2 import News2

Resource = dict[str, Any]
# Reads stored resources back: (resource type, ids) -> {id: resource} for those that exist.
ResourceLoader = Callable[[str, list[str]], dict[str, Resource]]

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
SNOMED: Final = "http://snomed.info/sct"
READING_ID_SYSTEM: Final = "urn:healthsync:reading-id"
PATIENT_ID_SYSTEM: Final = "urn:healthsync:patient-id"
DEVICE_ID_SYSTEM: Final = "urn:healthsync:device-id"
ALERT_ID_SYSTEM: Final = "urn:healthsync:alert-id"
NEWS2_ID_SYSTEM: Final = "urn:healthsync:news2-id"
NEWS2_BAND_SYSTEM: Final = "urn:healthsync:news2-band"
PROFILE_BASE: Final = "http://hl7.org/fhir/StructureDefinition/"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
NEWS2_TOTAL: Final = "1104051000000101"

# --- ids --------------------------------------------------------------------

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@lru_cache(maxsize=65536)
def fhir_id(raw: str) -> str:
    """`raw` if it is a valid FHIR id, else a stable digest of it.

    Device and patient ids on the wire may hold `_` and `:`, which FHIR ids
    may not; the raw id is kept as an identifier of the resource either way.
    """
    if _FHIR_ID.fullmatch(raw):
        return raw
    return "h-" + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def patient_reference(patient_id: str) -> dict[str, str]:
    return {"reference": f"Patient/{fhir_id(patient_id)}"}


# Which Observation of a reading carries a vital (systolic and diastolic share the panel),
# spelt in FHIR's id alphabet, which has no `_`.
_SUFFIXES: Final = {name: name.replace("_", "-") for name in VITALS} | {
    "bp_sys": "bp",
    "bp_dia": "bp",
}


def observation_id(reading_id: str, vital: str) -> str:
    """The id of the Observation that carries `vital` of a reading."""
    return f"{reading_id}-{_SUFFIXES[vital]}"


_DERIVED_SUFFIXES: Final = frozenset(_SUFFIXES.values())
_HEX: Final = frozenset("0123456789abcdef")


def reading_of_observation(resource_id: str) -> str | None:
    """The reading a vital-sign Observation id was made from; None for any other id.

    Vital-sign Observations are a pure function of their reading, so the FHIR
    store keeps the reading once and the read API rebuilds them from it.
    """
    reading_id, sep, suffix = resource_id.partition("-")
    if sep and suffix in _DERIVED_SUFFIXES and len(reading_id) == 24 and set(reading_id) <= _HEX:
        return reading_id
    return None


def news2_id(patient_id: str, ts: float) -> str:
    """Shared by a NEWS2 score's Observation and RiskAssessment (different types)."""
    basis = f"{patient_id}\x1fnews2\x1f{round(ts * 1000)}".encode()
    return "news2-" + hashlib.blake2b(basis, digest_size=12).hexdigest()


# --- vital-signs Observations ------------------------------------------------

_PROFILES: Final = {
    "heart-rate": "heartrate",
    "spo2": "oxygensat",
    "temp": "bodytemp",
    "resp-rate": "resprate",
    "bp": "bp",
}
# Displays as LOINC names them; `text` is the plain name from readings.VITALS.
_LOINC_DISPLAY: Final = {
    "8867-4": "Heart rate",
    "2708-6": "Oxygen saturation in Arterial blood",
    "59408-5": "Oxygen saturation in Arterial blood by Pulse oximetry",
    "8310-5": "Body temperature",
    "9279-1": "Respiratory rate",
    "8480-6": "Systolic blood pressure",
    "8462-4": "Diastolic blood pressure",
    "85354-9": "Blood pressure panel with all children optional",
}
_BP_PARTS: Final = ("bp_sys", "bp_dia")
_INTERPRETATION_DISPLAY: Final = {
    "N": "Normal",
    "L": "Low",
    "H": "High",
    "LL": "Critical low",
    "HH": "Critical high",
}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _loinc(code: str) -> dict[str, str]:
    display = _LOINC_DISPLAY.get(code)
    return {"system": LOINC, "code": code} if display is None else _coding(LOINC, code, display)


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [_coding(OBSERVATION_CATEGORY, code, display)]}]


_VITAL_SIGNS_CATEGORY: Final = _category("vital-signs", "Vital Signs")
_SURVEY_CATEGORY: Final = _category("survey", "Survey")
_NORMAL_RANGE: Final = {
    "coding": [
        _coding(
            "http://terminology.hl7.org/CodeSystem/referencerange-meaning", "normal", "Normal Range"
        )
    ]
}
_ABSENT: Final = {
    "coding": [
        _coding("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown", "Unknown")
    ]
}


_INTERPRETATIONS: Final = {
    code: {"coding": [_coding(INTERPRETATION, code, display)], "text": display}
    for code, display in _INTERPRETATION_DISPLAY.items()
}
_INTERPRETATION_LISTS: Final = {code: [concept] for code, concept in _INTERPRETATIONS.items()}


def _quantity(ucum: str, value: float) -> dict[str, Any]:
    return {"value": value, "unit": ucum, "system": UCUM, "code": ucum}


Bands = tuple[float, float, float, float]  # critical low, critical high, low, high


def _bands(threshold: Threshold) -> Bands:
    inf = float("inf")

    def limit(value: float | None, default: float) -> float:
        return default if value is None else value

    return (
        limit(threshold.critical_low, -inf),
        limit(threshold.critical_high, inf),
        limit(threshold.low, -inf),
        limit(threshold.high, inf),
    )


def _band_code(bands: Bands, value: float) -> str:
    critical_low, critical_high, low, high = bands
    if value < critical_low:
        return "LL"
    if value > critical_high:
        return "HH"
    if value < low:
        return "L"
    if value > high:
        return "H"
    return "N"


def interpretation_code(threshold: Threshold, value: float) -> str:
    """N, L, H, LL or HH: the band of `value`, as Threshold.severity draws the bands."""
    return _band_code(_bands(threshold), value)


class _Vital:
    """Everything about one vital's Observation that does not depend on the reading."""

    __slots__ = ("bands", "code", "reference_range", "ucum")

    def __init__(self, name: str, threshold: Threshold | None) -> None:
        vital = VITALS[name]
        codings = [_loinc(vital.loinc)]
        if name == "spo2":
            codings.append(_loinc("59408-5"))  # what a pulse oximeter measures, for EHRs that ask
        self.code: dict[str, Any] = {"coding": codings, "text": vital.display}
        self.ucum = vital.ucum
        self.bands = None if threshold is None else _bands(threshold)
        self.reference_range: list[dict[str, Any]] | None = None
        if threshold is not None and (threshold.low is not None or threshold.high is not None):
            band: dict[str, Any] = {}
            if threshold.low is not None:
                band["low"] = _quantity(vital.ucum, threshold.low)
            if threshold.high is not None:
                band["high"] = _quantity(vital.ucum, threshold.high)
            band["type"] = _NORMAL_RANGE
            self.reference_range = [band]

    def measured(self, target: dict[str, Any], value: float) -> str | None:
        """Adds valueQuantity, interpretation and referenceRange to `target`; returns the code."""
        ucum = self.ucum
        target["valueQuantity"] = {"value": value, "unit": ucum, "system": UCUM, "code": ucum}
        if self.bands is None:
            return None
        code = _band_code(self.bands, value)
        target["interpretation"] = _INTERPRETATION_LISTS[code]
        if self.reference_range is not None:
            target["referenceRange"] = self.reference_range
        return code


class ObservationBuilder:
    """Builds a reading's vital-signs Observations, interpreted against `thresholds`."""

    def __init__(self, thresholds: Iterable[Threshold] = DEFAULT_THRESHOLDS) -> None:
        by_vital = {t.vital: t for t in thresholds}
        self.vitals = {name: _Vital(name, by_vital.get(name)) for name in VITALS}
        # A vital with no profile of its own gets the base vital-signs profile.
        self.meta = {
            suffix: {"profile": [PROFILE_BASE + _PROFILES.get(suffix, "vitalsigns")]}
            for suffix in _SUFFIXES.values()
        }
        self.bp_code = {"coding": [_loinc("85354-9")], "text": "Blood pressure"}

    def build(self, reading: Reading) -> list[Resource]:
        """One Observation per vital; systolic and diastolic together as the BP panel."""
        vitals = reading.vitals
        rid = reading.reading_id
        # What every Observation of this reading shares, built once.
        common = {
            "status": "final",
            "category": _VITAL_SIGNS_CATEGORY,
            "subject": patient_reference(reading.patient_id),
            "device": {"reference": f"Device/{fhir_id(reading.device_id)}"},
            "effectiveDateTime": isoformat_ms(reading.ts),
        }
        resources: list[Resource] = []
        panel = False
        for name, value in vitals.items():
            if name in _BP_PARTS:
                panel = True
                continue
            suffix = _SUFFIXES[name]
            # The id is limited to FHIR's id alphabet; the identifier keeps the canonical
            # vital name, which is what an EHR's conditional create already matches on.
            resource: Resource = {
                "resourceType": "Observation",
                "id": f"{rid}-{suffix}",
                "meta": self.meta[suffix],
                "identifier": [{"system": READING_ID_SYSTEM, "value": f"{rid}/{name}"}],
                **common,
                "code": self.vitals[name].code,
            }
            self.vitals[name].measured(resource, value)
            resources.append(resource)
        if panel:
            resources.append(self._panel(rid, vitals, common))
        return resources

    def _panel(self, rid: str, vitals: dict[str, float], common: dict[str, Any]) -> Resource:
        components = []
        codes: list[str] = []
        for part in _BP_PARTS:
            vital = self.vitals[part]
            component: dict[str, Any] = {"code": vital.code}
            value = vitals.get(part)
            if value is None:
                # The profile needs both components; say why one has no value.
                component["dataAbsentReason"] = _ABSENT
            else:
                code = vital.measured(component, value)
                if code is not None and code not in codes:
                    codes.append(code)
            components.append(component)
        resource: Resource = {
            "resourceType": "Observation",
            "id": f"{rid}-bp",
            "meta": self.meta["bp"],
            "identifier": [{"system": READING_ID_SYSTEM, "value": f"{rid}/bp"}],
            **common,
            "code": self.bp_code,
            "component": components,
        }
        # The panel's own interpretation sums up the components: their abnormal codes, else N.
        abnormal = [c for c in codes if c != "N"] or codes
        if abnormal:
            resource["interpretation"] = [_INTERPRETATIONS[code] for code in abnormal]
        return resource


_DEFAULT_BUILDER = ObservationBuilder()


def observations_for(reading: Reading) -> list[Resource]:
    """The reading's Observations, interpreted against the default thresholds."""
    return _DEFAULT_BUILDER.build(reading)


# --- Patient and Device ------------------------------------------------------

_MRN_TYPE: Final = {
    "coding": [
        _coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number")
    ],
    "text": "MRN",
}


def patient_for(
    patient_id: str, demographics: Mapping[str, str], mrn_system: str, updated: float
) -> Resource:
    """The Patient with the identifiers and demographics devices sent (readings.PATIENT_FIELDS)."""
    identifiers: list[dict[str, Any]] = [{"system": PATIENT_ID_SYSTEM, "value": patient_id}]
    resource: Resource = {
        "resourceType": "Patient",
        "id": fhir_id(patient_id),
        "meta": {"lastUpdated": isoformat_ms(updated)},
        "identifier": identifiers,
    }
    mrn = demographics.get("mrn")
    if mrn:
        identifiers.append({"use": "usual", "type": _MRN_TYPE, "system": mrn_system, "value": mrn})
    name = demographics.get("patient_name")
    if name:
        # Only the text: splitting "family" from "given" would be a guess.
        resource["name"] = [{"text": name}]
    phone = demographics.get("phone")
    if phone:
        resource["telecom"] = [{"system": "phone", "value": phone}]
    gender = demographics.get("gender")
    if gender:
        resource["gender"] = gender
    birth_date = demographics.get("birth_date")
    if birth_date:
        resource["birthDate"] = birth_date
    address = demographics.get("address")
    if address:
        resource["address"] = [{"text": address}]
    return resource


def demographics_of(patient: Mapping[str, Any]) -> dict[str, str]:
    """The inverse of :func:`patient_for`: the demographics a stored Patient carries."""
    found: dict[str, str] = {}
    for identifier in patient.get("identifier", []):
        if identifier.get("type") == _MRN_TYPE:
            found["mrn"] = identifier["value"]
    if patient.get("name"):
        found["patient_name"] = patient["name"][0]["text"]
    if patient.get("telecom"):
        found["phone"] = patient["telecom"][0]["value"]
    if patient.get("gender"):
        found["gender"] = patient["gender"]
    if patient.get("birthDate"):
        found["birth_date"] = patient["birthDate"]
    if patient.get("address"):
        found["address"] = patient["address"][0]["text"]
    return found


def device_for(device_id: str, updated: float) -> Resource:
    return {
        "resourceType": "Device",
        "id": fhir_id(device_id),
        "meta": {"lastUpdated": isoformat_ms(updated)},
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": device_id}],
        "status": "active",
        "deviceName": [{"name": device_id, "type": "user-friendly-name"}],
    }


# --- alerts ------------------------------------------------------------------

_ALERT_CATEGORY: Final = [
    {
        "coding": [
            _coding(
                "http://terminology.hl7.org/CodeSystem/communication-category", "alert", "Alert"
            )
        ]
    }
]
_FLAG_CATEGORY: Final = [
    {
        "coding": [
            _coding("http://terminology.hl7.org/CodeSystem/flag-category", "clinical", "Clinical")
        ]
    }
]
_SAFETY_CATEGORY: Final = [
    {"coding": [_coding("http://terminology.hl7.org/CodeSystem/flag-category", "safety", "Safety")]}
]
_PRIORITY: Final = {"critical": "stat", "warning": "urgent"}


def _normal_band(band: str, ucum: str) -> str:
    """Threshold.describe()'s "low..high" ("-" for no limit) in words."""
    low, _, high = band.partition("..")
    if high in ("-", ""):
        return f"at least {low} {ucum}"
    if low in ("-", ""):
        return f"at most {high} {ucum}"
    return f"{low}-{high} {ucum}"


_KIND_TITLES: Final = {
    "trend": "Trend",
    "baseline": "Change from this patient's baseline",
    "news2": "NEWS2",
    "device_offline": "Device offline",
}


def _alert_text(alert: Alert) -> str:
    family = alert.kind.partition(":")[0]
    if family == "threshold" and alert.vital in VITALS:
        vital = VITALS[alert.vital]
        normal = _normal_band(alert.band, vital.ucum)
        if alert.status == "resolved":
            return f"Resolved: {vital.display} {alert.value:g} {vital.ucum}, normal is {normal}"
        return (
            f"{vital.display} {alert.value:g} {vital.ucum} ({alert.severity}): normal is {normal}"
        )
    text = f"{_KIND_TITLES.get(family, family)} ({alert.severity}): {alert.rule}"
    return f"Resolved: {text}" if alert.status == "resolved" else text


def _about(alert: Alert) -> list[dict[str, str]]:
    """What the alert is about: the Observation (or device) that fired it."""
    if alert.kind == "news2":
        return [{"reference": f"Observation/{news2_id(alert.patient_id, alert.opened_at)}"}]
    if alert.device_id is not None and alert.vital is None:
        return [{"reference": f"Device/{fhir_id(alert.device_id)}"}]
    if alert.vital in VITALS and alert.reading_id:
        return [{"reference": f"Observation/{observation_id(alert.reading_id, alert.vital)}"}]
    return []


def communication_for(alert: Alert) -> Resource:
    """The alert as sent to clinicians: in progress while open, completed once resolved."""
    resource: Resource = {
        "resourceType": "Communication",
        "id": alert.alert_id,
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": alert.alert_id}],
        "status": "in-progress" if alert.status == "open" else "completed",
        "category": _ALERT_CATEGORY,
        "priority": _PRIORITY[alert.severity],
        "subject": patient_reference(alert.patient_id),
        "sent": isoformat_ms(alert.opened_at),
        "payload": [{"contentString": _alert_text(alert)}],
    }
    about = _about(alert)
    if about:
        resource["about"] = about
    return resource


def _flag_text(alert: Alert) -> str:
    if alert.kind.startswith("threshold:") and alert.vital in VITALS:
        return f"{VITALS[alert.vital].display} outside the normal band ({alert.severity})"
    family = alert.kind.partition(":")[0]
    return f"{_KIND_TITLES.get(family, family)} ({alert.severity})"


def flag_for(alert: Alert) -> Resource:
    """The alert as a FHIR Flag, the resource EHRs show as a patient banner."""
    flag: Resource = {
        "resourceType": "Flag",
        "id": alert.alert_id,
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": alert.alert_id}],
        "status": "active" if alert.status == "open" else "inactive",
        "category": _FLAG_CATEGORY if alert.category == "clinical" else _SAFETY_CATEGORY,
        "code": {"text": _flag_text(alert)},
        "subject": patient_reference(alert.patient_id),
        "period": {"start": isoformat_ms(alert.opened_at)},
    }
    if alert.resolved_at is not None:
        flag["period"]["end"] = isoformat_ms(alert.resolved_at)
    return flag


def alert_resources(alert: Alert) -> tuple[Resource, Resource]:
    """The Communication and the Flag of an alert as it is now."""
    return communication_for(alert), flag_for(alert)


# --- NEWS2 -------------------------------------------------------------------

_NEWS2_CODE: Final = {
    "coding": [
        _coding(
            SNOMED,
            NEWS2_TOTAL,
            "Royal College of Physicians National Early Warning Score 2 total score",
        )
    ],
    "text": "NEWS2 total score",
}
# NEWS2 bands as the risk-probability code system grades likelihood. Low-medium (one
# parameter scored 3) already calls for an urgent ward review, so it counts as moderate.
_RISK: Final = {
    "low": ("low", "Low likelihood"),
    "low-medium": ("moderate", "Moderate likelihood"),
    "medium": ("moderate", "Moderate likelihood"),
    "high": ("high", "High likelihood"),
}
_PARAMETER_NAMES: Final = {
    "on_oxygen": "Air or supplemental oxygen",
    "consciousness": "Level of consciousness (ACVPU)",
}


def _news2_basis(score: News2) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """References to what fed the score: (Observations, everything incl. non-Observation inputs)."""
    observations: list[dict[str, Any]] = []
    seen: set[str] = set()
    others: list[dict[str, Any]] = []
    for parameter, reading_id in score.sources.items():
        if parameter in _SUFFIXES:
            oid = observation_id(reading_id, parameter)
            if oid not in seen:
                seen.add(oid)
                observations.append({"reference": f"Observation/{oid}"})
        else:
            # Oxygen and consciousness are no vital-signs Observation: point at the reading.
            others.append(
                {
                    "identifier": {"system": READING_ID_SYSTEM, "value": reading_id},
                    "display": _PARAMETER_NAMES.get(parameter, parameter),
                }
            )
    return observations, observations + others


def news2_resources(patient_id: str, score: News2) -> tuple[Resource, Resource]:
    """The NEWS2 total as an Observation, and a RiskAssessment based on it and its inputs."""
    rid = news2_id(patient_id, score.ts)
    subject = patient_reference(patient_id)
    status = "final" if score.complete else "preliminary"
    when = isoformat_ms(score.ts)
    identifier = [{"system": NEWS2_ID_SYSTEM, "value": rid}]
    inputs, basis = _news2_basis(score)
    observation: Resource = {
        "resourceType": "Observation",
        "id": rid,
        "identifier": identifier,
        "status": status,
        "category": _SURVEY_CATEGORY,
        "code": _NEWS2_CODE,
        "subject": subject,
        "effectiveDateTime": when,
        "valueInteger": score.total,
    }
    if inputs:
        observation["derivedFrom"] = inputs
    risk_code, risk_display = _RISK[score.band]
    assessment: Resource = {
        "resourceType": "RiskAssessment",
        "id": rid,
        "identifier": identifier,
        "status": status,
        "method": _NEWS2_CODE,
        "subject": subject,
        "occurrenceDateTime": when,
        "basis": [{"reference": f"Observation/{rid}"}, *basis],
        "prediction": [
            {
                "outcome": {"text": "Clinical deterioration"},
                "qualitativeRisk": {
                    "coding": [
                        _coding(
                            "http://terminology.hl7.org/CodeSystem/risk-probability",
                            risk_code,
                            risk_display,
                        ),
                        _coding(NEWS2_BAND_SYSTEM, score.band, f"NEWS2 {score.band} risk"),
                    ],
                    "text": f"NEWS2 {score.total}: {score.band} clinical risk",
                },
            }
        ],
    }
    if score.missing:
        note = [{"text": "Incomplete NEWS2, no fresh value for: " + ", ".join(score.missing)}]
        observation["note"] = note
        assessment["note"] = note
    return observation, assessment


# --- the step ----------------------------------------------------------------

# Patients and devices remembered per processor; beyond this the oldest are forgotten
# (and read back from the store when they come again).
_CACHE_LIMIT = 100_000


def _bound(cache: dict[str, Any]) -> None:
    excess = len(cache) - _CACHE_LIMIT
    if excess > 0:
        for key in list(islice(cache, excess)):
            del cache[key]


class FhirResources:
    """A Step: adds the batch's FHIR resources to it, keyed by patient id.

    To ``batch.observations``, in order: Patient and Device resources that are
    new or changed, the readings' Observations, and per patient a NEWS2
    Observation and RiskAssessment when the score changed. To
    ``batch.alert_resources``: per alert event the alert's Communication and
    Flag. Which patients and devices were emitted, with what, is remembered;
    a patient or device not remembered is looked up in the store first (`load`)
    so a restart does not overwrite a Patient with fewer demographics.
    """

    def __init__(
        self,
        mrn_system: str,
        load: ResourceLoader | None = None,
        thresholds: Iterable[Threshold] = DEFAULT_THRESHOLDS,
    ) -> None:
        self.mrn_system = mrn_system
        self.load = load
        self.builder = ObservationBuilder(thresholds)
        self.patients: dict[str, dict[str, str]] = {}
        self.devices: set[str] = set()
        self.news2: dict[str, tuple[int, str, bool]] = {}

    def reset(self) -> None:
        # Another processor may have changed these while the partitions were elsewhere.
        self.patients.clear()
        self.devices.clear()
        self.news2.clear()

    def process(self, batch: Batch) -> None:
        readings = batch.readings
        self._load_unknown(readings)  # the only part that can fail: before any change
        out = batch.observations
        self._patients_and_devices(readings, out)
        build = self.builder.build
        for reading in readings:
            key = reading.patient_id
            out.extend([(key, resource) for resource in build(reading)])
        for patient, score in batch.scores.items():
            signature = (score.total, score.band, score.complete)
            if self.news2.get(patient) != signature:
                self.news2[patient] = signature
                out.extend((patient, r) for r in news2_resources(patient, score))
        _bound(self.news2)
        for event in batch.alert_events:
            alert = event.alert
            batch.alert_resources.extend((alert.patient_id, r) for r in alert_resources(alert))

    def _load_unknown(self, readings: list[Reading]) -> None:
        if self.load is None:
            return
        known_patients, known_devices = self.patients, self.devices
        patients = {
            fhir_id(r.patient_id): r.patient_id
            for r in readings
            if r.patient_id not in known_patients
        }
        devices = {
            fhir_id(r.device_id): r.device_id for r in readings if r.device_id not in known_devices
        }
        stored_patients = self.load("Patient", list(patients)) if patients else {}
        stored_devices = self.load("Device", list(devices)) if devices else {}
        for key, stored in stored_patients.items():
            self.patients[patients[key]] = demographics_of(stored)
        self.devices.update(devices[key] for key in stored_devices)

    def _patients_and_devices(
        self, readings: list[Reading], out: list[tuple[str, Resource]]
    ) -> None:
        changed: dict[str, float] = {}
        new_devices: dict[str, tuple[str, float]] = {}
        for reading in readings:
            patient = reading.patient_id
            known = self.patients.get(patient)
            if known is None or (reading.patient and not reading.patient.items() <= known.items()):
                self.patients[patient] = {**(known or {}), **reading.patient}
                changed[patient] = max(changed.get(patient, reading.ts), reading.ts)
            if reading.device_id not in self.devices:
                self.devices.add(reading.device_id)
                new_devices[reading.device_id] = (patient, reading.ts)
        for patient, updated in changed.items():
            resource = patient_for(patient, self.patients[patient], self.mrn_system, updated)
            out.append((patient, resource))
        for device, (patient, first_seen) in new_devices.items():
            out.append((patient, device_for(device, first_seen)))
        _bound(self.patients)
        if len(self.devices) > _CACHE_LIMIT:
            self.devices.clear()
