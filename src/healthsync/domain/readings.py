"""The canonical reading and the definitions of the vitals HealthSync knows.

Everything downstream of the wire parser (Kafka topic values, the processor,
Redis, the API) speaks in terms of :class:`Reading` and :data:`VITALS`. Units
here are the canonical ones (UCUM codes); the wire parser converts into them.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

import orjson

from healthsync.domain.hmac_sha256 import hmac_sha256


@dataclass(frozen=True, slots=True)
class Vital:
    """One measured quantity: how it is named, coded and bounded."""

    name: str
    display: str
    ucum: str
    loinc: str
    # Physiological bounds: a value outside them is a device or typing fault,
    # not a patient, and the reading is rejected rather than guessed at.
    minimum: float
    maximum: float
    aliases: tuple[str, ...] = ()
    decimals: int = 0


VITALS: dict[str, Vital] = {
    v.name: v
    for v in (
        Vital("heart_rate", "Heart rate", "/min", "8867-4", 0, 350, ("hr", "pulse")),
        Vital("spo2", "Oxygen saturation", "%", "2708-6", 20, 100, ("oxygen", "o2", "sao2")),
        Vital("temp", "Body temperature", "Cel", "8310-5", 25, 45, ("temperature",), decimals=1),
        Vital("resp_rate", "Respiratory rate", "/min", "9279-1", 0, 80, ("rr", "respiratory_rate")),
        Vital("bp_sys", "Systolic blood pressure", "mm[Hg]", "8480-6", 30, 300),
        Vital("bp_dia", "Diastolic blood pressure", "mm[Hg]", "8462-4", 10, 200),
    )
}

CONSCIOUSNESS_LEVELS = ("A", "C", "V", "P", "U")

# Signal quality a device may report with a reading: name -> (minimum, maximum, aliases).
# ``sqi``: a signal-quality index, 0 (unusable) to 1 (clean); ``pi``: the perfusion
# index in %, which pulse oximeters show (below about 0.3 % SpO2 is unreliable).
QUALITY: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "sqi": (0.0, 1.0, ("signal_quality",)),
    "pi": (0.0, 20.0, ("perfusion_index",)),
}

# When a reading may be dated: from 2000 (earlier is a device whose clock was never set)
# to `MAX_FUTURE_S` after ingest received it (device clocks drift); a receive time
# from 2000 to the last second Python's datetime can show (9999-12-31).
EPOCH_2000 = 946_684_800.0
MAX_FUTURE_S = 300.0
LAST_EPOCH = 253_402_300_799.0

# What a device, patient or reading id may be: 1-64 characters of A-Z a-z 0-9 . _ : -
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Demographics a device may send. They are PHI: carried on the vitals topic for
# the FHIR Patient resource and stripped before anything is archived.
PATIENT_FIELDS = ("patient_name", "birth_date", "gender", "mrn", "address", "phone")
# FHIR's administrative genders, the only values `gender` is written as.
GENDERS = ("male", "female", "other", "unknown")
MAX_PATIENT_CHARS = 256
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def reading_id_for(device_id: str, seq: int | None, ts_ms: int, *, key: bytes | None = None) -> str:
    """Deterministic id: a resend of the same reading maps to the same id.

    A device sequence number identifies a reading even when the device's clock
    is wrong; without one, the device's timestamp (to the millisecond) does.
    With `key` (the keyring's id key, whenever encryption at rest is on) the id
    is an HMAC, so that nobody without the key can tell which device and time
    an id stands for by trying them.
    """
    basis = f"{device_id}\x1fseq\x1f{seq}" if seq is not None else f"{device_id}\x1fts\x1f{ts_ms}"
    return keyed_digest(basis.encode(), 12, key)


def keyed_digest(basis: bytes, size: int, key: bytes | None) -> str:
    """`size` bytes, in hex, of HMAC-SHA256(key, basis), or of BLAKE2b without a key."""
    if key is None:
        return hashlib.blake2b(basis, digest_size=size).hexdigest()
    return hmac_sha256(key, basis)[:size].hex()


# The processor formats each reading's time four times (its Observations, their
# Bundle, the FHIR store's index and record): remember a batch's.
@lru_cache(maxsize=1 << 14)
def isoformat_ms(epoch: float) -> str:
    """UTC ISO 8601 with millisecond precision and a `Z` suffix.

    Rounded to the millisecond, as reading ids and the archive keep it, so an
    Observation rebuilt from an archived reading shows the time it showed live.
    """
    seconds, millis = divmod(round(epoch * 1000), 1000)
    return f"{_isoformat_s(seconds)}.{millis:03d}Z"


# Ingest formats every reading's time once, and readings of the same second share all
# but the milliseconds: a datetime per second, not per reading (about 4 us each).
@lru_cache(maxsize=1 << 12)
def _isoformat_s(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None).isoformat()


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated reading from one device for one patient.

    `ts` is when the device measured (epoch seconds, UTC); `received_at` is when
    the ingest server accepted it, which end-to-end latency is measured from.
    """

    reading_id: str
    device_id: str
    patient_id: str
    ts: float
    received_at: float
    vitals: dict[str, float]
    seq: int | None = None
    on_oxygen: bool | None = None
    consciousness: str | None = None
    patient: dict[str, str] = field(default_factory=dict)
    # Signal quality the device reported for this reading: ``sqi`` (0-1) and/or the
    # perfusion index ``pi`` (%), as pulse oximeters do. Not a vital: never alerted on.
    quality: dict[str, float] = field(default_factory=dict)

    def to_json(self, demographics: bool = True) -> bytes:
        """The canonical JSON that goes on the vitals topic; without `demographics`,
        as if the reading carried no patient information."""
        doc: dict[str, Any] = {
            "reading_id": self.reading_id,
            "device_id": self.device_id,
            "patient_id": self.patient_id,
            "ts": isoformat_ms(self.ts),
            "ts_epoch": self.ts,
            "received_at": self.received_at,
            "vitals": self.vitals,
        }
        if self.seq is not None:
            doc["seq"] = self.seq
        if self.on_oxygen is not None:
            doc["on_oxygen"] = self.on_oxygen
        if self.consciousness is not None:
            doc["consciousness"] = self.consciousness
        if self.patient and demographics:
            doc["patient"] = self.patient
        if self.quality:
            doc["quality"] = self.quality
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes | str) -> Reading:
        """Inverse of :meth:`to_json`; raises ValueError, naming the field, on a value
        that is not a reading ingest could have written: the vitals topic is read as
        untrusted, since anything that can produce to it can put a reading there that
        ingest would have refused (a vital outside its bounds or not finite, an unknown
        vital or quality key, a time no later stage can place)."""
        try:
            doc = orjson.loads(data)
            received_at = epoch("received_at", doc["received_at"], EPOCH_2000, LAST_EPOCH)
            latest = min(received_at + MAX_FUTURE_S, LAST_EPOCH)
            ts = epoch("ts_epoch", doc["ts_epoch"], EPOCH_2000, latest)
            consciousness = doc.get("consciousness")
            if consciousness is not None and consciousness not in CONSCIOUSNESS_LEVELS:
                raise ValueError(f"consciousness: not one of {', '.join(CONSCIOUSNESS_LEVELS)}")
            on_oxygen = doc.get("on_oxygen")
            if on_oxygen is not None and not isinstance(on_oxygen, bool):
                raise ValueError("on_oxygen: not true or false")
            seq = doc.get("seq")
            if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
                raise ValueError("seq: not a non-negative integer")
            return cls(
                reading_id=_identifier("reading_id", doc["reading_id"]),
                device_id=_identifier("device_id", doc["device_id"]),
                patient_id=_identifier("patient_id", doc["patient_id"]),
                ts=ts,
                received_at=received_at,
                vitals=_bounded("vitals", doc["vitals"], _VITAL_BOUNDS),
                seq=seq,
                on_oxygen=on_oxygen,
                consciousness=consciousness,
                patient=_demographics(doc.get("patient", {}), received_at),
                quality=_bounded("quality", doc.get("quality", {}), _QUALITY_BOUNDS),
            )
        except (
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            ArithmeticError,
        ) as exc:
            raise ValueError(f"not a canonical reading: {exc}") from exc


