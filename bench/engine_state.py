"""The anomaly engine's state record: its size and what writing it costs per reading.

In live operation a patient is in a batch about once, so every reading rewrites
its patient's state in Redis (``{g}engine``): the last samples of each vital,
the trend windows, the baselines and the devices' clocks, as JSON, sealed.
The bench runs the engine over ``--minutes`` of readings from one monitor
sending every ``--interval`` seconds, then encodes the patient's state as the
live sink does (``Records.encode_state``) and prints the JSON's size, the
stored value's size and the encoding's time per call, best of ``--rounds``.

    .venv/bin/python bench/engine_state.py [--minutes 10] [--interval 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import orjson

from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.security.codec import Codec
from healthsync.security.crypto import Cipher
from healthsync.security.keyring import Keyring
from healthsync.store.records import Records
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.rulebook import RuleBook

PATIENT = "MRN-BENCH-1"
CALLS = 2_000


def engine_state(minutes: float, interval: float) -> bytes:
    """A stable patient's state (its JSON) after `minutes` of readings every `interval` seconds."""
    engine = AnomalyEngine(AnomalySettings(), RuleBook({}))
    start = time.time() - minutes * 60
    for i in range(int(minutes * 60 / interval)):
        ts = start + i * interval + 0.137 * (i % 7)  # device clocks are not whole seconds
        vitals = {"heart_rate": 70.0 + i % 5, "spo2": 96.0 + i % 3, "temp": 36.8 + i % 2 / 10}
        vitals |= {"resp_rate": 15.0 + i % 2, "bp_sys": 118.0 + i % 4, "bp_dia": 77.0}
        engine.process(Batch([Reading(f"r{i}", "mon-1", PATIENT, ts, ts + 0.05, vitals)]))
    return engine.states[PATIENT].to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    state = engine_state(args.minutes, args.interval)
    records = Records(Codec(Cipher(Keyring.generate())))
    plain = orjson.dumps({"patient_id": PATIENT, **orjson.loads(state)})
    _tag, stored = records.encode_state(PATIENT, state)
    best = min(_per_call(records, state) for _ in range(args.rounds))
    print(f"engine state after {args.minutes:g} min of readings every {args.interval:g} s:")
    print(f"  {len(plain):,} bytes of JSON, {len(stored):,} bytes stored (sealed)")
    print(f"  encode_state: {best:.1f} us per call (best of {args.rounds} rounds of {CALLS})")


def _per_call(records: Records, state: bytes) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        records.encode_state(PATIENT, state)
    return (time.perf_counter() - started) / CALLS * 1e6


if __name__ == "__main__":
    main()
