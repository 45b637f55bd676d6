"""The lifecycle every kind of alert shares: pending, open (escalating), resolved.

- pending: the condition holds, but not yet long enough. An alert opens once
  it has held for ``persist_s`` and ``persist_readings`` consecutive samples,
  consecutive in measurement order: the network delivers samples out of order,
  and a late one takes its place in the run it was measured in (it may begin
  the run earlier, break it, or complete a run that a later sample ended); a
  critical value opens a critical alert once two critical samples consecutive
  in measurement order span ``critical_confirm_s`` (shorter than the
  persistence, so the engine is never slower than a monitor's alarm delay on a
  critical value). A late sample measured less than one and a half of its
  device's intervals before a run's first sample is next to it on the device's
  schedule: nothing was measured between them, so it begins the run earlier.
  A late sample measured before a sample already known back inside begins a
  run that is over: only samples measured within it may still make it last;
  it is no part of a run pending after that sample.
- open: a worse severity escalates the same alert in place (after the same
  persistence or confirmation); the alert resolves only once the value has been
  back inside its band by a margin for ``resolve_hold_s`` (hysteresis), give or
  take the device's jitter as persistence counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from healthsync.domain.alerts import RANK, Alert, AlertEvent, Category, Severity, alert_id_for
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.screening import INTERVALS_APART, lasted
from healthsync.stream.state import EVIDENCE, PatientState, Sample, Tracker

# Two samples of a device less than this many of its intervals apart were measured one
# after the other: its schedule leaves no room for a third between them.
ADJACENT_INTERVALS = 1.5


@dataclass(frozen=True, slots=True)
class Finding:
    """What one rule says about one sample."""

    severity: Severity | None  # None: the condition does not hold
    cleared: bool  # back inside by the margin: counts towards resolving
    value: float
    rule: str  # what fired, in words, with its limits
    band: str = ""
    # Skips persistence, confirmation and the resolve hold (a nurse's observation, a cuff's).
    immediate: bool = False
    drivers: tuple[str, ...] = ()  # the parameters behind it, if not just the vital
    persist_s: float | None = None  # this rule's own persistence, if not the default
    # Whether persistence may fall short of persist_s by the device's timing jitter.
    slack: bool = True
    resolve_s: float | None = None  # this rule's own hold before resolving, if not the default
    # A late sample's: when a sample measured after it was back inside, if one is known.
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom and what an alert is about."""

    patient: str
    kind: str
    vital: str | None
    category: Category = "clinical"
    device_id: str | None = None


