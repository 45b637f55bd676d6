"""The Redis records: what a writer encodes, a reader decodes; sealed values name no patient."""

from __future__ import annotations

import sys
from pathlib import Path

import lz4.frame
import orjson
import pytest

from healthsync.domain.alerts import Alert
from healthsync.domain.bands import BandOverride, PatientRules
from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading
from healthsync.security.codec import Codec
from healthsync.security.crypto import Cipher, DecryptError, key_id_of
from healthsync.security.keyring import Keyring
from healthsync.store.records import Records, latest_value

# A patient's engine state as the engine builds it: the bench's, which measures it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from engine_state import engine_state

PATIENT = "MRN-4711"
READING = Reading("r1", "mon-7", PATIENT, 1_700_000_000.0, 1_700_000_001.0, {"spo2": 91.0})


@pytest.fixture(scope="module")
def records() -> Records:
    return Records(Codec(Cipher(Keyring.generate())))


def test_every_record_reads_back_what_was_written(records: Records) -> None:
    latest = records.encode_latest(PATIENT, {"spo2": latest_value(READING, 91.0)})
    assert records.decode_latest(PATIENT, "spo2", latest["spo2"])["reading_id"] == "r1"

    entry = records.decode_history(PATIENT, records.encode_history(PATIENT, READING))
    assert entry == {"id": "r1", "ts": READING.ts, "device": "mon-7", "v": {"spo2": 91.0}}

    tag, sealed = records.encode_patient_id(PATIENT)
    assert records.decode_patient_id(tag, sealed) == PATIENT

    score = news2({"spo2": 91.0, "heart_rate": 120}, READING.ts)
    tag, sealed = records.encode_score(PATIENT, score)
    decoded = records.decode_score(tag, sealed)
    assert (decoded["total"], decoded["band"]) == (score.total, score.band)

    tag, sealed = records.encode_state(PATIENT, b'{"partition":3}')
    assert records.decode_state(tag, sealed) == (PATIENT, {"partition": 3})
    with pytest.raises(ValueError, match="JSON object"):
        records.encode_state(PATIENT, b"[3]")

    rules = PatientRules(bands={"heart_rate": BandOverride(high=120)})
    tag, sealed = records.encode_rules(PATIENT, rules)
    assert records.decode_rules(PATIENT, sealed) == rules

    alert = Alert(
        "a1", PATIENT, "threshold:spo2", "spo2", "warning", "open", 1.0, 1.0, 91.0, "94..-", "r1"
    )
    assert Alert.from_dict(records.decode_alert("a1", records.encode_alert(alert))) == alert

    ack = records.encode_ack("a1", {"by": "nurse", "at": 5.0})
    assert records.decode_ack("a1", ack) == {"by": "nurse", "at": 5.0}

    # As redis-py hands a stream entry back: bytes names, bytes values.
    fields = records.encode_event("vitals", PATIENT, b'{"spo2": 91}')
    stored = {
        str(k).encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()
    }
    assert records.decode_event(stored) == ("vitals", PATIENT, {"spo2": 91})


def test_a_sealed_value_names_no_patient_and_opens_only_in_its_place(records: Records) -> None:
    tag, sealed = records.encode_state(PATIENT, b'{"partition":3}')
    assert PATIENT.encode() not in sealed and PATIENT not in tag
    other_tag, _ = records.encode_state("MRN-0001", b"{}")
    with pytest.raises(DecryptError):
        records.decode_state(other_tag, sealed)  # copied under another patient: refused


def test_a_readings_latest_fields_share_one_seal() -> None:
    cipher = Cipher(Keyring.generate())
    records = Records(Codec(cipher))
    monitor = Reading("r2", "mon-7", PATIENT, 1_700_000_005.0, 1_700_000_006.0, {})
    fields = {
        "heart_rate": latest_value(monitor, 88),
        "spo2": latest_value(monitor, 95.0),
        "resp_rate": latest_value(monitor, 18),
        "bp_sys": latest_value(READING, 121),  # from an older reading
    }
    before = sum(cipher.seals.values())
    encoded = records.encode_latest(PATIENT, fields)
    assert sum(cipher.seals.values()) - before == 2, "one seal per reading, not per field"
    assert encoded["heart_rate"] == encoded["spo2"] != encoded["bp_sys"]
    decoded = {name: records.decode_latest(PATIENT, name, raw) for name, raw in encoded.items()}
    assert decoded == fields


def test_a_shared_latest_value_opens_only_under_its_patient_and_its_fields(
    records: Records,
) -> None:
    encoded = records.encode_latest(PATIENT, {"spo2": latest_value(READING, 91.0)})
    with pytest.raises(DecryptError):
        records.decode_latest("MRN-0001", "spo2", encoded["spo2"])  # another patient's hash
    with pytest.raises(DecryptError):
        records.decode_latest(PATIENT, "heart_rate", encoded["spo2"])  # a field it lacks


