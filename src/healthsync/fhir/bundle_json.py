"""A reading's Observations Bundle as JSON bytes, put together from parts encoded once.

The processor sends every reading to the observations topic as one collection
Bundle (:func:`healthsync.fhir.observations.reading_bundle`). Building its
Observations as dicts and then encoding them took about 12.5 us a reading,
although most of each Observation is the same for every reading: its profile,
code and reference range, and, for each value, its quantity and
interpretation. :class:`BundleEncoder` keeps those parts as JSON, encoded by
orjson from what :class:`~healthsync.fhir.observations.ObservationBuilder`
builds, and joins them with what each reading has of its own (ids, subject,
device, time): about 5.6 us.

The bytes are the same, byte for byte, as ``orjson.dumps(reading_bundle(reading,
builder.build(reading)))`` (the members in the same order): the builder stays the
one description of an Observation, and ``tests/fhir/test_bundle_json.py`` holds
the two together over every combination of vitals and bands.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import orjson

from healthsync.domain.readings import Reading, isoformat_ms
from healthsync.fhir.ids import SUFFIXES
from healthsync.fhir.observations import ObservationBuilder, split_panel
from healthsync.fhir.terminology import READING_ID_SYSTEM

__all__ = ["BundleEncoder"]

# Values recur (a heart rate is a whole number in a narrow range): one encoding each.
_VALUES_KEPT: Final = 1 << 16


def _members(doc: dict[str, Any]) -> bytes:
    """A JSON object's members without its braces, to splice into another object."""
    return orjson.dumps(doc)[1:-1]


class BundleEncoder:
    """Encodes readings' Bundles as `builder` would build them."""

    def __init__(self, builder: ObservationBuilder) -> None:
        self.builder = builder
        system = orjson.dumps(READING_ID_SYSTEM)
        self._observation = b'{"resource":{"resourceType":"Observation","id":"'
        self._meta = {suffix: b'","meta":' + orjson.dumps(m) for suffix, m in builder.meta.items()}
        self._identifier = b',"identifier":[{"system":' + system + b',"value":"'
        self._code = {
            name: b',"code":' + orjson.dumps(v.code) + b"," for name, v in builder.vitals.items()
        }
        self._bp_code = b',"code":' + orjson.dumps(builder.bp_code) + b","
        self._head = b'{"resourceType":"Bundle","id":"'
        self._bundle_identifier = b'","identifier":{"system":' + system + b',"value":"'
        self._timestamp = b'"},"type":"collection","timestamp":"'
        self._value = lru_cache(maxsize=_VALUES_KEPT)(self._value_members)
        self._panel = lru_cache(maxsize=_VALUES_KEPT)(self._panel_members)

    def encode(self, reading: Reading) -> bytes | None:
        """The reading's Bundle as JSON; None if it makes no Observation (no vitals)."""
        vitals = reading.vitals
        if not vitals:
            return None
        rid = orjson.dumps(reading.reading_id)[1:-1]  # escaped, without its quotes
        when = isoformat_ms(reading.ts).encode()
        common = b'"}],' + _members(self.builder.common(reading))
        singles, panel = split_panel(vitals)
        entries = [
            self._entry(
                rid,
                name,
                common,
                self._code[name],
                self._value(name, orjson.dumps(value), value),
            )
            for name, value in singles
        ]
        if panel:
            systolic, diastolic = vitals.get("bp_sys"), vitals.get("bp_dia")
            members = self._panel(_key(systolic), _key(diastolic), systolic, diastolic)
            entries.append(self._entry(rid, "bp", common, self._bp_code, members))
        return b"".join(
            (
                self._head,
                rid,
                self._bundle_identifier,
                rid,
                self._timestamp,
                when,
                b'","entry":[',
                b",".join(entries),
                b"]}",
            )
        )

    def _entry(self, rid: bytes, name: str, common: bytes, code: bytes, members: bytes) -> bytes:
        """One entry of the Bundle: the Observation of `name` (a vital, or ``bp``)."""
        suffix = SUFFIXES.get(name, name)
        return b"".join(
            (
                self._observation,
                rid,
                b"-" + suffix.encode(),
                self._meta[suffix],
                self._identifier,
                rid,
                b"/" + name.encode(),
                common,
                code,
                members,
                b"}}",
            )
        )

    # The encoded value is part of each key: 70 and 70.0 are equal as keys but not in JSON.

    def _value_members(self, name: str, _encoded: bytes, value: float) -> bytes:
        target: dict[str, Any] = {}
        self.builder.vitals[name].measured(target, value)
        return _members(target)

    def _panel_members(
        self,
        _systolic_key: bytes | None,
        _diastolic_key: bytes | None,
        systolic: float | None,
        diastolic: float | None,
    ) -> bytes:
        return _members(self.builder.panel_values(systolic, diastolic))


def _key(value: float | None) -> bytes | None:
    return None if value is None else orjson.dumps(value)
