"""Per-patient rules: the configured ones, overlaid by what clinicians set through the API.

The API stores a patient's rules in Redis; every processor reads them for the
patients of each batch, caching them for a few seconds, so a change takes
effect within that time without a restart. NEWS2 (for the SpO2 scale) and the
anomaly engine (for the bands) read the same book.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection

from healthsync.domain.alerts import Threshold, thresholds_for
from healthsync.domain.bands import PatientRules
from healthsync.domain.batch import Batch

RulesLoader = Callable[[list[str]], dict[str, PatientRules]]

_DEFAULT = PatientRules()

# A patient with the configured rules who has not been in a batch for this long is
# forgotten, on a clock tick at most once a minute (their rules are read again when
# they next send): otherwise the book would keep every patient ever seen.
FORGET_AFTER_S = 600.0
SWEEP_INTERVAL_S = 60.0


class RuleBook:
    """A Step that refreshes the rules of the batch's patients (it adds nothing to the batch)."""

    def __init__(
        self,
        configured: dict[str, PatientRules] | None = None,
        load: RulesLoader | None = None,
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = configured or {}
        self.load = load
        self.max_age_s = max_age_s
        self.clock = clock
        self._rules: dict[str, PatientRules] = {}
        self._bands: dict[str, dict[str, Threshold]] = {}
        self._loaded_at: dict[str, float] = {}
        self._known: set[str] = set()
        self._swept_at = -math.inf

    @property
    def held(self) -> int:
        """How many patients the book holds."""
        return len(self._known)

    def on_assign(self, partitions: Collection[int]) -> None:
        self._loaded_at.clear()

    def process(self, batch: Batch) -> None:
        if batch.now is not None and self.clock() - self._swept_at >= SWEEP_INTERVAL_S:
            self._forget_quiet()
        self.refresh([r.patient_id for r in batch.readings])

    def _forget_quiet(self) -> None:
        """Forget the patients with the configured rules not refreshed for FORGET_AFTER_S.
        One whose rules were changed stays: the engine may judge them between batches."""
        now = self._swept_at = self.clock()
        quiet = [
            patient
            for patient in self._known
            if patient not in self._rules
            and now - self._loaded_at.get(patient, -math.inf) > FORGET_AFTER_S
        ]
        for patient in quiet:
            self._known.discard(patient)
            self._loaded_at.pop(patient, None)

    def refresh(self, patients: list[str]) -> None:
        if self.load is None:
            return
        now = self.clock()
        stale = sorted(
            {p for p in patients if now - self._loaded_at.get(p, -1e18) > self.max_age_s}
        )
        if not stale:
            return
        stored = self.load(stale)
        for patient in stale:
            self._set(patient, stored.get(patient))
            self._loaded_at[patient] = now

    def _set(self, patient: str, stored: PatientRules | None) -> None:
        rules = stored or self.configured.get(patient)
        self._known.add(patient)
        if rules is None or rules == _DEFAULT:
            self._rules.pop(patient, None)
            self._bands.pop(patient, None)
        elif self._rules.get(patient) != rules:
            self._rules[patient] = rules
            self._bands[patient] = thresholds_for(rules)

    def rules_for(self, patient: str) -> PatientRules:
        if patient not in self._known:
            self._set(patient, None)  # the configured rules until the store is read
        return self._rules.get(patient, _DEFAULT)

    def bands_for(self, patient: str) -> dict[str, Threshold]:
        self.rules_for(patient)
        return self._bands.get(patient, _DEFAULT_BANDS)

    def scale_for(self, patient: str) -> int:
        return self.rules_for(patient).spo2_scale


_DEFAULT_BANDS = thresholds_for(None)
