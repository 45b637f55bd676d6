"""The NEWS2 step: scores every patient of a batch from their latest fresh values."""

from __future__ import annotations

from collections.abc import Callable, Collection

from healthsync.domain.batch import Batch
from healthsync.domain.news2 import Observed, news2, observed_in

StateLoader = Callable[[list[str]], dict[str, Observed]]


class News2Scores:
    """A Step: the NEWS2 of every patient in the batch, from their latest fresh values.

    Devices send parameters separately (a monitor the vitals, a nurse the
    consciousness level), so each patient's latest value per parameter is kept
    and a parameter older than `freshness_s` no longer counts. The state is
    loaded from the live cache the first time a patient is seen, so a restart
    or a moved partition does not forget it.
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

    def on_assign(self, partitions: Collection[int]) -> None:
        self.latest.clear()

    def process(self, batch: Batch) -> None:
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
        for patient, now in touched.items():
            cutoff = now - self.freshness_s
            state = self.latest[patient]
            fresh = {k: v for k, (v, ts, _) in state.items() if ts >= cutoff}
            sources = {k: state[k][2] for k in fresh}
            scale = self.scale_for(patient)
            batch.scores[patient] = news2(fresh, ts=now, scale=scale, sources=sources)
