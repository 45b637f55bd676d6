"""A protocol line from fields: the other direction, for device simulators."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date

from healthsync.wire.values import show

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
            raise ValueError(f"{show(key)!r} cannot be a key")
        if value is not None:
            parts.append(f"{key}={_format_value(key, value)}")
    return (" ".join(parts) + "\n").encode("utf-8")
