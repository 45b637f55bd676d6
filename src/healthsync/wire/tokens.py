"""A line's text, and its key/value pairs: ``key=value`` tokens or one JSON object."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import orjson

from healthsync.wire.errors import WireError

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
    _no_repeated_keys(text)
    # null means "not sent": JSON producers emit it for unset optional fields.
    return [(key, value) for key, value in doc.items() if value is not None]


def _no_repeated_keys(text: str) -> None:
    """WireError if an object of the (valid) JSON text names a key twice: orjson keeps the
    last, so `"hr": 70, "hr": 200` would go out as 200 and a second `patient_id` would
    file the reading under it. The standard decoder hands the pairs over; it runs only
    on JSON lines, which orjson has already found sound."""

    def check(pairs: list[tuple[str, object]]) -> None:
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise WireError("duplicate_key", f"{key} given more than once")
            seen.add(key)

    try:
        json.loads(text, object_pairs_hook=check)
    except RecursionError:  # orjson takes 1,024 levels, the standard decoder fewer
        raise WireError("malformed", "JSON nested too deeply") from None
    except ValueError:  # sound for orjson; the standard decoder has tighter limits
        raise WireError("malformed", "not valid JSON") from None


# --- parse ----------------------------------------------------------------


def line_text(line: bytes, max_line_bytes: int) -> str:
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


def line_pairs(text: str) -> Sequence[tuple[str, object]]:
    if text[0] == "{":
        return _json_pairs(text)
    pairs = _pairs(text)
    if not pairs:
        raise WireError("empty", "only separators")
    return pairs
