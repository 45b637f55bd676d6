"""FHIR date search values: the time range a value's precision covers, and its prefix.

`2026-11-27` covers that whole day, `ge2026-11-27T10:00Z` everything from that
minute on; :func:`narrow` applies the prefix to a search's time window.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from fractions import Fraction

from healthsync.api.fhir import invalid
from healthsync.store.fhir_order import Window

_DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
_FHIR_PREFIXES = ("ne", "sa", "eb", "ap")

_DATE = re.compile(
    r"(?P<prefix>[a-z]{2})?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+\- ]\d{2}:\d{2})?)?)?)?"
)


def date_range(text: str) -> tuple[str, float, float]:
    """A date search value as (prefix, start, end): the epoch range its precision covers.

    `2026-11-27` covers that whole day, `2026-11-27T10:00Z` that minute. Without
    a time zone the value is taken as UTC, the zone every resource here is in. A
    space before the zone is a `+` that was not URL-encoded, as in a hand-typed URL.
    """
    match = _DATE.fullmatch(text)
    if match is None:
        raise invalid(
            f"date {text!r} is not a FHIR date: expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]]"
            "[Z|+hh:mm]]]], e.g. ge2026-11-27 or lt2026-11-27T10:00:00Z"
        )
    part = match.groupdict()
    prefix = part["prefix"] or "eq"
    if prefix not in _DATE_PREFIXES:
        hint = "is not supported" if prefix in _FHIR_PREFIXES else "is not a FHIR prefix"
        raise invalid(f"date prefix {prefix!r} {hint}; use one of {', '.join(_DATE_PREFIXES)}")
    try:
        start, end = _bounds(int(match["year"]), part)
    except (ValueError, OverflowError) as exc:  # OverflowError: the day after 9999-12-31
        raise invalid(f"date {text!r} is not a valid date: {exc}") from None
    return prefix, start, end


def _bounds(year: int, part: Mapping[str, str | None]) -> tuple[float, float]:
    if part["month"] is None:
        first = date(year, 1, 1)
        return _epoch(first), _epoch(date(year + 1, 1, 1))
    month = int(part["month"])
    if part["day"] is None:
        first = date(year, month, 1)
        after = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
        return _epoch(first), _epoch(after)
    day = date(year, month, int(part["day"]))
    if part["hour"] is None:
        return _epoch(day), _epoch(day + timedelta(days=1))
    stamp = datetime(
        year, month, day.day, int(part["hour"]), int(part["minute"] or 0), int(part["second"] or 0)
    )
    seconds = Fraction(calendar.timegm(stamp.timetuple())) - _offset(part["zone"])
    if part["second"] is None:
        step = Fraction(60)
    elif part["fraction"] is None:
        step = Fraction(1)
    else:
        digits = part["fraction"]
        step = Fraction(1, 10 ** len(digits))
        seconds += int(digits) * step
    # A resource shows its time to the microsecond, so a finer value (FHIR allows nine
    # digits) selects what shows at or after each bound's microsecond; a float of epoch
    # seconds could not hold the nanosecond anyway. Exact arithmetic, one rounding:
    # `...17.825` is the same float a writer stores.
    return float(_microsecond_up(seconds)), float(_microsecond_up(seconds + step))


def _microsecond_up(seconds: Fraction) -> Fraction:
    return Fraction(math.ceil(seconds * 1_000_000), 1_000_000)


def _epoch(day: date) -> float:
    return float(calendar.timegm(day.timetuple()))


def _offset(zone: str | None) -> int:
    if zone is None or zone == "Z":
        return 0
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"time zone {zone} out of range")
    sign = -1 if zone[0] == "-" else 1
    return sign * (hours * 3600 + minutes * 60)


def narrow(window: Window, prefix: str, start: float, end: float) -> Window:
    """FHIR prefix semantics against a resource time `t` and the value's range [start, end)."""
    if prefix == "eq":
        return window.narrow(start, end)
    if prefix == "ge":
        return window.narrow(start=start)
    if prefix == "gt":
        return window.narrow(start=end)
    if prefix == "le":
        return window.narrow(end=end)
    return window.narrow(end=start)  # lt
