"""Rejected lines: the reason and code of each, the reply a device reads, and
the OK reply."""

from __future__ import annotations

import pickle

import pytest

from healthsync.wire import REASONS, WireError, ok_reply
from tests.wire_cases import CODES, IDS, rejection

ERROR_CASES: list[tuple[str, bytes]] = [
    ("invalid_utf8", IDS.encode() + b"hr=7\xff"),
    ("invalid_utf8", b"\xc3\x28"),
    ("empty", b""),
    ("empty", b"\r\n"),
    ("empty", b" \t \n"),
    ("empty", b" , ,, "),
    ("malformed", b"{not json"),
    ("malformed", b'{"hr": 70} trailing'),
    ("malformed", b"[1, 2]"),
    # Nested deeper than the standard decoder's recursion: RecursionError, not a reply.
    ("malformed", b'{"device_id": "d", "patient_id": "p", "x": ' + b"[" * 990 + b"]" * 990 + b"}"),
    ("malformed", b'"hr"=70'),
    ("malformed", IDS.encode() + b"hr"),
    ("malformed", IDS.encode() + b"hr = 70"),
    ("malformed", IDS.encode() + b"=70"),
    ("malformed", IDS.encode() + b'hr=70 name="Jane Doe'),
    ("malformed", IDS.encode() + b'hr=70 name="Jane"Doe'),
    ("malformed", IDS.encode() + b'hr=70 name=Jane"Doe'),
    ("malformed", IDS.encode() + b'hr=70 name="Jane\\"'),
    ("unknown_key", IDS.encode() + b"hr=70 weight=80"),
    ("unknown_key", b'{"device_id": "d", "patient_id": "p", "vitals": {"hr": 70}}'),
    ("duplicate_key", IDS.encode() + b"hr=1 pulse=2"),
    ("duplicate_key", IDS.encode() + b"hr=1 HR=1"),
    ("duplicate_key", IDS.encode() + b"bp=120/80 bp_sys=120"),
    ("duplicate_key", IDS.encode() + b"bp_dia=80 bp=120/80"),
    ("duplicate_key", IDS.encode() + b"device=mon-2 hr=70"),
    ("duplicate_key", b'{"device_id": "d", "patient_id": "p", "hr": 1, "Pulse": 1}'),
    # The same key twice: a JSON decoder keeps the last, so the reading would go out
    # with a value, or under a patient, the device did not send first.
    ("duplicate_key", b'{"device_id": "d", "patient_id": "p", "hr": 70, "hr": 200}'),
    ("duplicate_key", b'{"device_id": "d", "patient_id": "P-1", "patient_id": "P-2", "hr": 7}'),
    ("missing_field", b"patient_id=p hr=70"),
    ("missing_field", b"device_id=d hr=70"),
    ("missing_field", b"{}"),
    ("missing_field", b'{"device_id": null, "patient_id": "p", "hr": 1}'),
    ("bad_value", IDS.encode() + b"hr=abc"),
    ("bad_value", IDS.encode() + b"hr="),
    ("bad_value", IDS.encode() + b"hr=nan"),
    ("bad_value", IDS.encode() + b"hr=inf"),
    ("bad_value", IDS.encode() + b"hr=1e999"),
    ("bad_value", IDS.encode() + b"hr=1_000"),
    ("bad_value", IDS.encode() + b'hr=" 78"'),
    ("bad_value", IDS.encode() + "hr=٧٨".encode()),
    ("bad_value", IDS.encode() + b"hr=true"),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": true}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": [70]}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": 1, "name": 5}'),
    ("bad_value", b'{"device_id": true, "patient_id": "p", "hr": 1}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": 1, "seq": 1.5}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": 1, "name": "a\\u0007"}'),
    ("bad_value", b"device_id=mon/1 patient_id=p hr=70"),
    ("bad_value", b"device_id=" + b"d" * 65 + b" patient_id=p hr=70"),
    ("bad_value", IDS.encode() + b"hr=70 ts=yesterday"),
    ("bad_value", IDS.encode() + b"hr=70 seq=-1"),
    ("bad_value", IDS.encode() + b"hr=70 seq=+1"),
    ("bad_value", IDS.encode() + b"hr=70 seq=9223372036854775808"),
    ("bad_value", IDS.encode() + b"hr=70 on_o2=maybe"),
    ("bad_value", IDS.encode() + b"hr=70 consciousness=X"),
    ("bad_value", IDS.encode() + b"hr=70 consciousness=alert"),
    ("bad_value", IDS.encode() + b"hr=70 dob=1950-13-01"),
    ("bad_value", IDS.encode() + b"hr=70 dob=03/02/1950"),
    ("bad_value", IDS.encode() + b"hr=70 dob=2030-01-01"),
    ("bad_value", IDS.encode() + b"hr=70 gender=robot"),
    ("bad_value", IDS.encode() + b'hr=70 name=""'),
    ("bad_value", IDS.encode() + b"temp=36.9K"),
    ("bad_value", IDS.encode() + b"temp=36.9F%"),
    ("bad_value", IDS.encode() + b"spo2=95%%"),
    ("bad_value", IDS.encode() + b"bp=120"),
    ("bad_value", IDS.encode() + b"bp=120/abc"),
    ("bad_value", IDS.encode() + b"bp=120/80/60"),
    ("no_vitals", IDS.encode() + b"seq=1 on_o2=yes consciousness=A name=Jane"),
    ("too_long", b"x" * 4097),
    ("too_long", IDS.encode() + b"hr=70 address=" + b"a" * 4096),
    ("out_of_range", IDS.encode() + b"hr=351"),
    ("out_of_range", IDS.encode() + b"hr=-1"),
    ("out_of_range", IDS.encode() + b"spo2=100.5%"),
    ("out_of_range", IDS.encode() + b"temp=50"),
    ("out_of_range", IDS.encode() + b"temp=120F"),
    ("out_of_range", IDS.encode() + b"rr=81"),
    ("out_of_range", IDS.encode() + b"bp_sys=301"),
    ("out_of_range", IDS.encode() + b"bp=80/120"),
    ("out_of_range", IDS.encode() + b"bp_sys=100 bp_dia=100"),
    ("out_of_range", b'{"device_id": "d", "patient_id": "p", "hr": 1000}'),
    ("out_of_range", IDS.encode() + b"hr=70 ts=1700000301"),
    ("out_of_range", IDS.encode() + b"hr=70 ts=1700000000000"),
    ("out_of_range", IDS.encode() + b"hr=70 ts=1999-12-31T23:59:59Z"),
    ("out_of_range", IDS.encode() + b"hr=70 ts=2000-01-01T00:00:00+01:00"),
]


