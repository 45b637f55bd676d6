"""FHIR ids: every id is derived from what the resource describes, so a replay maps to the same."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final

from healthsync.domain.readings import VITALS, keyed_digest
from healthsync.fhir.terminology import NEWS2_ID_SYSTEM, READING_ID_SYSTEM

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@lru_cache(maxsize=65536)
def fhir_id(raw: str, key: bytes | None = None) -> str:
    """`raw` if it is a valid FHIR id, else ``h-`` and a stable digest of it.

    Device and patient ids on the wire may hold `_` and `:`, which FHIR ids
    may not; the raw id is kept as an identifier of the resource either way.
    With `key` (the keyring's id key, whenever encryption at rest is on) the
    digest is an HMAC: deterministic, so references stay stable, but nobody
    without the key can find the patient behind an id by trying plausible ones.
    """
    if _FHIR_ID.fullmatch(raw):
        return raw
    # The prefix keeps these digests apart from reading and alert ids made with the same key.
    basis = b"fhir-id\x1f" + raw.encode() if key else raw.encode()
    return "h-" + keyed_digest(basis, 12, key)


# Which Observation of a reading carries a vital (systolic and diastolic share the panel),
# spelt in FHIR's id alphabet, which has no `_`.
SUFFIXES: Final = {name: name.replace("_", "-") for name in VITALS} | {
    "bp_sys": "bp",
    "bp_dia": "bp",
}


def observation_id(reading_id: str, vital: str) -> str:
    """The id of the Observation that carries `vital` of a reading."""
    return f"{reading_id}-{SUFFIXES[vital]}"


def patient_reference(patient_id: str, key: bytes | None = None) -> dict[str, str]:
    return {"reference": f"Patient/{fhir_id(patient_id, key)}"}


def device_reference(device_id: str, key: bytes | None = None) -> dict[str, str]:
    return {"reference": f"Device/{fhir_id(device_id, key)}"}


# A reference to an Observation carries its identifier too (a FHIR logical reference
# beside the literal one): an EHR that assigns ids of its own is sent the identifier
# alone when the Observation is not in the same Bundle (fhir/ehr_push.py). Patients and
# Devices are found there by the identifiers their own resources carry.


def observation_reference(reading_id: str, vital: str) -> dict[str, Any]:
    """The vital-sign Observation of a reading that carries `vital`."""
    name = "bp" if SUFFIXES[vital] == "bp" else vital
    return {
        "reference": f"Observation/{observation_id(reading_id, vital)}",
        "identifier": {"system": READING_ID_SYSTEM, "value": f"{reading_id}/{name}"},
    }


def news2_reference(news2: str) -> dict[str, Any]:
    """The Observation of a NEWS2 score, by :func:`news2_id`."""
    return {
        "reference": f"Observation/{news2}",
        "identifier": {"system": NEWS2_ID_SYSTEM, "value": news2},
    }


_DERIVED_SUFFIXES: Final = frozenset(SUFFIXES.values())
# The most vital-sign Observations one reading makes: one per suffix.
MAX_OBSERVATIONS: Final = len(_DERIVED_SUFFIXES)


def observation_count(vitals: Iterable[str]) -> int:
    """How many vital-sign Observations a reading of these vitals makes (the BP panel is one)."""
    return len({SUFFIXES[v] for v in vitals})


_HEX: Final = frozenset("0123456789abcdef")


def is_reading_id(value: str) -> bool:
    """Whether `value` has the shape of a reading id: 24 hex digits (readings.reading_id_for)."""
    return len(value) == 24 and set(value) <= _HEX


def reading_of_observation(resource_id: str) -> str | None:
    """The reading a vital-sign Observation id was made from; None for any other id.

    Vital-sign Observations are a pure function of their reading, so the FHIR
    store keeps the reading once and the read API rebuilds them from it.
    """
    reading_id, sep, suffix = resource_id.partition("-")
    if sep and suffix in _DERIVED_SUFFIXES and is_reading_id(reading_id):
        return reading_id
    return None


def news2_id(patient_id: str, ts: float, key: bytes | None = None) -> str:
    """Shared by a NEWS2 score's Observation and RiskAssessment (different types).

    Keyed like :func:`fhir_id`: the score's time is in the resource, so an
    unkeyed digest would name its patient to whoever tries patient ids.
    """
    basis = f"{patient_id}\x1fnews2\x1f{round(ts * 1000)}".encode()
    return "news2-" + keyed_digest(basis, 12, key)