def finite_number(name: str, raw: object) -> float:
    """A JSON number that is finite; a string, a boolean or null is none."""
    kind = type(raw)
    if kind is float:
        value = cast(float, raw)
    elif kind is int:  # a boolean's type is bool
        value = float(cast(int, raw))
    else:
        raise ValueError(f"{name}: not a number")
    if not math.isfinite(value):
        raise ValueError(f"{name}: not a finite number")
    return value


def _identifier(name: str, raw: object) -> str:
    if not isinstance(raw, str) or ID_RE.fullmatch(raw) is None:
        raise ValueError(f"{name}: not 1-64 characters of A-Z a-z 0-9 . _ : -")
    return raw


def epoch(name: str, raw: object, earliest: float, latest: float) -> float:
    """A finite JSON number from `earliest` to `latest`, as a time."""
    value = finite_number(name, raw)
    if not earliest <= value <= latest:
        raise ValueError(f"{name}: not a time HealthSync can hold")
    return value


def _demographics(raw: object, received_at: float) -> dict[str, str]:
    """Patient fields as ingest writes them. The research set keeps `gender` and
    derives an age from `birth_date`, so neither may carry free text."""
    if not isinstance(raw, dict):
        raise ValueError("patient: not an object")
    checked: dict[str, str] = {}
    for key, value in raw.items():
        if key not in PATIENT_FIELDS:
            raise ValueError(f"patient: unknown field {str(key)[:32]!r}")
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_PATIENT_CHARS:
            raise ValueError(f"{key}: not a string of 1-{MAX_PATIENT_CHARS} characters")
        if CONTROL_RE.search(value) is not None:
            raise ValueError(f"{key}: contains control characters")
        if key == "gender" and value not in GENDERS:
            raise ValueError(f"gender: not one of {', '.join(GENDERS)}")
        if key == "birth_date" and not _is_birth_date(value, received_at):
            raise ValueError("birth_date: not a past calendar date YYYY-MM-DD")
        checked[key] = value
    return checked


