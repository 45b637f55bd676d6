"""The NEWS2 step: scores every patient of a batch from their latest fresh values."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from healthsync.domain.batch import Batch
from healthsync.domain.news2 import Observed, news2, observed_in

StateLoader = Callable[[list[str]], dict[str, Observed]]

# How often a clock tick looks for patients with nothing fresh left to forget.
SWEEP_INTERVAL_S = 60.0


class News2Scores:
    """A Step: the NEWS2 of every patient in the batch, from their latest fresh values.

    Devices send parameters separately (a monitor the vitals, a nurse the
    consciousness level), so each patient's latest value per parameter is kept
    and a parameter older than `freshness_s` no longer counts. The state is
    loaded from the live cache the first time a patient is seen, so a restart
    or a moved partition does not forget it. A patient none of whose values is
    fresh any more (gone quiet, or left) is forgotten by the next minute's clock
    tick: nothing of theirs would count, and should they send again what the
    live cache holds is loaded again.
    """

    def __init__(
        self,
        load: StateLoader,
        freshness_s: float,
        scale_for: Callable[[str], int] | None = None,
    ) -> None:
        self.load = load
        self.freshness_s = freshness_s
        # The patient's SpO2 scale (2 for hypercapnic respiratory failure), from its rules.
        self.scale_for = scale_for or (lambda _patient: 1)
        self.latest: dict[str, Observed] = {}
        self._swept_at = -math.inf

    @property
    def held(self) -> int:
        """How many patients' values the step holds."""
        return len(self.latest)

    def on_assign(self, partitions: Collection[int]) -> None:
        self.latest.clear()

    def process(self, batch: Batch) -> None:
        if batch.now is not None and batch.now - self._swept_at >= SWEEP_INTERVAL_S:
            self._forget_stale(batch.now)
        readings = batch.readings
        unknown = list({r.patient_id for r in readings if r.patient_id not in self.latest})
        if unknown:
            self.latest.update(self.load(unknown))
        touched: dict[str, float] = {}
        for reading in readings:
            state = self.latest.setdefault(reading.patient_id, {})
            for name, value in observed_in(reading).items():
                previous = state.get(name)
                if previous is None or previous[1] <= reading.ts:
                    state[name] = (value, reading.ts, reading.reading_id)
            touched[reading.patient_id] = max(touched.get(reading.patient_id, 0.0), reading.ts)
        for patient, measured in touched.items():
            state = self.latest[patient]
            # As of the newest value held: a batch holding only a late reading is scored
            # with the newer values, and dated with them.
            now = max((ts for _value, ts, _id in state.values()), default=measured)
            cutoff = now - self.freshness_s
            fresh = {k: v for k, (v, ts, _) in state.items() if ts >= cutoff}
            sources = {k: state[k][2] for k in fresh}
            scale = self.scale_for(patient)
            batch.scores[patient] = news2(fresh, ts=now, scale=scale, sources=sources)

    def _forget_stale(self, now: float) -> None:
        """Forget the patients whose newest value is older than the freshness window."""
        self._swept_at = now
        cutoff = now - self.freshness_s
        stale = [
            patient
            for patient, state in self.latest.items()
            if all(ts < cutoff for _value, ts, _id in state.values())
        ]
        for patient in stale:
            del self.latest[patient]
