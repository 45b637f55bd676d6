"""The anomaly engine: turns readings into few, meaningful alerts.

Per patient and kind of alert there is one condition, with the lifecycle of
:mod:`.lifecycle`: pending until it persists (a critical value until two
samples confirm it), open (escalating in place), resolved after hysteresis.

Kinds: ``threshold:<vital>`` (warning and critical bands, per patient),
``trend:<rule>`` (rate of change), ``baseline:<vital>`` (far from the
patient's own learnt normal), ``news2`` (medium or high, or any single red
score: :mod:`.news2_alerts`), and the technical ``device_offline:<device>``
(:mod:`.devices`). A trend or baseline alert does not open for a vital whose
threshold alert is already open: it would say nothing new.

Before any rule sees a sample, :mod:`.screening` holds a jump larger than the
vital can physically make until the samples after it decide whether it was an
artefact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from healthsync.domain.alerts import Alert, AlertEvent, Artefact, Threshold
from healthsync.domain.batch import Batch
from healthsync.domain.news2 import News2
from healthsync.domain.readings import VITALS, Reading
from healthsync.domain.rule_defaults import TrendRule
from healthsync.domain.rules import AnomalySettings
from healthsync.stream import devices, screening
from healthsync.stream.level_rule import LevelRule, level_kind
from healthsync.stream.lifecycle import Finding, Lifecycle, Subject
from healthsync.stream.news2_alerts import news2_events
from healthsync.stream.rulebook import RuleBook
from healthsync.stream.signal_quality import poor_signal
from healthsync.stream.state import PatientState, Sample
from healthsync.stream.threshold_rule import ThresholdRule, pending, scattered_persist
from healthsync.stream.trends import Baseline, TrendWindow, homeward, recovery

StateLoader = Callable[[list[str] | None], dict[str, dict[str, Any]]]
OpenAlertsLoader = Callable[[], list[Alert]]


# How often a tick looks for patients who left (quiet for anomaly.forget_after_s).
DEPARTURES_INTERVAL_S = 60.0


class AnomalyEngine:
    """A Step: opens, escalates and resolves alerts for the batch's readings and scores.

    Run it after NEWS2 scoring (it reads ``batch.scores``). It adds
    ``batch.alert_events``, ``batch.artefacts`` and, for every patient whose
    state changed, ``batch.states`` (saved by the live sink with the batch). A
    batch with ``now`` set and no readings is a clock tick: devices that have
    gone quiet raise their offline alert then, and (with ``forget_after_s`` set,
    once a minute) patients quiet that long are forgotten and listed in
    ``batch.departed``.
    """

    def __init__(
        self,
        settings: AnomalySettings | None = None,
        rules: RuleBook | None = None,
        load_states: StateLoader | None = None,
        load_open: OpenAlertsLoader | None = None,
        id_key: bytes | None = None,
    ) -> None:
        self.cfg = settings or AnomalySettings()
        self._departures_at = -math.inf  # when the tick last looked for patients who left
        self.rules = rules or RuleBook(self.cfg.patients)
        self.load_states = load_states
        self.load_open = load_open
        self.states: dict[str, PatientState] = {}
        self.life = Lifecycle(self.cfg, id_key)  # id_key keys alert ids (see alert_id_for)
        self.thresholds = ThresholdRule(self.cfg, self.life)
        self.open: dict[tuple[str, str], Alert] = self.life.open
        self.owned: set[int] | None = None  # partitions this engine is responsible for
        self.stale = load_states is not None or load_open is not None
        self._device_patient: dict[str, str] = {}  # which patient each device last sent for
        # The reading being judged, if its heart and respiratory rates corroborate its SpO2 fall.
        self._agreed: str | None = None
        self._touched: set[str] = set()  # patients changed by another patient's reading
        self._trends_by_vital: dict[str, list[TrendRule]] = {}
        for trend in self.cfg.trends:
            self._trends_by_vital.setdefault(trend.vital, []).append(trend)
        self._baselines = {r.vital: r for r in self.cfg.baselines}
        # Per baseline vital, the alerts that say it is past its band: while one is open the
        # baseline learns nothing, and its own alert would only repeat it.
        self._past_kinds = {
            r.vital: (f"threshold:{r.vital}", level_kind(r.vital)) for r in self.cfg.baselines
        }
        self.levels = LevelRule(self.cfg, self.life, self._trends_by_vital)

    # -- Step -----------------------------------------------------------------------------

    def on_assign(self, partitions: Collection[int]) -> None:
        """The processor now owns these partitions: reload state for their patients."""
        self.owned = set(partitions)
        self.stale = self.load_states is not None or self.load_open is not None

    def process(self, batch: Batch) -> None:
        readings = batch.readings
        self._load(readings)  # the only part that can fail: before any change
        events = batch.alert_events
        touched: set[str] = set()
        partitions = batch.partitions
        for reading in readings:
            state = self._state(reading.patient_id)
            if reading.patient_id in partitions:
                state.partition = partitions[reading.patient_id]
            events.extend(self.evaluate(reading, batch.artefacts))
            touched.add(reading.patient_id)
        if self.cfg.news2_alerts:
            for patient, score in batch.scores.items():
                events.extend(self._news2(patient, score))
                touched.add(patient)
        if batch.now is not None:
            ticked = self.tick(batch.now)
            events.extend(ticked)
            touched.update(e.alert.patient_id for e in ticked)
            forget_after_s = self.cfg.forget_after_s
            since = batch.now - self._departures_at
            if forget_after_s is not None and since >= DEPARTURES_INTERVAL_S:
                self._departures_at = batch.now
                batch.departed += devices.forget_departed(
                    self.states, self._device_patient, self._owns, batch.now, forget_after_s
                )
        touched |= self._touched
        self._touched = set()
        for patient in touched:
            if patient in self.states:
                batch.states[patient] = self.states[patient].to_json()

    def _load(self, readings: list[Reading]) -> None:
        if self.stale:
            open_alerts = self.load_open() if self.load_open is not None else []
            states = self.load_states(None) if self.load_states is not None else {}
            self.open.clear()
            self.open.update({(a.patient_id, a.kind): a for a in open_alerts if a.status == "open"})
            self.states = {
                patient: state
                for patient, doc in states.items()
                if self._owns(state := PatientState.from_dict(doc))
            }
            self.stale = False
            self._device_patient = {
                device: patient
                for patient, state in self.states.items()
                for device in state.devices
            }
            return
        unknown = sorted({r.patient_id for r in readings} - self.states.keys())
        if unknown and self.load_states is not None:
            for patient, doc in self.load_states(unknown).items():
                state = self.states[patient] = PatientState.from_dict(doc)
                for device in state.devices:
                    self._device_patient.setdefault(device, patient)

    def _owns(self, state: PatientState) -> bool:
        return self.owned is None or state.partition is None or state.partition in self.owned

    # -- readings -------------------------------------------------------------------------

    def _state(self, patient: str) -> PatientState:
        """The patient's state, made on their first reading (not with setdefault, which
        would build a new one for every reading only to throw it away)."""
        state = self.states.get(patient)
        if state is None:
            state = self.states[patient] = PatientState()
        return state

    def evaluate(
        self, reading: Reading, artefacts: list[Artefact] | None = None
    ) -> list[AlertEvent]:
        """Every alert change one reading causes (its state must be loaded)."""
        patient = reading.patient_id
        state = self._state(patient)
        self.life.decided_at = reading.ts  # an earlier sample confirmed now is decided now
        events = self._heard(state, reading)
        clock = state.devices.get(reading.device_id)
        interval = self.life.interval = clock.interval if clock is not None else None
        poor = poor_signal(reading.quality, reading.vitals)
        corroborated = screening.corroborated_fall(state, self.cfg, reading.ts, reading.vitals)
        agreed = screening.corroborated_desaturation(state, self.cfg, reading.ts, reading.vitals)
        self._agreed = reading.reading_id if agreed else None
        for vital, value in reading.vitals.items():
            new = Sample(reading.ts, value, reading.reading_id)
            accepted: list[Sample]
            if vital in poor:
                accepted, set_aside = [], [new]
            elif vital in corroborated:
                accepted, set_aside = screening.corroborated(state, vital, new), []
            else:
                accepted, set_aside = screening.screen(state, self.cfg, vital, new, interval)
            if artefacts is not None and set_aside:
                artefacts.extend(screening.artefacts_of(patient, vital, set_aside))
            for sample in accepted:
                state.keep(vital, sample.ts, sample.value)
                events.extend(self._rules(state, patient, vital, sample))
        return events

    def _rules(
        self, state: PatientState, patient: str, vital: str, sample: Sample
    ) -> list[AlertEvent]:
        band = self.rules.bands_for(patient).get(vital)
        return [
            *self._threshold(state, patient, vital, sample, band),
            *self._trend(state, patient, vital, sample, band),
            *self.levels.track(state, patient, vital, sample, band),
            *self._baseline(state, patient, vital, sample, band),
        ]

    def _threshold(
        self,
        state: PatientState,
        patient: str,
        vital: str,
        sample: Sample,
        band: Threshold | None,
    ) -> list[AlertEvent]:
        if band is None:
            return []
        kind = f"threshold:{vital}"
        if band.severity(sample.value) is None and self.life.idle(state, patient, kind):
            return []  # the common case: nothing holds, nothing pending or open
        agreed = vital == "spo2" and sample.reading_id == self._agreed
        finding = self.thresholds.finding(state, vital, sample, band, agreed)
        if (
            finding.severity == "warning"
            and (patient, level_kind(vital)) in self.open
            and (patient, kind) not in self.open
        ):
            # The level alert already says so; a critical value is news, and opens.
            finding = replace(finding, severity=None)
        return self.life.track(state, Subject(patient, kind, vital), sample, finding)

    def _trend(
        self,
        state: PatientState,
        patient: str,
        vital: str,
        sample: Sample,
        band: Threshold | None,
    ) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for trend in self._trends_by_vital.get(vital, ()):
            window = state.windows.get(trend.name)
            interval = self.life.interval
            if window is None or not window.suits(trend.window_s, interval):
                width = TrendWindow.width_for(trend.window_s, interval)
                window = state.windows[trend.name] = TrendWindow(trend.window_s, width=width)
            window.add(sample.ts, sample.value)
            kind = f"trend:{trend.name}"
            idle = self.life.idle(state, patient, kind)
            if idle and not window.may_reach(trend.direction, trend.delta):
                continue  # the common case, decided without computing the change
            change, reference = window.change(trend.direction)
            if change < trend.delta and idle:
                continue
            # The sample at hand must show the change too: the median of the latest
            # samples lags them, and on a slow device it still read a rise minutes after
            # the vital came back (a 60 s monitor's 82/min after a correlated hypoxaemia).
            newest = (
                sample.value - reference if trend.direction == "rise" else reference - sample.value
            )
            holds = (
                change >= trend.delta
                and newest >= trend.delta / 2
                and not recovery(
                    window, band, trend.direction, reference, self.cfg.margins.get(vital, 0.0)
                )
                and not homeward(
                    state.baselines.get(vital),
                    self.cfg.baseline_min_samples,
                    trend.direction,
                    reference,
                    change,
                )
                and not self.life.quiet(patient, kind, [f"threshold:{vital}"])
            )
            verb = "fell" if trend.direction == "fall" else "rose"
            rule = (
                f"{vital} {verb} {change:g} {VITALS[vital].ucum} from {reference:g} "
                f"(limit {trend.delta:g} within {trend.window_s:g} s)"
            )
            cleared = change < trend.delta / 2
            finding = Finding(
                "warning" if holds else None,
                cleared,
                sample.value,
                rule,
                persist_s=self.cfg.trend_persist_s,
            )
            events.extend(self.life.track(state, Subject(patient, kind, vital), sample, finding))
        return events

    def _baseline(
        self,
        state: PatientState,
        patient: str,
        vital: str,
        sample: Sample,
        band: Threshold | None,
    ) -> list[AlertEvent]:
        rule_cfg = self._baselines.get(vital)
        if rule_cfg is None:
            return []
        baseline = state.baselines.get(vital) or state.baselines.setdefault(vital, Baseline())
        kind = f"baseline:{vital}"
        threshold_kind, past_level_kind = self._past_kinds[vital]
        limit = baseline.deviation_limit(rule_cfg.sigmas, rule_cfg.min_delta)
        deviation = abs(sample.value - baseline.mean)
        deviating = baseline.n >= self.cfg.baseline_min_samples and deviation >= limit
        # A value past the patient's band is no part of their normal, however slowly it
        # came: learnt, a bradypnoea creeping down to 6/min took the baseline with it. Nor
        # is the way back while the vital's threshold or level alert is still open.
        normal = (
            not deviating
            and (band is None or band.severity(sample.value) is None)
            and (patient, threshold_kind) not in self.open
            and (patient, past_level_kind) not in self.open
        )
        if not deviating and self.life.idle(state, patient, kind):
            self._learn(baseline, sample, normal)
            return []
        louder = [threshold_kind, past_level_kind] + [
            f"trend:{t.name}" for t in self._trends_by_vital.get(vital, ())
        ]
        holds = deviating and not self.life.quiet(patient, kind, louder)
        rule = (
            f"{vital} {sample.value:g} {VITALS[vital].ucum} is {deviation:.3g} from this "
            f"patient's baseline {baseline.mean:.3g} (limit {limit:.3g})"
        )
        # Two spikes back to back wait as long as a monitor would, as for the threshold.
        persist_s = scattered_persist(self.cfg, vital, pending(state.trackers.get(kind), sample))
        finding = Finding(
            "warning" if holds else None,
            deviation < limit / 2,
            sample.value,
            rule,
            persist_s=persist_s,
        )
        events = self.life.track(state, Subject(patient, kind, vital), sample, finding)
        # Learn only from values that look like this patient's normal.
        self._learn(baseline, sample, normal and (patient, kind) not in self.open)
        return events

    def _learn(self, baseline: Baseline, sample: Sample, normal: bool) -> None:
        if normal:
            baseline.update(sample.ts, sample.value, self.cfg.baseline_tau_s)
        else:
            baseline.skip(sample.ts)

    def _news2(self, patient: str, score: News2) -> list[AlertEvent]:
        state = self._state(patient)
        return news2_events(self.life, state, patient, score, self.rules.bands_for(patient))

    # -- devices and the clock ----------------------------------------------------------------

    def _heard(self, state: PatientState, reading: Reading) -> list[AlertEvent]:
        """A reading from a device: it is online; an offline alert for it resolves. A
        device now sending for another patient was moved: the old patient forgets it."""
        device, at = reading.device_id, reading.received_at
        devices.heard(state, device, at, reading.ts)
        events: list[AlertEvent] = []
        previous = self._device_patient.get(device)
        self._device_patient[device] = reading.patient_id
        if previous is not None and previous != reading.patient_id:
            old = self.states.get(previous)
            if old is not None and old.devices.pop(device, None) is not None:
                self._touched.add(previous)
            events += devices.back_online(self.open, previous, device, at)
        return events + devices.back_online(self.open, reading.patient_id, device, at)

    def tick(self, now: float) -> list[AlertEvent]:
        """What time alone decides (`now` on the receive clock): devices that stopped
        sending raise their offline alert. A held jump waits for the vital's next
        sample however long that takes: silence confirms nothing."""
        events: list[AlertEvent] = []
        for patient, state in self.states.items():
            if not self._owns(state):
                continue
            events.extend(devices.gone_quiet(self.cfg, self.life, patient, state, now))
        return events
