"""One encode/decode pair per Redis record, shared by the writers and the readers.

The key layout is in :class:`healthsync.names.RedisKeys`; this module holds
what is stored under each key. Sealing is a layer of this codec: every value
that holds PHI is sealed by :class:`healthsync.security.codec.Codec`, bound to
its place (the key, and the field for a hash), so a value moved to another
place does not open. Decoding raises
:class:`healthsync.security.crypto.DecryptError` for a value that cannot be
opened; the caller decides whether that is an error (the API) or an absent
value (the processor's state, see :mod:`healthsync.store.state`).
"""

from __future__ import annotations

from typing import Any, TypedDict

import orjson
from redis.typing import EncodableT, FieldT

from healthsync.domain.alerts import Alert
from healthsync.domain.bands import PatientRules
from healthsync.domain.news2 import News2
from healthsync.domain.readings import Reading
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError

# The field name a shared latest value is bound to (see encode_latest): no vital's.
SHARED_FIELD = "*"
# Sealed patient ids kept (see encode_patient_id): about 10 MiB when full.
_SEALED_IDS_KEPT = 65_536


class LatestValue(TypedDict):
    """One field of ``latest:{patient}``: a vital's (or NEWS2 parameter's) latest value."""

    value: Any  # a number; on_oxygen's bool; consciousness' ACVPU letter
    ts: float
    reading_id: str
    device_id: str


class HistoryEntry(TypedDict):
    """One member of ``history:{patient}``: a reading's vitals, scored by its time."""

    id: str
    ts: float
    device: str
    v: dict[str, float]


class Acknowledgement(TypedDict):
    by: str
    at: float


def latest_value(reading: Reading, value: Any) -> LatestValue:
    return {
        "value": value,
        "ts": reading.ts,
        "reading_id": reading.reading_id,
        "device_id": reading.device_id,
    }