def _is_birth_date(raw: str, received_at: float) -> bool:
    """A calendar date no later than the day after the reading was received (a
    device's local date may be ahead of UTC)."""
    if DATE_RE.fullmatch(raw) is None:
        return False
    try:
        born = date.fromisoformat(raw)
    except ValueError:
        return False
    # Subtracted, not added: the day after 9999-12-31 is no date.
    return born - datetime.fromtimestamp(received_at, tz=UTC).date() <= timedelta(days=1)


def _bounded(what: str, raw: object, bounds: dict[str, tuple[float, float]]) -> dict[str, float]:
    """A JSON object of known names, each a finite number within its bounds."""
    if not isinstance(raw, dict):
        raise ValueError(f"{what}: not an object")
    checked: dict[str, float] = {}
    for name, value in raw.items():
        limits = bounds.get(name)
        if limits is None:
            raise ValueError(f"{what}: unknown name {str(name)[:32]!r}")
        number = finite_number(name, value)
        if not limits[0] <= number <= limits[1]:
            raise ValueError(f"{name}: outside {limits[0]:g}..{limits[1]:g}")
        checked[name] = number
    return checked


_VITAL_BOUNDS = {name: (vital.minimum, vital.maximum) for name, vital in VITALS.items()}
_QUALITY_BOUNDS = {name: (low, high) for name, (low, high, _aliases) in QUALITY.items()}
