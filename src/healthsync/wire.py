"""The device line protocol: parse one line into a :class:`Reading`, or format one.

A line is either ``key=value`` tokens separated by commas and/or whitespace
(what a bash script with netcat sends) or one JSON object. Every rejection is a
:class:`WireError` whose ``reason`` is one of :data:`REASONS`; nothing else
escapes :func:`parse_line`, whatever bytes arrive.

This runs once per line on the ingest hot path, so everything that can be
computed once (alias map, patterns) is computed at import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final

import orjson

from healthsync.domain.readings import (
    CONSCIOUSNESS_LEVELS,
    PATIENT_FIELDS,
    QUALITY,
    VITALS,
    Reading,
    reading_id_for,
)

__all__ = [
    "CANONICAL_KEYS",
    "MAX_LINE_BYTES",
    "REASONS",
    "WireError",
    "format_line",
    "ok_reply",
    "parse_line",
]

MAX_LINE_BYTES: Final = 4096

_CODES: Final[dict[str, int]] = {
    "invalid_utf8": 400,
    "empty": 400,
    "malformed": 400,
    "unknown_key": 400,
    "duplicate_key": 400,
    "missing_field": 400,
    "bad_value": 400,
    "no_vitals": 400,
    "too_long": 413,
    "out_of_range": 422,
}
REASONS: Final[tuple[str, ...]] = tuple(_CODES)

_MAX_DETAIL = 200


class WireError(Exception):
    """A line the protocol rejects, with what the device is told and why.

    ``reason`` is a fixed slug (a metrics label, so its set must stay small);
    ``detail`` is for a human and may name a key but never repeats the line,
    which can carry patient data. Reasons the parser gives have their code in
    :data:`REASONS`' table; the ingest server's own (``device_mismatch``) pass it.
    """

    def __init__(self, reason: str, detail: str, code: int | None = None) -> None:
        super().__init__(reason, detail)
        self.code: int = _CODES[reason] if code is None else code
        self.reason: str = reason
        self.detail: str = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"

    def reply(self) -> bytes:
        """The ``ERR`` line sent back to the device."""
        detail = "".join(c if " " <= c <= "~" else "?" for c in self.detail[:_MAX_DETAIL])
        return f"ERR {self.code} {self.reason}: {detail}\n".encode("ascii")


def ok_reply(reading_id: str) -> bytes:
    """The ``OK`` line sent back once a reading is safely stored."""
    return b"OK " + reading_id.encode("ascii") + b"\n"


# --- keys -----------------------------------------------------------------

_BP = "bp"
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
    _BP: (),
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
    canonical: (("bp_sys", "bp_dia") if canonical == _BP else (canonical,))
    for canonical in _ALIASES
}

# --- values ---------------------------------------------------------------

_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Stricter than float(): no "inf", "nan", "1_000", surrounding spaces or
# non-ASCII digits, all of which float() would quietly accept.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

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
_MAX_PATIENT_CHARS = 256
# seq goes into JSON (orjson) downstream, which is limited to 64-bit integers.
_MAX_SEQ = 2**63 - 1
_EPOCH_2000 = 946_684_800.0
_MAX_FUTURE_S = 300.0

# One optional key=value token after optional separators. A quoted value runs
# to the next unescaped quote; inside it only \" and \\ are escapes, so Windows
# paths and the like survive. Possessive quantifiers keep a bad line from
# backtracking, which matters on a hot path fed by untrusted input.
_PAIR_RE = re.compile(
    r"[ \t,]*+"
    r'(?:(?P<key>[^ \t,="]++)='
    r'(?:"(?P<quoted>(?:[^"\\]|\\["\\]?)*+)"|(?P<bare>[^ \t,"]*+))'
    r"(?=[ \t,]|\Z))?"
)
_ESCAPE_RE = re.compile(r'\\(["\\])')


def _show(key: str) -> str:
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


def _vital(name: str, raw: object) -> float:
    if isinstance(raw, str):
        if name == "spo2" and raw.endswith("%"):
            raw = raw[:-1]
        elif name == "temp":
            return _temperature(raw)
    return _bounded(name, _number(name, raw))


def _quality(name: str, raw: object) -> float:
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


def _blood_pressure(raw: object) -> tuple[float, float]:
    if not isinstance(raw, str):
        raise _bad(_BP, "expected systolic/diastolic, e.g. 120/80")
    systolic, sep, diastolic = raw.partition("/")
    if not sep:
        raise _bad(_BP, "expected systolic/diastolic, e.g. 120/80")
    return (
        _bounded("bp_sys", _number(_BP, systolic)),
        _bounded("bp_dia", _number(_BP, diastolic)),
    )


def _identifier(key: str, raw: object) -> str:
    # A JSON integer id is unambiguous: it is what `patient_id=1001` means in text.
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or _ID_RE.fullmatch(raw) is None:
        raise _bad(key, "must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return raw


def _timestamp(raw: object, received_at: float) -> float:
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
    if ts < _EPOCH_2000:
        raise WireError("out_of_range", "ts: before the year 2000")
    if ts > received_at + _MAX_FUTURE_S:
        ahead = ts - received_at
        raise WireError("out_of_range", f"ts: {ahead:.0f} s ahead of receive time")
    return ts


def _sequence(raw: object) -> int:
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


def _flag(raw: object) -> bool:
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


def _consciousness(raw: object) -> str:
    if isinstance(raw, str):
        level = raw.upper()
        if level in CONSCIOUSNESS_LEVELS:
            return level
    raise _bad("consciousness", "expected one of A C V P U")


def _patient_field(key: str, raw: object, received_at: float) -> str:
    if not isinstance(raw, str):
        raise _bad(key, "must be a string")
    if not 1 <= len(raw) <= _MAX_PATIENT_CHARS:
        raise _bad(key, f"must be 1-{_MAX_PATIENT_CHARS} characters")
    if _CONTROL_RE.search(raw) is not None:
        raise _bad(key, "contains control characters")
    if key == "gender":
        gender = _GENDERS.get(raw.lower())
        if gender is None:
            raise _bad(key, "expected male, female, other or unknown")
        return gender
    if key == "birth_date":
        if _DATE_RE.fullmatch(raw) is None:
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


def _pairs(text: str) -> list[tuple[str, str]]:
    if '"' in text:
        return _quoted_pairs(text)
    pairs: list[tuple[str, str]] = []
    for token in text.replace(",", " ").replace("\t", " ").split(" "):
        if token:
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise WireError("malformed", f"token {len(pairs) + 1} is not key=value")
            pairs.append((key, value))
    return pairs


def _quoted_pairs(text: str) -> list[tuple[str, str]]:
    """Tokens of a line with a double quote in it (the less common, slower path)."""
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while True:
        match = _PAIR_RE.match(text, pos)
        key = None if match is None else match["key"]
        if match is None or key is None:
            # The pattern matches separators alone; ending there is a clean end.
            if match is not None and match.end() == end:
                return pairs
            raise WireError(
                "malformed", f"token {len(pairs) + 1} is not key=value or has unbalanced quotes"
            )
        quoted = match["quoted"]
        if quoted is None:
            value = match["bare"]
        elif "\\" in quoted:
            value = _ESCAPE_RE.sub(r"\1", quoted)
        else:
            value = quoted
        pairs.append((key, value))
        pos = match.end()


def _json_pairs(text: str) -> list[tuple[str, object]]:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise WireError("malformed", "not valid JSON") from None
    if not isinstance(doc, dict):
        raise WireError("malformed", "JSON line must be an object")
    # null means "not sent": JSON producers emit it for unset optional fields.
    return [(key, value) for key, value in doc.items() if value is not None]


# --- parse ----------------------------------------------------------------


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
    for raw_key, value in _line_pairs(_line_text(line, max_line_bytes)):
        fields.add(raw_key, value)
    return fields.reading(id_key)


def _line_text(line: bytes, max_line_bytes: int) -> str:
    """The line's text, without its line end and the blanks around it."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > max_line_bytes:
        raise WireError("too_long", f"line is {len(line)} bytes, limit {max_line_bytes}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    text = text.strip(" \t")
    if not text:
        raise WireError("empty", "empty line")
    return text


def _line_pairs(text: str) -> Sequence[tuple[str, object]]:
    if text[0] == "{":
        return _json_pairs(text)
    pairs = _pairs(text)
    if not pairs:
        raise WireError("empty", "only separators")
    return pairs


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
            raise WireError("unknown_key", f"unknown key {_show(raw_key)!r}")
        for filled in _FILLS[canonical]:
            if filled in self.seen:
                raise WireError("duplicate_key", f"{filled} given more than once")
            self.seen.add(filled)
        return canonical

    def add(self, raw_key: str, value: object) -> None:
        canonical = self._canonical(raw_key)
        if canonical in VITALS:
            self.vitals[canonical] = _vital(canonical, value)
        elif canonical == _BP:
            self.vitals["bp_sys"], self.vitals["bp_dia"] = _blood_pressure(value)
        elif canonical in _ID_KEYS:
            self.ids[canonical] = _identifier(canonical, value)
        elif canonical == "ts":
            self.ts = _timestamp(value, self.received_at)
        elif canonical == "seq":
            self.seq = _sequence(value)
        elif canonical == "on_oxygen":
            self.on_oxygen = _flag(value)
        elif canonical == "consciousness":
            self.consciousness = _consciousness(value)
        elif canonical in QUALITY:
            self.quality[canonical] = _quality(canonical, value)
        else:
            self.patient[canonical] = _patient_field(canonical, value, self.received_at)

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


# --- format ---------------------------------------------------------------

_FORMAT_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
_NEEDS_QUOTES = frozenset(' \t,"\\')


def _format_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{key}: {value} cannot be sent")
        # Whole numbers as integers (78, not 78.0); otherwise repr, the shortest
        # text that reads back as the same float.
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key}: a value cannot contain a line break")
        if value and _NEEDS_QUOTES.isdisjoint(value):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"{key}: cannot send a {type(value).__name__}")


def format_line(fields: Mapping[str, object]) -> bytes:
    """One protocol line (with its ``\\n``) for a device simulator.

    ``None`` values are left out, as if not sent. Raises ValueError or
    TypeError for a key or value the protocol cannot carry.
    """
    parts = []
    for key, value in fields.items():
        if _FORMAT_KEY_RE.fullmatch(key) is None:
            raise ValueError(f"{_show(key)!r} cannot be a key")
        if value is not None:
            parts.append(f"{key}={_format_value(key, value)}")
    return (" ".join(parts) + "\n").encode("utf-8")
