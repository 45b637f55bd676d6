"""A line the protocol rejects, and the replies a device reads."""

from __future__ import annotations

from typing import Final

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
