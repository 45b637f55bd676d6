"""The anomaly engine: turns readings into few, meaningful alerts.

Per patient and kind of alert there is one condition (a :class:`Tracker`):

- pending: the condition holds, but not yet long enough. An alert opens once
  it has held for ``persist_s`` seconds and ``persist_readings`` consecutive
  samples; a critical threshold value opens at once.
- open: a worse severity escalates the same alert in place; the alert resolves
  only once the value has been back inside its band by a margin for
  ``resolve_hold_s`` (hysteresis), so a value hovering at a limit does not flap.

Kinds: ``threshold:<vital>`` (warning and critical bands, per patient),
``trend:<rule>`` (rate of change), ``baseline:<vital>`` (far from the
patient's own learnt normal), ``news2`` (aggregate medium or high), and the
technical ``device_offline:<device>``. A trend or baseline alert does not open
for a vital whose threshold alert is already open: it would say nothing new.

Before any rule sees a sample, a jump larger than the vital can physically
make within a few seconds is held as a probable artefact (a probe moved, a
cuff knocked). The next sample decides: if it stays near the jump, both count
(the condition started at the jump); if it returns, the jump is recorded as an
artefact and raises nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from healthsync.domain.alerts import (
    RANK,
    Alert,
    AlertEvent,
    Artefact,
    Category,
    Severity,
    Threshold,
    alert_id_for,
)
from healthsync.domain.batch import Batch
from healthsync.domain.news2 import News2, rescore
from healthsync.domain.readings import VITALS, Reading
from healthsync.domain.rules import AnomalySettings, TrendRule
from healthsync.stream.rulebook import RuleBook
from healthsync.stream.state import EVIDENCE, DeviceClock, PatientState, Sample, Tracker
from healthsync.stream.trends import Baseline, TrendWindow

StateLoader = Callable[[list[str] | None], dict[str, dict[str, Any]]]
OpenAlertsLoader = Callable[[], list[Alert]]


@dataclass(frozen=True, slots=True)
class Finding:
    """What one rule says about one sample."""

    severity: Severity | None  # None: the condition does not hold
    cleared: bool  # back inside by the margin: counts towards resolving
    value: float
    rule: str  # what fired, in words, with its limits
    band: str = ""
    immediate: bool = False  # critical threshold values skip persistence
    drivers: tuple[str, ...] = ()  # the parameters behind it, if not just the vital


class AnomalyEngine:
    """A Step: opens, escalates and resolves alerts for the batch's readings and scores.

    Run it after NEWS2 scoring (it reads ``batch.scores``). It adds
    ``batch.alert_events``, ``batch.artefacts`` and, for every patient whose
    state changed, ``batch.states`` (saved by the live sink with the batch). A
    batch with ``now`` set and no readings is a clock tick: devices that have
    gone quiet raise their offline alert then.
    """

    def __init__(
        self,
        settings: AnomalySettings | None = None,
        rules: RuleBook | None = None,
        load_states: StateLoader | None = None,
        load_open: OpenAlertsLoader | None = None,
    ) -> None:
        self.cfg = settings or AnomalySettings()
        self.rules = rules or RuleBook(self.cfg.patients)
        self.load_states = load_states
        self.load_open = load_open
        self.states: dict[str, PatientState] = {}
        self.open: dict[tuple[str, str], Alert] = {}
        self.owned: set[int] | None = None  # partitions this engine is responsible for
        self.stale = load_states is not None or load_open is not None
        self._decided_at = 0.0
        self._device_patient: dict[str, str] = {}  # which patient each device last sent for
        self._touched: set[str] = set()  # patients changed by another patient's reading
        self._trends_by_vital: dict[str, list[TrendRule]] = {}
        for trend in self.cfg.trends:
            self._trends_by_vital.setdefault(trend.vital, []).append(trend)
        self._baselines = {r.vital: r for r in self.cfg.baselines}

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
            state = self.states.setdefault(reading.patient_id, PatientState())
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
        touched |= self._touched
        self._touched = set()
        for patient in touched:
            batch.states[patient] = self.states[patient].to_dict()

    def _load(self, readings: list[Reading]) -> None:
        if self.stale:
            open_alerts = self.load_open() if self.load_open is not None else []
            states = self.load_states(None) if self.load_states is not None else {}
            self.open = {(a.patient_id, a.kind): a for a in open_alerts if a.status == "open"}
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

    def evaluate(
        self, reading: Reading, artefacts: list[Artefact] | None = None
    ) -> list[AlertEvent]:
        """Every alert change one reading causes (its state must be loaded)."""
        patient = reading.patient_id
        state = self.states.setdefault(patient, PatientState())
        self._decided_at = reading.ts  # an earlier sample confirmed now is decided now
        events = self._heard(state, reading)
        bands = self.rules.bands_for(patient)
        for vital, value in reading.vitals.items():
            new = Sample(reading.ts, value, reading.reading_id)
            for sample in self._screen(state, patient, vital, new, artefacts):
                events.extend(self._threshold(state, patient, vital, sample, bands.get(vital)))
                events.extend(self._trend(state, patient, vital, sample, bands.get(vital)))
                events.extend(self._baseline(state, patient, vital, sample))
        return events

    def _screen(
        self,
        state: PatientState,
        patient: str,
        vital: str,
        sample: Sample,
        artefacts: list[Artefact] | None,
    ) -> list[Sample]:
        """The samples the rules may see now: none, this one, or a confirmed earlier jump too."""
        jump = self.cfg.max_jump.get(vital)
        accepted: list[Sample] = []
        suspect = state.suspect.pop(vital, None)
        if suspect is not None:
            late = sample.ts - suspect.ts > self.cfg.artefact_window_s
            if late or jump is None or abs(sample.value - suspect.value) <= jump:
                state.last[vital] = suspect  # confirmed: it really moved
                accepted.append(suspect)
            elif artefacts is not None:
                artefacts.append(
                    Artefact(patient, vital, suspect.ts, suspect.value, suspect.reading_id)
                )
        last = state.last.get(vital)
        if (
            jump is not None
            and last is not None
            and 0 <= sample.ts - last.ts <= self.cfg.artefact_window_s
            and abs(sample.value - last.value) > jump
        ):
            state.suspect[vital] = sample
            return accepted
        if last is None or sample.ts >= last.ts:
            state.last[vital] = sample
        accepted.append(sample)
        return accepted

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
        severity = band.severity(sample.value)
        kind = f"threshold:{vital}"
        if severity is None and self._idle(state, patient, kind):
            return []  # the common case: nothing holds, nothing pending or open
        unit = VITALS[vital].ucum
        if severity is None:
            rule = f"{vital} within {band.describe()} {unit}"
        elif severity == "critical":
            rule = f"{vital} {_limit_text(band, severity)} {unit} (critical: at once)"
        else:
            rule = f"{vital} {_limit_text(band, severity)} {unit} for >= {self._persist_text()}"
        margin = self.cfg.margins.get(vital, 0.0)
        finding = Finding(
            severity,
            band.inside(sample.value, margin),
            sample.value,
            rule,
            band.describe(),
            immediate=severity == "critical",
        )
        return self._track(state, patient, kind, vital, sample, finding)

    def _idle(self, state: PatientState, patient: str, kind: str) -> bool:
        """Nothing pending or open for this kind: a sample that meets no rule changes nothing."""
        return kind not in state.trackers and (patient, kind) not in self.open

    def _quiet(self, patient: str, kind: str, louder: list[str]) -> bool:
        """Whether a new `kind` alert would only repeat an open alert of a `louder` kind."""
        return (patient, kind) not in self.open and any((patient, k) in self.open for k in louder)

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
            if window is None or window.window_s != trend.window_s:
                window = state.windows[trend.name] = TrendWindow(trend.window_s)
            window.add(sample.ts, sample.value)
            change, reference = window.change(trend.direction)
            kind = f"trend:{trend.name}"
            if change < trend.delta and self._idle(state, patient, kind):
                continue
            # A rise from below the band (or a fall from above it) is a recovery.
            from_normal = band is None or band.severity(reference) is None
            holds = (
                change >= trend.delta
                and from_normal
                and not self._quiet(patient, kind, [f"threshold:{vital}"])
            )
            verb = "fell" if trend.direction == "fall" else "rose"
            rule = (
                f"{vital} {verb} {change:g} {VITALS[vital].ucum} from {reference:g} "
                f"(limit {trend.delta:g} within {trend.window_s:g} s)"
            )
            cleared = change < trend.delta / 2
            finding = Finding("warning" if holds else None, cleared, sample.value, rule)
            events.extend(self._track(state, patient, kind, vital, sample, finding))
        return events

    def _baseline(
        self, state: PatientState, patient: str, vital: str, sample: Sample
    ) -> list[AlertEvent]:
        rule_cfg = self._baselines.get(vital)
        if rule_cfg is None:
            return []
        baseline = state.baselines.setdefault(vital, Baseline())
        kind = f"baseline:{vital}"
        limit = baseline.deviation_limit(rule_cfg.sigmas, rule_cfg.min_delta)
        deviation = abs(sample.value - baseline.mean)
        deviating = baseline.n >= self.cfg.baseline_min_samples and deviation >= limit
        if not deviating and self._idle(state, patient, kind):
            baseline.update(sample.ts, sample.value, self.cfg.baseline_tau_s)
            return []
        louder = [f"threshold:{vital}"] + [
            f"trend:{t.name}" for t in self._trends_by_vital.get(vital, ())
        ]
        holds = deviating and not self._quiet(patient, kind, louder)
        rule = (
            f"{vital} {sample.value:g} {VITALS[vital].ucum} is {deviation:.3g} from this "
            f"patient's baseline {baseline.mean:.3g} (limit {limit:.3g})"
        )
        finding = Finding("warning" if holds else None, deviation < limit / 2, sample.value, rule)
        events = self._track(state, patient, kind, vital, sample, finding)
        if not deviating and (patient, kind) not in self.open:
            # Learn only from values that look like this patient's normal.
            baseline.update(sample.ts, sample.value, self.cfg.baseline_tau_s)
        return events

    def _news2(self, patient: str, score: News2) -> list[AlertEvent]:
        state = self.states.setdefault(patient, PatientState())
        # Score what the engine kept: a sample held or set aside as an artefact does not count.
        score = rescore(score, {v: s.value for v, s in state.last.items() if v in score.parts})
        # RCP 2017: medium (5-6) and any single red score (3) call for an urgent response,
        # high (7+) for an emergency one.
        severity: Severity | None = (
            "critical" if score.band == "high" else None if score.band == "low" else "warning"
        )
        if score.band == "low-medium" and self._red_covered(state, patient, score):
            severity = None  # the vital's own threshold alert says it already
        if severity is None and self._idle(state, patient, "news2"):
            return []
        red = ", a single red score" if score.band == "low-medium" else ""
        rule = f"NEWS2 {score.total} ({score.band}{red}): " + ", ".join(
            f"{k} {v}" for k, v in sorted(score.parts.items()) if v
        )
        # A nurse's observation of new confusion is not a noisy sensor: it needs no persistence.
        confused = score.parts.get("consciousness", 0) > 0
        finding = Finding(
            severity,
            score.band == "low",
            float(score.total),
            rule,
            "0..4",
            immediate=confused,
            drivers=tuple(sorted(k for k, v in score.parts.items() if v)),
        )
        source = next(iter(score.sources.values()), "")
        sample = Sample(score.ts, float(score.total), source)
        self._decided_at = score.ts
        return self._track(state, patient, "news2", None, sample, finding)

    def _red_covered(self, state: PatientState, patient: str, score: News2) -> bool:
        """Whether every red (3-point) parameter is a vital beyond its own alert band."""
        bands = self.rules.bands_for(patient)
        for name, points in score.parts.items():
            if points < 3:
                continue
            band, kept = bands.get(name), state.last.get(name)
            if band is None or kept is None or band.severity(kept.value) is None:
                return False
        return True

    # -- the lifecycle shared by every kind --------------------------------------------------

    def _track(
        self,
        state: PatientState,
        patient: str,
        kind: str,
        vital: str | None,
        sample: Sample,
        finding: Finding,
        category: Category = "clinical",
        device_id: str | None = None,
    ) -> list[AlertEvent]:
        cfg = self.cfg
        key = (patient, kind)
        alert = self.open.get(key)
        tracker = state.trackers.get(kind)
        if alert is None:
            if finding.severity is None:
                state.trackers.pop(kind, None)
                return []
            if (
                tracker is None
                or tracker.since is None
                or sample.ts - tracker.last_ts > cfg.pending_gap_s
            ):
                tracker = state.trackers[kind] = Tracker(since=sample.ts)
            tracker.count += 1
            tracker.last_ts = max(tracker.last_ts, sample.ts)
            tracker.note(sample.ts, sample.value)
            if not (finding.immediate or self._persisted(tracker, sample.ts)):
                return []
            since = tracker.since if tracker.since is not None else sample.ts
            at = max(sample.ts, self._decided_at)
            alert = Alert(
                alert_id=alert_id_for(patient, kind, sample.reading_id),
                patient_id=patient,
                kind=kind,
                vital=vital,
                severity=finding.severity,
                status="open",
                opened_at=at,
                updated_at=at,
                value=finding.value,
                band=finding.band,
                reading_id=sample.reading_id,
                category=category,
                rule=finding.rule,
                window_s=round(at - since, 3),
                evidence=list(tracker.evidence),
                device_id=device_id,
                drivers=list(finding.drivers) or ([vital] if vital else []),
            )
            self.open[key] = alert
            state.trackers[kind] = Tracker(last_ts=sample.ts)
            return [AlertEvent("opened", alert.snapshot())]

        events: list[AlertEvent] = []
        tracker = tracker or state.trackers.setdefault(kind, Tracker(last_ts=sample.ts))
        alert.value = finding.value
        alert.updated_at = max(alert.updated_at, sample.ts)
        if RANK[finding.severity] > RANK[alert.severity]:
            if tracker.worse_since is None or sample.ts - tracker.last_ts > cfg.pending_gap_s:
                tracker.worse_since, tracker.worse_count = sample.ts, 0
            tracker.worse_count += 1
            persisted = sample.ts - tracker.worse_since >= cfg.persist_s and (
                tracker.worse_count >= cfg.persist_readings
            )
            if finding.immediate or persisted:
                assert finding.severity is not None
                alert.severity = finding.severity
                alert.reading_id = sample.reading_id
                alert.rule = finding.rule
                alert.drivers = list(finding.drivers) or alert.drivers
                alert.evidence = [*alert.evidence, (sample.ts, sample.value)][-EVIDENCE:]
                tracker.worse_since, tracker.worse_count = None, 0
                events.append(AlertEvent("escalated", alert.snapshot()))
        else:
            tracker.worse_since, tracker.worse_count = None, 0
        tracker.last_ts = max(tracker.last_ts, sample.ts)
        if finding.cleared:
            if tracker.clear_since is None:
                tracker.clear_since = sample.ts
            if sample.ts - tracker.clear_since >= cfg.resolve_hold_s:
                alert.status = "resolved"
                alert.resolved_at = sample.ts
                del self.open[key]
                state.trackers.pop(kind, None)
                events.append(AlertEvent("resolved", alert.snapshot()))
        else:
            tracker.clear_since = None
        return events

    def _persisted(self, tracker: Tracker, ts: float) -> bool:
        since = tracker.since if tracker.since is not None else ts
        return ts - since >= self.cfg.persist_s and tracker.count >= self.cfg.persist_readings

    def _persist_text(self) -> str:
        return f"{self.cfg.persist_s:g} s and {self.cfg.persist_readings} readings"

    # -- devices --------------------------------------------------------------------------------

    def _heard(self, state: PatientState, reading: Reading) -> list[AlertEvent]:
        """A reading from a device: it is online; an offline alert for it resolves. A
        device now sending for another patient was moved: the old patient forgets it."""
        clock = state.devices.get(reading.device_id)
        at = reading.received_at
        if clock is None:
            state.devices[reading.device_id] = DeviceClock(at)
        else:
            clock.heard(at)
        events: list[AlertEvent] = []
        previous = self._device_patient.get(reading.device_id)
        self._device_patient[reading.device_id] = reading.patient_id
        if previous is not None and previous != reading.patient_id:
            old = self.states.get(previous)
            if old is not None and old.devices.pop(reading.device_id, None) is not None:
                self._touched.add(previous)
            events += self._back_online(previous, reading.device_id, at)
        return events + self._back_online(reading.patient_id, reading.device_id, at)

    def _back_online(self, patient: str, device_id: str, at: float) -> list[AlertEvent]:
        alert = self.open.pop((patient, _offline_kind(device_id)), None)
        if alert is None:
            return []
        alert.status = "resolved"
        alert.resolved_at = alert.updated_at = at
        alert.value = 0.0
        return [AlertEvent("resolved", alert.snapshot())]

    def tick(self, now: float) -> list[AlertEvent]:
        """What time alone decides (`now` on the receive clock): a jump that no later
        sample contradicted within the artefact window stands; devices that stopped
        sending raise their offline alert."""
        events: list[AlertEvent] = []
        for patient, state in self.states.items():
            if not self._owns(state):
                continue
            events.extend(self._confirm_stale(patient, state, now))
            events.extend(self._offline(patient, state, now))
        return events

    def _confirm_stale(self, patient: str, state: PatientState, now: float) -> list[AlertEvent]:
        window = self.cfg.artefact_window_s
        stale = [v for v, s in state.suspect.items() if now - s.ts > window]
        if not stale:
            return []
        events: list[AlertEvent] = []
        self._decided_at = now
        bands = self.rules.bands_for(patient)
        for vital in stale:
            sample = state.last[vital] = state.suspect.pop(vital)
            events.extend(self._threshold(state, patient, vital, sample, bands.get(vital)))
            events.extend(self._trend(state, patient, vital, sample, bands.get(vital)))
            events.extend(self._baseline(state, patient, vital, sample))
        return events

    def _offline(self, patient: str, state: PatientState, now: float) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for device_id, clock in state.devices.items():
            if clock.interval is None:
                continue  # one reading says nothing about how often it sends
            kind = _offline_kind(device_id)
            limit = max(self.cfg.offline_factor * clock.interval, self.cfg.offline_min_s)
            silent = now - clock.last
            if silent <= limit or (patient, kind) in self.open:
                continue
            alert = Alert(
                alert_id=alert_id_for(patient, kind, f"{clock.last:.3f}"),
                patient_id=patient,
                kind=kind,
                vital=None,
                severity="warning",
                status="open",
                opened_at=now,
                updated_at=now,
                value=round(silent, 1),
                band=f"<= {limit:.0f} s",
                reading_id="",
                category="technical",
                rule=(
                    f"no data from device {device_id} for {silent:.0f} s "
                    f"(usual interval {clock.interval:.1f} s, limit {limit:.0f} s)"
                ),
                window_s=round(silent, 1),
                device_id=device_id,
            )
            self.open[(patient, kind)] = alert
            events.append(AlertEvent("opened", alert.snapshot()))
        return events


def _offline_kind(device_id: str) -> str:
    return f"device_offline:{device_id}"


def _limit_text(band: Threshold, severity: Severity | None) -> str:
    if severity == "critical":
        if band.critical_low is not None:
            return (
                f"< {band.critical_low:g}"
                if band.critical_high is None
                else (f"< {band.critical_low:g} or > {band.critical_high:g}")
            )
        return f"> {band.critical_high:g}"
    if band.low is not None and band.high is not None:
        return f"outside {band.low:g}..{band.high:g}"
    return f"< {band.low:g}" if band.low is not None else f"> {band.high:g}"


def replay(
    readings: Iterable[Reading],
    settings: AnomalySettings | None = None,
    tick_s: float = 1.0,
) -> list[AlertEvent]:
    """Run the engine (with NEWS2 scoring) over readings in arrival order, as the processor
    would, and return every alert event. The clock ticks every `tick_s` of the readings'
    receive times in between, so devices that go quiet raise their offline alerts."""
    return [event for _, event in replay_timed(readings, settings, tick_s)]


def replay_timed(
    readings: Iterable[Reading],
    settings: AnomalySettings | None = None,
    tick_s: float = 1.0,
) -> list[tuple[float, AlertEvent]]:
    """:func:`replay`, each event with the receive-clock time it was raised at: a reading
    that arrives late raises its alert when it arrives, not when it was measured."""
    from healthsync.domain.batch import Batch
    from healthsync.stream.news2 import News2Scores

    cfg = settings or AnomalySettings()
    book = RuleBook(cfg.patients)
    engine = AnomalyEngine(cfg, book)
    scores = News2Scores(lambda _patients: {}, freshness_s=900.0, scale_for=book.scale_for)
    events: list[tuple[float, AlertEvent]] = []
    next_tick: float | None = None
    last: float | None = None
    for reading in readings:
        if next_tick is None:
            next_tick = reading.received_at + tick_s
        while reading.received_at >= next_tick:
            events.extend((next_tick, e) for e in engine.tick(next_tick))
            next_tick += tick_s
        batch = Batch([reading])
        scores.process(batch)
        engine.process(batch)
        events.extend((reading.received_at, e) for e in batch.alert_events)
        last = reading.received_at
    if last is not None:
        events.extend((last + tick_s, e) for e in engine.tick(last + tick_s))
    return events
