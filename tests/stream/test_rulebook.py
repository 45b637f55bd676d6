"""The rule book: per-patient rules read from the store, held for the patients who send."""

from __future__ import annotations

from healthsync.domain.bands import PatientRules
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.stream.rulebook import FORGET_AFTER_S, RuleBook

COPD = PatientRules(spo2_scale=2)


def of(patient: str, n: int) -> Reading:
    return Reading(f"r{n}", f"d-{patient}", patient, 1000.0, 1000.0, {"heart_rate": 70.0})


def test_quiet_patients_are_forgotten_and_changed_rules_kept() -> None:
    clock = [0.0]
    reads: list[list[str]] = []

    def load(patients: list[str]) -> dict[str, PatientRules]:
        reads.append(patients)
        return {p: COPD for p in patients if p == "P-COPD"}

    book = RuleBook(load=load, clock=lambda: clock[0])
    book.process(Batch([of(f"P-{n}", n) for n in range(100)] + [of("P-COPD", 100)]))
    assert book.held == 101 and book.scale_for("P-COPD") == 2

    clock[0] = FORGET_AFTER_S - 1
    book.process(Batch([of("P-1", 101)], now=clock[0]))
    assert book.held == 101, "forgotten before FORGET_AFTER_S"

    clock[0] = FORGET_AFTER_S + 60
    book.process(Batch([], now=clock[0]))
    assert book.held == 2, "every patient ever seen is still held"
    assert book.scale_for("P-COPD") == 2, "a patient's changed rules were forgotten"

    # A forgotten patient who sends again has their rules read again.
    book.process(Batch([of("P-7", 102)]))
    assert reads[-1] == ["P-7"] and book.held == 3
