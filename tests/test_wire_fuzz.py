"""Properties of parse_line: any bytes, protocol-shaped text or JSON object
either parses into a reading within bounds or is rejected with a known reason."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from healthsync.domain.readings import VITALS, Reading
from healthsync.wire import REASONS, WireError, parse_line
from tests.wire_cases import ALIASES, CODES, FUZZ, RECEIVED


def _assert_parses_or_rejects(line: bytes) -> None:
    try:
        reading = parse_line(line, RECEIVED)
    except WireError as error:
        assert error.reason in REASONS
        assert error.code == CODES[error.reason]
        reply = error.reply()
        assert reply.endswith(b"\n")
        assert reply.count(b"\n") == 1
        reply.decode("ascii")
        return
    assert reading.vitals
    for name, value in reading.vitals.items():
        assert VITALS[name].minimum <= value <= VITALS[name].maximum
    # Whatever is accepted must survive the trip onto the vitals topic.
    assert Reading.from_json(reading.to_json()) == reading


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_reject(line: bytes) -> None:
    _assert_parses_or_rejects(line)


# Mostly plausible values per key, with some wrong ones and some noise, so that
# generated lines get past the tokenizer and exercise the value checks too.
PLAUSIBLE: dict[str, list[str]] = {
    "device_id": ["mon-1", "d", "a/b"],
    "patient_id": ["P-1", "p"],
    "ts": ["2023-11-14T22:13:20Z", "2023-11-14T23:00+01:00", "1700000000", "1700000400", "1999"],
    "seq": ["0", "42", "-1", "1.5"],
    "heart_rate": ["78", "0", "350", "351", "-0", "7e1"],
    "spo2": ["95%", "100", "19", "95%%"],
    "temp": ["36.9", "98.6F", "36.9°c", "110F", "36.9K"],
    "resp_rate": ["12", "80.5"],
    "bp_sys": ["120", "29"],
    "bp_dia": ["80", "130"],
    "bp": ["120/80", "80/120", "120"],
    "on_oxygen": ["yes", "0", "maybe"],
    "consciousness": ["A", "v", "X"],
    "patient_name": ['"Jane Doe"', "Jane", '""', '"esc\\"aped"'],
    "birth_date": ["1950-02-03", "1950-2-3"],
    "gender": ["m", "female", "robot"],
    "mrn": ["123"],
    "address": ['"1 Main St, 2"', '"unterminated'],
    "phone": ["555"],
    "weight": ["80"],
}
CANONICAL_OF = {alias: canonical for alias, canonical, _ in ALIASES} | {
    "bp": "bp",
    "weight": "weight",
}
KEYS = sorted(CANONICAL_OF)
NOISE = st.text(alphabet='0123456789.-+eE%/°CFcf:TZ"\\ ,=anoyVPU\t{}', max_size=14)


@st.composite
def plausible_values(draw: st.DrawFn, key: str) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(NOISE)
    return draw(st.sampled_from(PLAUSIBLE[CANONICAL_OF[key]]))


@st.composite
def tokens(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 14)) == 0:
        return draw(st.sampled_from(["junk", "=", '"', "=1", 'a="b"c', "{", "hr==1"]))
    key = draw(st.sampled_from(KEYS))
    key = draw(st.sampled_from([key, key.upper()]))
    return f"{key}={draw(plausible_values(CANONICAL_OF[key.lower()]))}"


# Tokens run together (no separator) now and then, not often.
SEPARATORS = st.sampled_from([" ", ",", ", ", "\t", "  ", " , ", " ", ", ", " ", ""])


@st.composite
def protocol_lines(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(tokens(), SEPARATORS), max_size=7))
    body = "".join(token + sep for token, sep in parts)
    if draw(st.integers(0, 4)) > 0:
        body = "device_id=d patient_id=p " + body
    return (body + draw(st.sampled_from(["", "\n", "\r\n"]))).encode()


@FUZZ
@given(protocol_lines())
def test_protocol_shaped_text_parses_or_rejects(line: bytes) -> None:
    _assert_parses_or_rejects(line)


WILD_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        NOISE,
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)


@st.composite
def json_objects(draw: st.DrawFn) -> bytes:
    doc: dict[str, object] = {}
    if draw(st.integers(0, 4)) > 0:
        doc.update(device_id="d", patient_id="p")
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6)):
        kind = draw(st.integers(0, 9))
        value: object
        if kind < 5:
            value = draw(plausible_values(key)).strip('"')
        elif kind < 8:
            value = draw(st.integers(-5, 400) | st.floats(-5, 400) | st.booleans())
        else:
            value = draw(WILD_JSON)
        doc[draw(st.sampled_from([key, key.upper()]))] = value
    return orjson.dumps(doc)


@FUZZ
@given(json_objects())
def test_json_objects_parse_or_reject(line: bytes) -> None:
    _assert_parses_or_rejects(line)
