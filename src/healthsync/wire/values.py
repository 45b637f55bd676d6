"""Each value of a line checked and converted, or a :class:`WireError` saying why not."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Final

from healthsync.domain.readings import (
    CONSCIOUSNESS_LEVELS,
    CONTROL_RE,
    DATE_RE,
    EPOCH_2000,
    ID_RE,
    MAX_FUTURE_S,
    MAX_PATIENT_CHARS,
    QUALITY,
    VITALS,
)
from healthsync.wire.errors import WireError

BP = "bp"

# Stricter than float(): no "inf", "nan", "1_000", surrounding spaces or
# non-ASCII digits, all of which float() would quietly accept.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_TRUE: Final = frozenset({"true", "yes", "1", "y"})
_FALSE: Final = frozenset({"false", "no", "0", "n"})
_GENDERS: Final[dict[str, str]] = {
    "male": "male",
    "female": "female",
    "other": "other",
    "unknown": "unknown",
    "m": "male",
    "f": "female",
}
# seq goes into JSON (orjson) downstream, which is limited to 64-bit integers.
_MAX_SEQ = 2**63 - 1


def show(key: str) -> str:
    """A key as it may appear in an error detail: bounded, never the whole line."""
    return key if len(key) <= 32 else key[:32] + "..."


def _bad(key: str, why: str) -> WireError:
    return WireError("bad_value", f"{key}: {why}")


def _number(key: str, raw: object) -> float:
    # Text first: it is what nearly every device sends.
    if isinstance(raw, str):
        if _NUMBER_RE.fullmatch(raw) is None:
            raise _bad(key, "not a number")
        value = float(raw)
    elif isinstance(raw, bool):
        raise _bad(key, "a boolean is not a number")
    elif isinstance(raw, int):
        value = float(raw)
    elif isinstance(raw, float):
        value = raw
    else:
        raise _bad(key, "not a number")
    if not math.isfinite(value):
        raise _bad(key, "not a finite number")
    return value


def vital(name: str, raw: object) -> float:
    if isinstance(raw, str):
        if name == "spo2" and raw.endswith("%"):
            raw = raw[:-1]
        elif name == "temp":
            return _temperature(raw)
    return _bounded(name, _number(name, raw))


def quality(name: str, raw: object) -> float:
    low, high, _ = QUALITY[name]
    value = _number(name, raw)
    if not low <= value <= high:
        raise WireError("out_of_range", f"{name}: {value:g} outside {low:g}..{high:g}")
    return value + 0.0


def _temperature(raw: str) -> float:
    lowered = raw.lower()
    fahrenheit = False
    for suffix, is_f in (("°c", False), ("°f", True), ("c", False), ("f", True)):
        if lowered.endswith(suffix):
            raw, fahrenheit = raw[: -len(suffix)], is_f
            break
    value = _number("temp", raw)
    if fahrenheit:
        value = round((value - 32.0) * 5.0 / 9.0, 2)
    return _bounded("temp", value)


def _bounded(name: str, value: float) -> float:
    vital = VITALS[name]
    if not vital.minimum <= value <= vital.maximum:
        raise WireError(
            "out_of_range",
            f"{name}: {value:g} {vital.ucum} outside {vital.minimum:g}..{vital.maximum:g}",
        )
    # Adding 0.0 turns -0.0 into 0.0, which would otherwise be shown as "-0".
    return value + 0.0


def blood_pressure(raw: object) -> tuple[float, float]:
    if not isinstance(raw, str):
        raise _bad(BP, "expected systolic/diastolic, e.g. 120/80")
    systolic, sep, diastolic = raw.partition("/")
    if not sep:
        raise _bad(BP, "expected systolic/diastolic, e.g. 120/80")
    return (
        _bounded("bp_sys", _number(BP, systolic)),
        _bounded("bp_dia", _number(BP, diastolic)),
    )


def identifier(key: str, raw: object) -> str:
    # A JSON integer id is unambiguous: it is what `patient_id=1001` means in text.
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or ID_RE.fullmatch(raw) is None:
        raise _bad(key, "must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return raw


def timestamp(raw: object, received_at: float) -> float:
    if isinstance(raw, str) and _NUMBER_RE.fullmatch(raw) is None:
        if not raw.isascii():
            raise _bad("ts", "not ISO 8601 or epoch seconds")
        try:
            stamp = datetime.fromisoformat(raw)
        except ValueError:
            raise _bad("ts", "not ISO 8601 or epoch seconds") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        try:
            ts = stamp.timestamp()
        except (OverflowError, ValueError):
            raise WireError("out_of_range", "ts: not a representable time") from None
    else:
        ts = _number("ts", raw)
    if ts < EPOCH_2000:
        raise WireError("out_of_range", "ts: before the year 2000")
    if ts > received_at + MAX_FUTURE_S:
        ahead = ts - received_at
        raise WireError("out_of_range", f"ts: {ahead:.0f} s ahead of receive time")
    return ts


def sequence(raw: object) -> int:
    if isinstance(raw, bool):
        raise _bad("seq", "must be a non-negative integer")
    if isinstance(raw, int):
        seq = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        seq = int(raw)
    else:
        raise _bad("seq", "must be a non-negative integer")
    if not 0 <= seq <= _MAX_SEQ:
        raise _bad("seq", "must be a non-negative 64-bit integer")
    return seq


def flag(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return raw == 1
    if isinstance(raw, str):
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _bad("on_oxygen", "expected true/false, yes/no, 1/0 or y/n")


def consciousness(raw: object) -> str:
    if isinstance(raw, str):
        level = raw.upper()
        if level in CONSCIOUSNESS_LEVELS:
            return level
    raise _bad("consciousness", "expected one of A C V P U")


def patient_field(key: str, raw: object, received_at: float) -> str:
    if not isinstance(raw, str):
        raise _bad(key, "must be a string")
    if not 1 <= len(raw) <= MAX_PATIENT_CHARS:
        raise _bad(key, f"must be 1-{MAX_PATIENT_CHARS} characters")
    if CONTROL_RE.search(raw) is not None:
        raise _bad(key, "contains control characters")
    if key == "gender":
        gender = _GENDERS.get(raw.lower())
        if gender is None:
            raise _bad(key, "expected male, female, other or unknown")
        return gender
    if key == "birth_date":
        if DATE_RE.fullmatch(raw) is None:
            raise _bad(key, "expected YYYY-MM-DD")
        try:
            born = date.fromisoformat(raw)
        except ValueError:
            raise _bad(key, "not a calendar date") from None
        # A day of slack: the device's local date may be ahead of UTC.
        today = datetime.fromtimestamp(received_at, tz=UTC).date()
        if born > today + timedelta(days=1):
            raise _bad(key, "in the future")
    return raw


# --- tokenising -----------------------------------------------------------
