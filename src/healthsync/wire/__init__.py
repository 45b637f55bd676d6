"""The device line protocol: parse one line into a :class:`Reading`, or format one.

A line is either ``key=value`` tokens separated by commas and/or whitespace
(what a bash script with netcat sends) or one JSON object. Every rejection is a
:class:`WireError` whose ``reason`` is one of :data:`REASONS`; nothing else
escapes :func:`parse_line`, whatever bytes arrive.

- :mod:`.errors`: the rejection and the replies (``OK``, ``ERR``);
- :mod:`.tokens`: a line's text into key/value pairs (text or JSON);
- :mod:`.values`: each value checked and converted;
- :mod:`.parse`: the keys and their aliases, and the line checked as a whole;
- :mod:`.format`: the other direction, for device simulators.

This runs once per line on the ingest hot path, so everything that can be
computed once (alias map, patterns) is computed at import.
"""

from healthsync.wire.errors import REASONS, WireError, ok_reply
from healthsync.wire.format import format_line
from healthsync.wire.parse import CANONICAL_KEYS, MAX_LINE_BYTES, parse_line

__all__ = [
    "CANONICAL_KEYS",
    "MAX_LINE_BYTES",
    "REASONS",
    "WireError",
    "format_line",
    "ok_reply",
    "parse_line",
]