class Records:
    """The codec of every Redis record under one key prefix (``codec.keys``)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.keys = codec.keys
        # The last shared latest value opened (place, sealed, doc): a hash's fields from
        # one reading are read one after another, and each would open the same value.
        self._latest_opened: tuple[str, bytes, dict[str, Any]] = ("", b"", {})
        self._sealed_ids: dict[str, tuple[str, bytes]] = {}  # patient -> (key id, sealed id)

    def _seal(self, doc: Any, place: str) -> bytes:
        return self.codec.seal(orjson.dumps(doc), place)

    def _open(self, raw: bytes, place: str) -> Any:
        return orjson.loads(self.codec.open(raw, place))

    def _field(self, key: str, field: str) -> str:
        return self.codec.field(key, field)

    # -- {g}latest:{patient}: hash, vital -> LatestValue ----------------------------------

    # The fields one reading gave share one sealed value (the reading's fields), bound to
    # the key and this field name, which no vital has: a reading carries up to ten
    # fields, and a seal per field was most of the live sink's sealing. Values written
    # field by field, each bound to its own field, still open (written before).

    def encode_latest(self, patient: str, values: dict[str, LatestValue]) -> dict[str, bytes]:
        place = self._field(self.keys.latest(patient), SHARED_FIELD)
        by_reading: dict[tuple[str, float, str], dict[str, Any]] = {}
        for name, v in values.items():
            by_reading.setdefault((v["reading_id"], v["ts"], v["device_id"]), {})[name] = v["value"]
        fields: dict[str, bytes] = {}
        for (reading_id, ts, device_id), given in by_reading.items():
            doc = {"reading_id": reading_id, "ts": ts, "device_id": device_id, "values": given}
            sealed = self._seal(doc, place)
            fields.update(dict.fromkeys(given, sealed))
        return fields

    def decode_latest(self, patient: str, vital: str, raw: bytes) -> LatestValue:
        key = self.keys.latest(patient)
        place = self._field(key, SHARED_FIELD)
        opened = self._latest_opened
        if opened[0] == place and opened[1] == raw:
            doc = opened[2]  # the hash's next field from the same reading
        else:
            try:
                doc = self._open(raw, place)
            except DecryptError:
                value: LatestValue = self._open(raw, self._field(key, vital))  # written before
                return value
            if "values" not in doc:
                return doc  # type: ignore[no-any-return]  # unsealed, written field by field
            self._latest_opened = (place, raw, doc)
        values = doc["values"]
        if vital not in values:
            raise DecryptError(f"the value under {vital!r} is another field's")
        return {
            "value": values[vital],
            "ts": doc["ts"],
            "reading_id": doc["reading_id"],
            "device_id": doc["device_id"],
        }

    # -- {g}history:{patient}: sorted set of HistoryEntry by measurement time -------------

    def encode_history(self, patient: str, reading: Reading) -> bytes:
        entry: HistoryEntry = {
            "id": reading.reading_id,
            "ts": reading.ts,
            "device": reading.device_id,
            "v": reading.vitals,
        }
        return self._seal(entry, self.keys.history(patient))

    def decode_history(self, patient: str, raw: bytes) -> HistoryEntry:
        entry: HistoryEntry = self._open(raw, self.keys.history(patient))
        return entry

    # -- {g}patient_ids: hash, {patient} -> the patient id ----------------------------------

    def encode_patient_id(self, patient: str) -> tuple[str, bytes]:
        """The field (the patient's pseudonym) and the sealed id."""
        tag = self.keys.patient(patient)
        # Sealing is deterministic: under the same active key the same id seals to the
        # same value, which the processor writes with every batch. Keep it.
        cipher = self.codec.cipher
        active = cipher.keyring.active if cipher is not None else ""
        kept = self._sealed_ids.get(patient)
        if kept is not None and kept[0] == active:
            return tag, kept[1]
        sealed = self.codec.seal(patient.encode(), self._field(self._patient_ids(tag), tag))
        if len(self._sealed_ids) >= _SEALED_IDS_KEPT:
            self._sealed_ids.clear()
        self._sealed_ids[patient] = (active, sealed)
        return tag, sealed

    def decode_patient_id(self, tag: str, raw: bytes) -> str:
        return self.codec.open(raw, self._field(self._patient_ids(tag), tag)).decode()

    def _patient_ids(self, tag: str) -> str:
        return self.keys.patient_ids(self.keys.group_of_member(tag))

    def _news2(self, tag: str) -> str:
        return self.keys.news2(self.keys.group_of_member(tag))

    def _engine(self, tag: str) -> str:
        return self.keys.engine(self.keys.group_of_member(tag))

    # -- {g}news2: hash, {patient} -> the latest NEWS2 -------------------------------------

    def encode_score(self, patient: str, score: News2) -> tuple[str, bytes]:
        tag = self.keys.patient(patient)
        return tag, self._seal(score.to_dict(), self._field(self._news2(tag), tag))

    def decode_score(self, tag: str, raw: bytes) -> dict[str, Any]:
        score: dict[str, Any] = self._open(raw, self._field(self._news2(tag), tag))
        return score

    # -- {g}engine: hash, {patient} -> the anomaly engine's state of the patient -------------

    def encode_state(self, patient: str, state: bytes) -> tuple[str, bytes]:
        """`state` is the engine's JSON object for the patient (``PatientState.to_json``)."""
        tag = self.keys.patient(patient)
        # The field is only a pseudonym: the id travels inside the sealed value, as the
        # object's first member (spliced in: the state is JSON already).
        if state[:1] != b"{" or state[-1:] != b"}":
            raise ValueError("an engine state is a JSON object")
        members = state[1:-1].strip()
        doc = (
            b'{"patient_id":' + orjson.dumps(patient) + (b"," + members if members else b"") + b"}"
        )
        # Rewritten with every reading in live operation, and mostly timestamps: compressed.
        place = self._field(self._engine(tag), tag)
        return tag, self.codec.seal_compressing(doc, place)

    def decode_state(self, tag: str, raw: bytes) -> tuple[str, dict[str, Any]]:
        opened = self.codec.open_expanding(raw, self._field(self._engine(tag), tag))
        doc: dict[str, Any] = orjson.loads(opened)
        return doc.pop("patient_id"), doc

    # -- rules: hash, {patient} -> the rules set through the API -------------------------

    def encode_rules(self, patient: str, rules: PatientRules) -> tuple[str, bytes]:
        tag = self.keys.patient(patient)
        place = self._field(self.keys.rules, tag)
        return tag, self.codec.seal(rules.model_dump_json().encode(), place)

    def decode_rules(self, patient: str, raw: bytes) -> PatientRules:
        place = self._field(self.keys.rules, self.keys.patient(patient))
        return PatientRules.model_validate_json(self.codec.open(raw, place))

    # -- alert:{alert_id}: the alert as it is now ---------------------------------------

    def encode_alert(self, alert: Alert, doc: bytes | None = None) -> bytes:
        """The sealed alert; `doc`, its JSON if the caller has it already."""
        plain = doc if doc is not None else orjson.dumps(alert.to_dict())
        return self.codec.seal(plain, self.keys.alert(alert.alert_id))

    def decode_alert(self, alert_id: str, raw: bytes) -> dict[str, Any]:
        alert: dict[str, Any] = self._open(raw, self.keys.alert(alert_id))
        return alert

    # -- alerts:acknowledged: hash, alert id -> who saw it, when -------------------------

    def encode_ack(self, alert_id: str, ack: Acknowledgement) -> bytes:
        return self._seal(ack, self._field(self.keys.acknowledged, alert_id))

    def decode_ack(self, alert_id: str, raw: bytes) -> Acknowledgement:
        ack: Acknowledgement = self._open(raw, self._field(self.keys.acknowledged, alert_id))
        return ack

    # -- fhir:{type}:{id} and fhir:reading:{reading_id}: the recent FHIR window -----------

    def encode_resource(self, resource: dict[str, Any]) -> tuple[str, bytes]:
        """The key of a FHIR resource and its sealed JSON."""
        key = self.keys.fhir(resource["resourceType"], resource["id"])
        return key, self.codec.seal(orjson.dumps(resource), key)

    def decode_resource(self, key: str, raw: bytes) -> dict[str, Any]:
        resource: dict[str, Any] = self._open(raw, key)
        return resource

    def encode_fhir_reading(self, reading: Reading) -> tuple[str, bytes]:
        """The reading its vital-sign Observations are rebuilt from, without demographics."""
        key = self.keys.fhir_reading(reading.reading_id)
        return key, self.codec.seal(reading.to_json(demographics=False), key)

    def decode_fhir_reading(self, key: str, raw: bytes) -> Reading:
        return Reading.from_json(self.codec.open(raw, key))

    # -- events: the live event stream ---------------------------------------------------

    def encode_event(self, kind: str, patient: str, data: bytes) -> dict[FieldT, EncodableT]:
        """A live event: its type, and its patient id and data (JSON) sealed together.

        One seal per event, not one per field: the processor writes an event per
        patient and batch.
        """
        doc = {"patient_id": patient, "data": orjson.Fragment(data)}
        return {"type": kind, "event": self._seal(doc, self._field(self.keys.events, "event"))}

    def decode_event(self, fields: dict[bytes, bytes]) -> tuple[str, str, Any]:
        """(type, patient id, data) of one live event."""
        stream = self.keys.events
        if b"event" in fields:
            doc = self._open(fields[b"event"], self._field(stream, "event"))
            return fields[b"type"].decode(), str(doc["patient_id"]), doc["data"]
        # Written before, its patient id and data each sealed in its own field.
        patient = self.codec.open(fields[b"patient_id"], self._field(stream, "patient_id"))
        data = self._open(fields[b"data"], self._field(stream, "data"))
        return fields[b"type"].decode(), patient.decode(), data