def test_latest_values_written_field_by_field_still_open(records: Records) -> None:
    key = records.keys.latest(PATIENT)
    doc = latest_value(READING, 91.0)
    sealed = records.codec.seal(orjson.dumps(doc), records.codec.field(key, "spo2"))
    assert records.decode_latest(PATIENT, "spo2", sealed) == doc
    with pytest.raises(DecryptError):
        records.decode_latest(PATIENT, "heart_rate", sealed)  # bound to its own field
    plain = Records(Codec(None))
    assert plain.decode_latest(PATIENT, "spo2", orjson.dumps(doc)) == doc


def test_a_live_event_is_one_seal_that_names_no_patient() -> None:
    cipher = Cipher(Keyring.generate())
    records = Records(Codec(cipher))
    data = orjson.dumps({"heart_rate": {"value": 88}})
    before = sum(cipher.seals.values())
    fields = records.encode_event("vitals", PATIENT, data)
    assert sum(cipher.seals.values()) - before == 1, "one seal per event, not per field"
    assert set(fields) == {"type", "event"} and fields["type"] == "vitals"
    sealed = fields["event"]
    assert isinstance(sealed, bytes) and PATIENT.encode() not in sealed
    raw = {b"type": b"vitals", b"event": sealed}
    assert records.decode_event(raw) == ("vitals", PATIENT, {"heart_rate": {"value": 88}})
    moved = {b"type": b"vitals", b"data": raw[b"event"], b"patient_id": raw[b"event"]}
    with pytest.raises(DecryptError):
        records.decode_event(moved)  # bound to its field


def test_live_events_written_field_by_field_still_open(records: Records) -> None:
    stream, codec = records.keys.events, records.codec
    old = {
        b"type": b"vitals",
        b"patient_id": codec.seal(PATIENT.encode(), codec.field(stream, "patient_id")),
        b"data": codec.seal(b'{"spo2":{"value":91}}', codec.field(stream, "data")),
    }
    assert records.decode_event(old) == ("vitals", PATIENT, {"spo2": {"value": 91}})


class _RotateWhenDue:
    """Seal usage that makes a new active key after the next seal, as rotation does."""

    batch = 1

    def __init__(self, ring: Keyring) -> None:
        self.ring, self.due = ring, False

    def record(self, _key_id: str, _sealed: int) -> Keyring | None:
        if not self.due:
            return None
        self.due = False
        self.ring.rotate()
        return self.ring

    def reload(self) -> Keyring:
        return self.ring


def test_a_patient_id_is_sealed_once_per_active_key() -> None:
    ring = Keyring.generate()
    usage = _RotateWhenDue(ring)
    cipher = Cipher(ring, usage)
    records = Records(Codec(cipher))
    tag, first = records.encode_patient_id(PATIENT)
    before = sum(cipher.seals.values())
    assert records.encode_patient_id(PATIENT) == (tag, first)
    assert sum(cipher.seals.values()) == before, "the same id under the same key: kept"

    old_key = key_id_of(first)
    usage.due = True
    records.codec.seal(b"anything", "elsewhere")  # its report rotates the key
    _, after = records.encode_patient_id(PATIENT)
    assert key_id_of(after) == ring.active != old_key, "sealed again under the new key"
    assert records.decode_patient_id(tag, after) == PATIENT


def test_the_engine_state_written_with_every_reading_is_stored_compressed(
    records: Records,
) -> None:
    # In live operation every reading rewrites its patient's state: 5-6 kB of JSON,
    # mostly timestamps, which sealed bytes no longer let Redis or TLS shrink.
    state = engine_state(minutes=10, interval=1.0)
    plain = orjson.dumps({"patient_id": PATIENT, **orjson.loads(state)})
    assert len(plain) > 4000
    tag, sealed = records.encode_state(PATIENT, state)
    assert len(sealed) < len(plain) / 2
    assert records.decode_state(tag, sealed) == (PATIENT, orjson.loads(state))
    other_tag, _ = records.encode_state("MRN-0001", b"{}")
    with pytest.raises(DecryptError):
        records.decode_state(other_tag, sealed)  # still bound to its patient's field


def test_engine_state_sealed_whole_still_opens_and_a_bomb_is_refused(records: Records) -> None:
    state = engine_state(minutes=2, interval=1.0)
    tag, _ = records.encode_state(PATIENT, state)
    place = records.codec.field(records.keys.engine(records.keys.group_of_member(tag)), tag)
    whole = records.codec.seal(orjson.dumps({"patient_id": PATIENT, **orjson.loads(state)}), place)
    assert records.decode_state(tag, whole) == (PATIENT, orjson.loads(state))
    bomb = lz4.frame.compress(b"0" * (17 << 20), store_size=True)
    with pytest.raises(DecryptError, match="outside 1 to"):
        records.decode_state(tag, records.codec.seal(bomb, place))


def test_with_encryption_off_the_engine_state_stays_plain_json() -> None:
    records = Records(Codec(None))
    state = engine_state(minutes=2, interval=1.0)
    _tag, value = records.encode_state(PATIENT, state)
    assert orjson.loads(value)["patient_id"] == PATIENT
