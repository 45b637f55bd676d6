"""Vital-signs Observations (HL7 vital-signs profiles, LOINC codes, UCUM quantities).

Blood pressure is always the 85354-9 panel with systolic and diastolic
components, so an Observation id is a function of (reading id, vital) alone.

The builder is on the processor's hot path: what does not depend on the
reading is built once here, what every Observation of a reading shares is
built once per reading, and the shared parts are referenced, not copied
(resources are serialised, never mutated, once built).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any, Final

from healthsync.domain.alerts import DEFAULT_THRESHOLDS, Threshold
from healthsync.domain.readings import VITALS, Reading, isoformat_ms
from healthsync.fhir.ids import SUFFIXES, device_reference, patient_reference
from healthsync.fhir.terminology import (
    ABSENT,
    INTERPRETATION_LISTS,
    INTERPRETATIONS,
    NORMAL_RANGE,
    PROFILE_BASE,
    READING_ID_SYSTEM,
    UCUM,
    VITAL_SIGNS_CATEGORY,
    Resource,
    loinc,
    quantity,
)

_BP_PARTS: Final = ("bp_sys", "bp_dia")
_PROFILES: Final = {
    "heart-rate": "heartrate",
    "spo2": "oxygensat",
    "temp": "bodytemp",
    "resp-rate": "resprate",
    "bp": "bp",
}
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
        codings = [loinc(vital.loinc)]
        if name == "spo2":
            codings.append(loinc("59408-5"))  # what a pulse oximeter measures, for EHRs that ask
        self.code: dict[str, Any] = {"coding": codings, "text": vital.display}
        self.ucum = vital.ucum
        self.bands = None if threshold is None else _bands(threshold)
        self.reference_range: list[dict[str, Any]] | None = None
        if threshold is not None and (threshold.low is not None or threshold.high is not None):
            band: dict[str, Any] = {}
            if threshold.low is not None:
                band["low"] = quantity(vital.ucum, threshold.low)
            if threshold.high is not None:
                band["high"] = quantity(vital.ucum, threshold.high)
            band["type"] = NORMAL_RANGE
            self.reference_range = [band]

    def measured(self, target: dict[str, Any], value: float) -> str | None:
        """Adds valueQuantity, interpretation and referenceRange to `target`; returns the code."""
        ucum = self.ucum
        target["valueQuantity"] = {"value": value, "unit": ucum, "system": UCUM, "code": ucum}
        if self.bands is None:
            return None
        code = _band_code(self.bands, value)
        target["interpretation"] = INTERPRETATION_LISTS[code]
        if self.reference_range is not None:
            target["referenceRange"] = self.reference_range
        return code


class ObservationBuilder:
    """Builds a reading's vital-signs Observations, interpreted against `thresholds`.

    `id_key` keys the patient and device ids they refer to (see :func:`fhir_id`).
    """

    def __init__(
        self, thresholds: Iterable[Threshold] = DEFAULT_THRESHOLDS, id_key: bytes | None = None
    ) -> None:
        self.id_key = id_key
        by_vital = {t.vital: t for t in thresholds}
        self.vitals = {name: _Vital(name, by_vital.get(name)) for name in VITALS}
        # A vital with no profile of its own gets the base vital-signs profile.
        self.meta = {
            suffix: {"profile": [PROFILE_BASE + _PROFILES.get(suffix, "vitalsigns")]}
            for suffix in SUFFIXES.values()
        }
        self.bp_code = {"coding": [loinc("85354-9")], "text": "Blood pressure"}

    def build(self, reading: Reading) -> list[Resource]:
        """One Observation per vital; systolic and diastolic together as the BP panel."""
        vitals = reading.vitals
        rid = reading.reading_id
        common = self.common(reading)  # shared by the reading's Observations, built once
        resources: list[Resource] = []
        singles, panel = split_panel(vitals)
        for name, value in singles:
            suffix = SUFFIXES[name]
            # The id is limited to FHIR's id alphabet; the identifier keeps the canonical
            # vital name, which is what an EHR's conditional update already matches on.
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

    def common(self, reading: Reading) -> dict[str, Any]:
        """What every Observation of `reading` says alike, after its code-independent head."""
        return {
            "status": "final",
            "category": VITAL_SIGNS_CATEGORY,
            "subject": patient_reference(reading.patient_id, self.id_key),
            "device": device_reference(reading.device_id, self.id_key),
            "effectiveDateTime": isoformat_ms(reading.ts),
        }

    def _panel(self, rid: str, vitals: dict[str, float], common: dict[str, Any]) -> Resource:
        return {
            "resourceType": "Observation",
            "id": f"{rid}-bp",
            "meta": self.meta["bp"],
            "identifier": [{"system": READING_ID_SYSTEM, "value": f"{rid}/bp"}],
            **common,
            "code": self.bp_code,
            **self.panel_values(vitals.get("bp_sys"), vitals.get("bp_dia")),
        }

    def panel_values(self, systolic: float | None, diastolic: float | None) -> dict[str, Any]:
        """The BP panel's components and, summing them up, its interpretation."""
        components = []
        codes: list[str] = []
        for part, value in zip(_BP_PARTS, (systolic, diastolic), strict=True):
            vital = self.vitals[part]
            component: dict[str, Any] = {"code": vital.code}
            if value is None:
                # The profile needs both components; say why one has no value.
                component["dataAbsentReason"] = ABSENT
            else:
                code = vital.measured(component, value)
                if code is not None and code not in codes:
                    codes.append(code)
            components.append(component)
        values: dict[str, Any] = {"component": components}
        # The panel's own interpretation sums up the components: their abnormal codes, else N.
        abnormal = [c for c in codes if c != "N"] or codes
        if abnormal:
            values["interpretation"] = [INTERPRETATIONS[code] for code in abnormal]
        return values


def split_panel(vitals: dict[str, float]) -> tuple[list[tuple[str, float]], bool]:
    """The vitals that make an Observation each, in order, and whether the BP panel follows."""
    singles = [(name, value) for name, value in vitals.items() if name not in _BP_PARTS]
    return singles, len(singles) < len(vitals)


def reading_bundle(reading: Reading, observations: list[Resource]) -> Resource:
    """A reading's Observations as one collection Bundle: one message per reading on Kafka.

    Sealing and producing each Observation on its own cost the processor a
    fifth of its time; one Bundle per reading carries the same resources for
    one seal and one produce. The Bundle's id is the reading id.
    """
    return {
        "resourceType": "Bundle",
        "id": reading.reading_id,
        "identifier": {"system": READING_ID_SYSTEM, "value": reading.reading_id},
        "type": "collection",
        "timestamp": isoformat_ms(reading.ts),
        "entry": [{"resource": observation} for observation in observations],
    }


def unbundled(resources: Iterable[Resource]) -> Iterator[Resource]:
    """The resources themselves, with each reading Bundle replaced by its Observations."""
    for resource in resources:
        if resource.get("resourceType") == "Bundle" and resource.get("type") == "collection":
            yield from (entry["resource"] for entry in resource.get("entry", ()))
        else:
            yield resource


@lru_cache(maxsize=4)
def _default_builder(id_key: bytes | None) -> ObservationBuilder:
    return ObservationBuilder(id_key=id_key)


def observations_for(reading: Reading, id_key: bytes | None = None) -> list[Resource]:
    """The reading's Observations, interpreted against the default thresholds."""
    return _default_builder(id_key).build(reading)
