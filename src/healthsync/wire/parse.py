"""One line checked as a whole: its keys (with aliases), then the reading they make."""

from __future__ import annotations

from typing import Final

from healthsync.domain.readings import PATIENT_FIELDS, QUALITY, VITALS, Reading, reading_id_for
from healthsync.wire import values
from healthsync.wire.errors import WireError
from healthsync.wire.tokens import line_pairs, line_text
from healthsync.wire.values import BP

MAX_LINE_BYTES: Final = 4096

_ID_KEYS = ("device_id", "patient_id")
_PATIENT_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "patient_name": ("name",),
    "birth_date": ("dob",),
    "gender": ("sex",),
}
_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "device_id": ("device",),
    "patient_id": ("patient",),
    "ts": ("timestamp", "time"),
    "seq": (),
    **{name: vital.aliases for name, vital in VITALS.items()},
    BP: (),
    "on_oxygen": ("on_o2",),
    "consciousness": (),
    **{name: aliases for name, (_, _, aliases) in QUALITY.items()},
    **{field: _PATIENT_ALIASES.get(field, ()) for field in PATIENT_FIELDS},
}

# Lower-case alias (and canonical name) -> canonical key.
CANONICAL_KEYS: Final[dict[str, str]] = {
    alias: canonical for canonical, aliases in _ALIASES.items() for alias in (canonical, *aliases)
}

# `bp` fills two fields, so duplicates are tracked per filled field.
_FILLS: Final[dict[str, tuple[str, ...]]] = {
    canonical: (("bp_sys", "bp_dia") if canonical == BP else (canonical,)) for canonical in _ALIASES
}


def parse_line(
    line: bytes,
    received_at: float,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    id_key: bytes | None = None,
) -> Reading:
    """Parse one protocol line into a validated reading, or raise :class:`WireError`.

    `id_key` keys the reading id (see :func:`reading_id_for`).
    """
    fields = _Fields(received_at)
    for raw_key, value in line_pairs(line_text(line, max_line_bytes)):
        fields.add(raw_key, value)
    return fields.reading(id_key)


class _Fields:
    """What one line says, gathered key by key, then checked as a whole."""

    __slots__ = (
        "consciousness",
        "ids",
        "on_oxygen",
        "patient",
        "quality",
        "received_at",
        "seen",
        "seq",
        "ts",
        "vitals",
    )

    def __init__(self, received_at: float) -> None:
        self.received_at = received_at
        self.seen: set[str] = set()
        self.ids: dict[str, str] = {}
        self.vitals: dict[str, float] = {}
        self.patient: dict[str, str] = {}
        self.ts = received_at
        self.seq: int | None = None
        self.on_oxygen: bool | None = None
        self.consciousness: str | None = None
        self.quality: dict[str, float] = {}

    def _canonical(self, raw_key: str) -> str:
        canonical = CANONICAL_KEYS.get(raw_key.lower())
        if canonical is None:
            raise WireError("unknown_key", f"unknown key {values.show(raw_key)!r}")
        for filled in _FILLS[canonical]:
            if filled in self.seen:
                raise WireError("duplicate_key", f"{filled} given more than once")
            self.seen.add(filled)
        return canonical

    def add(self, raw_key: str, value: object) -> None:
        canonical = self._canonical(raw_key)
        if canonical in VITALS:
            self.vitals[canonical] = values.vital(canonical, value)
        elif canonical == BP:
            self.vitals["bp_sys"], self.vitals["bp_dia"] = values.blood_pressure(value)
        elif canonical in _ID_KEYS:
            self.ids[canonical] = values.identifier(canonical, value)
        elif canonical == "ts":
            self.ts = values.timestamp(value, self.received_at)
        elif canonical == "seq":
            self.seq = values.sequence(value)
        elif canonical == "on_oxygen":
            self.on_oxygen = values.flag(value)
        elif canonical == "consciousness":
            self.consciousness = values.consciousness(value)
        elif canonical in QUALITY:
            self.quality[canonical] = values.quality(canonical, value)
        else:
            self.patient[canonical] = values.patient_field(canonical, value, self.received_at)

    def reading(self, id_key: bytes | None = None) -> Reading:
        device_id = self.ids.get("device_id")
        patient_id = self.ids.get("patient_id")
        if device_id is None or patient_id is None:
            missing = " and ".join(key for key in _ID_KEYS if key not in self.ids)
            raise WireError("missing_field", f"{missing} required")
        vitals = self.vitals
        if not vitals:
            raise WireError("no_vitals", "a reading needs at least one vital")
        systolic, diastolic = vitals.get("bp_sys"), vitals.get("bp_dia")
        if systolic is not None and diastolic is not None and systolic <= diastolic:
            raise WireError(
                "out_of_range", f"bp_sys {systolic:g} must be above bp_dia {diastolic:g}"
            )
        return Reading(
            reading_id=reading_id_for(device_id, self.seq, round(self.ts * 1000), key=id_key),
            device_id=device_id,
            patient_id=patient_id,
            ts=self.ts,
            received_at=self.received_at,
            vitals=vitals,
            seq=self.seq,
            on_oxygen=self.on_oxygen,
            consciousness=self.consciousness,
            patient=self.patient,
            quality=self.quality,
        )