def test_reasons_are_exported_and_each_has_a_case() -> None:
    assert set(REASONS) == set(CODES)
    assert len(REASONS) == len(CODES)
    assert {reason for reason, _ in ERROR_CASES} == set(REASONS)


@pytest.mark.parametrize(("reason", "line"), ERROR_CASES)
def test_rejections(reason: str, line: bytes) -> None:
    error = rejection(line)
    assert (error.reason, error.code) == (reason, CODES[reason])
    assert error.reply().startswith(f"ERR {CODES[reason]} {reason}: ".encode())


def test_error_detail_names_the_key_but_not_the_line() -> None:
    error = rejection(IDS + 'name="Jane Secret" hr=abc')
    assert "heart_rate" in error.detail
    assert b"Secret" not in error.reply()
    unknown = rejection(IDS + "hr=70 " + "k" * 3000 + "=1")
    assert len(unknown.detail) < 100


def test_reply_is_one_printable_ascii_line() -> None:
    reply = WireError("unknown_key", "bad \u00e9 key\r\nwith\x00 junk " + "z" * 500).reply()
    assert reply.startswith(b"ERR 400 unknown_key: bad ? key??with? junk zzz")
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1
    assert all(32 <= byte < 127 for byte in reply[:-1])
    assert len(reply) < 260


def test_wire_error_reads_well_and_pickles() -> None:
    error = WireError("too_long", "line is 5000 bytes, limit 4096")
    assert str(error) == "too_long: line is 5000 bytes, limit 4096"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.reason, copy.detail) == (413, "too_long", error.detail)


def test_ok_reply() -> None:
    assert ok_reply("cf7c3b005ec5f87ad9fdb5f8") == b"OK cf7c3b005ec5f87ad9fdb5f8\n"