class Lifecycle:
    """The open alerts, and the rules by which findings open, escalate and resolve them."""

    def __init__(self, cfg: AnomalySettings, id_key: bytes | None = None) -> None:
        self.cfg = cfg
        self.id_key = id_key  # keys alert ids (see alert_id_for)
        self.open: dict[tuple[str, str], Alert] = {}
        # When the current decision is taken: an earlier sample confirmed now is decided now.
        self.decided_at = 0.0
        # The usual interval of the device whose sample is being judged, if known.
        self.interval: float | None = None

    def alert_id(self, patient: str, kind: str, basis: str) -> str:
        """The id of the alert `basis` (a reading id, a time) opens: the same on a replay."""
        return alert_id_for(patient, kind, basis, key=self.id_key)

    def idle(self, state: PatientState, patient: str, kind: str) -> bool:
        """Nothing pending or open for this kind: a sample that meets no rule changes nothing."""
        return kind not in state.trackers and (patient, kind) not in self.open

    def quiet(self, patient: str, kind: str, louder: list[str]) -> bool:
        """Whether a new `kind` alert would only repeat an open alert of a `louder` kind."""
        return (patient, kind) not in self.open and any((patient, k) in self.open for k in louder)

    def track(
        self, state: PatientState, subject: Subject, sample: Sample, finding: Finding
    ) -> list[AlertEvent]:
        alert = self.open.get((subject.patient, subject.kind))
        if alert is None:
            return self._pending(state, subject, sample, finding)
        return self._update(state, alert, sample, finding)

    def _gap(self) -> float:
        """A pending condition whose samples stop for longer than this starts over."""
        if self.interval is None:
            return self.cfg.pending_gap_s
        return max(self.cfg.pending_gap_s, INTERVALS_APART * self.interval)

    def _confirmed(self, since: float | None, count: int, last: float | None) -> bool:
        """Two or more consecutive critical samples, the first measured at `since` and the
        newest at `last`, spanning the confirmation time."""
        if self.cfg.critical_confirm_s <= 0:
            return since is not None
        if since is None or last is None or count < 2:
            return False
        return lasted(last - since, self.cfg.critical_confirm_s, self.interval)

    def _begins(self, tracker: Tracker, ts: float) -> bool:
        """Whether a late sample measured at `ts` begins the pending run `tracker` earlier:
        measured before it and after the newest sample known back inside before it or,
        with none known, next to its first sample on the device's schedule."""
        since = tracker.since
        if since is None or ts >= since:
            return False
        if tracker.inside_at < since:
            return tracker.inside_at < ts
        return self.interval is not None and since - ts < ADJACENT_INTERVALS * self.interval

    def _pending(
        self, state: PatientState, subject: Subject, sample: Sample, finding: Finding
    ) -> list[AlertEvent]:
        kind = subject.kind
        tracker = state.trackers.get(kind)
        if finding.severity is None:
            self._inside(state, kind, tracker, sample)
            return []
        if tracker is not None and tracker.completed_by(sample.ts):
            # Late, and measured within the run a sample back inside ended, before that
            # sample: in measurement order it is part of that run, as a monitor at the
            # bedside saw it, and may make it last.
            run = tracker.ended
            assert run is not None
            return self._join(state, subject, run, sample, finding)
        if tracker is None or tracker.since is None or sample.ts - tracker.last_ts > self._gap():
            run = Tracker(since=sample.ts).after(tracker, self._gap())
            if finding.ended_at is not None:
                # Late, and back inside since: its run is over, and only a sample
                # measured within it may still make it last.
                ended = Tracker(inside_at=finding.ended_at, ended=run, ended_at=finding.ended_at)
                state.trackers[kind] = ended
                return self._join(state, subject, run, sample, finding)
            tracker = state.trackers[kind] = run
        elif self._begins(tracker, sample.ts):
            tracker.since = sample.ts  # late, with nothing back inside before it: began earlier
        elif sample.ts < tracker.since:
            return []  # late, with a sample back inside (known, or possible) between it and the run
        return self._join(state, subject, tracker, sample, finding)

    def _inside(
        self, state: PatientState, kind: str, tracker: Tracker | None, sample: Sample
    ) -> None:
        """A sample back inside the band: it ends the pending run, unless it was measured
        before the run began (late: it ends nothing). The run ended is kept while a late
        sample measured before this one may still arrive and complete it."""
        if tracker is None:
            return
        if tracker.since is None:
            # At most a run ended before: forgotten once no late sample of it can come.
            if tracker.ended_at is None or sample.ts - tracker.ended_at > self._gap():
                state.trackers.pop(kind, None)
            else:
                tracker.inside_at = max(tracker.inside_at, sample.ts)
            return
        if sample.ts < tracker.since:
            tracker.inside_at = max(tracker.inside_at, sample.ts)
            return
        if sample.ts > tracker.last_ts:
            tracker.ended = tracker.ended_at = None  # only the run that ended last is kept
            state.trackers[kind] = Tracker(inside_at=sample.ts, ended=tracker, ended_at=sample.ts)
            return
        # Late, and measured within the run: it broke the run there.
        after = tracker.split(sample.ts)
        if after is None:
            state.trackers.pop(kind, None)
        else:
            state.trackers[kind] = after

    def spot_check(self) -> bool:
        """Whether the sample's device measures minutes apart (a BP cuff): each of its
        samples is a measurement in its own right, with no second one soon to wait for."""
        return self.interval is not None and self.interval >= self.cfg.spot_check_s

    def _join(
        self,
        state: PatientState,
        subject: Subject,
        tracker: Tracker,
        sample: Sample,
        finding: Finding,
    ) -> list[AlertEvent]:
        """`sample` joins the pending run `tracker`; the alert opens if the run now holds."""
        assert finding.severity is not None  # only a finding that holds joins a run
        kind = subject.kind
        tracker.count += 1
        tracker.last_ts = max(tracker.last_ts, sample.ts)
        tracker.note(sample.ts, sample.value)
        tracker.note_critical(sample.ts, finding.severity == "critical")
        critical = self._confirmed(
            tracker.critical_since, tracker.critical_count, tracker.critical_last
        )
        since = tracker.since if tracker.since is not None else sample.ts
        persist_s = self.cfg.persist_s if finding.persist_s is None else finding.persist_s
        persisted = (
            lasted(tracker.last_ts - since, persist_s, self.interval if finding.slack else None)
            and tracker.count >= self.cfg.persist_readings
        )
        if not (finding.immediate or critical or persisted):
            return []
        # Persisted, but a critical value not yet confirmed: open as a warning, and let
        # the confirmation already under way escalate it.
        confirmed = finding.immediate or critical or finding.severity != "critical"
        severity: Severity = finding.severity if confirmed else "warning"
        at = max(sample.ts, self.decided_at)
        alert = Alert(
            alert_id=self.alert_id(subject.patient, kind, sample.reading_id),
            patient_id=subject.patient,
            kind=kind,
            vital=subject.vital,
            severity=severity,
            status="open",
            opened_at=at,
            updated_at=at,
            value=finding.value,
            band=finding.band,
            reading_id=sample.reading_id,
            category=subject.category,
            rule=finding.rule,
            window_s=round(at - since, 3),
            evidence=list(tracker.evidence),
            device_id=subject.device_id,
            drivers=list(finding.drivers) or ([subject.vital] if subject.vital else []),
        )
        self.open[(subject.patient, kind)] = alert
        state.trackers[kind] = Tracker(last_ts=sample.ts)
        if not confirmed:  # the critical samples so far go on to escalate it
            state.trackers[kind].carry_critical(tracker)
        return [AlertEvent("opened", alert.snapshot())]

    def _update(
        self, state: PatientState, alert: Alert, sample: Sample, finding: Finding
    ) -> list[AlertEvent]:
        tracker = state.trackers.setdefault(alert.kind, Tracker(last_ts=sample.ts))
        alert.value = finding.value
        alert.updated_at = max(alert.updated_at, sample.ts)
        events = self._escalate(tracker, alert, sample, finding)
        tracker.last_ts = max(tracker.last_ts, sample.ts)
        if not finding.cleared:
            tracker.clear_since = None
            return events
        if tracker.clear_since is None:
            tracker.clear_since = sample.ts
        hold = self.cfg.resolve_hold_s if finding.resolve_s is None else finding.resolve_s
        # A measurement of its own (a cuff's) resolves alone, as it opened: the next is a
        # cycle away.
        if finding.immediate or lasted(sample.ts - tracker.clear_since, hold, self.interval):
            alert.status = "resolved"
            alert.resolved_at = sample.ts
            del self.open[(alert.patient_id, alert.kind)]
            state.trackers.pop(alert.kind, None)
            events.append(AlertEvent("resolved", alert.snapshot()))
        return events

    def _escalate(
        self, tracker: Tracker, alert: Alert, sample: Sample, finding: Finding
    ) -> list[AlertEvent]:
        """A worse severity than the open alert's (critical) escalates it once its samples,
        consecutive in measurement order, confirm it, as they would open it."""
        severity = finding.severity
        if severity is None or RANK[severity] <= RANK[alert.severity]:
            tracker.note_critical(sample.ts, False)
            return []
        newest = tracker.critical_last
        if newest is not None and sample.ts - newest > self._gap():
            tracker.note_critical(sample.ts, False)  # they stopped for too long: start over
        tracker.note_critical(sample.ts, True)
        confirmed = self._confirmed(
            tracker.critical_since, tracker.critical_count, tracker.critical_last
        )
        if not (finding.immediate or confirmed):
            return []
        alert.severity = severity
        alert.reading_id = sample.reading_id
        alert.rule = finding.rule
        alert.drivers = list(finding.drivers) or alert.drivers
        alert.evidence = [*alert.evidence, (sample.ts, sample.value)][-EVIDENCE:]
        tracker.note_critical(sample.ts, False)
        return [AlertEvent("escalated", alert.snapshot())]
