"""The Redis records: what a writer encodes, a reader decodes; sealed values name no patient."""

from __future__ import annotations

import pytest

from healthsync.domain.alerts import Alert
from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading
from healthsync.domain.rules import BandOverride, PatientRules
from healthsync.security.codec import Codec
from healthsync.security.crypto import Cipher, DecryptError, Keyring
from healthsync.store.records import Records, latest_value

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

    tag, sealed = records.encode_state(PATIENT, {"partition": 3})
    assert records.decode_state(tag, sealed) == (PATIENT, {"partition": 3})

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
    tag, sealed = records.encode_state(PATIENT, {"partition": 3})
    assert PATIENT.encode() not in sealed and PATIENT not in tag
    other_tag, _ = records.encode_state("MRN-0001", {})
    with pytest.raises(DecryptError):
        records.decode_state(other_tag, sealed)  # copied under another patient: refused
