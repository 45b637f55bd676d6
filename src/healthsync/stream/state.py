"""What the anomaly engine remembers about one patient between readings.

Persistence and confirmation timers, hysteresis timers, the last accepted
sample per vital, samples held as probable artefacts, trend windows, baselines and the devices'
clocks. It is saved to Redis with every batch that changes it (in the same
transaction as the readings it reflects), so a restarted or rebalanced
processor picks up exactly where the last one stopped.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

from healthsync.domain.alerts import Threshold
from healthsync.stream.clock import DeviceClock
from healthsync.stream.trends import Baseline, TrendWindow, median

# Samples kept as an alert's evidence.
EVIDENCE = 10
# NEWS2 scores a vital's median over this many seconds of kept samples: a chart value
# is a nurse's considered reading, not one noisy sample of a monitor.
RECENT_S = 15.0
_RECENT_MAX = 32
_VALUE = itemgetter(1)


@dataclass(slots=True)
class Tracker:
    """One (patient, kind) condition: pending until it persists, then clearing until resolved."""

    since: float | None = None  # when the condition started to hold (pending)
    count: int = 0  # consecutive samples meeting it
    last_ts: float = 0.0
    clear_since: float | None = None  # back inside by the margin since (resolving)
    evidence: list[tuple[float, float]] = field(default_factory=list)
    # Consecutive critical samples (confirming a critical alert, or the escalation of an
    # open one), in measurement order: the first and the newest measured, how many, and
    # the newest time a sample measured before them was not critical (a late critical
    # sample measured after it began them earlier).
    critical_since: float | None = None
    critical_last: float | None = None
    critical_count: int = 0
    calm_at: float = -math.inf
    # Pending, in measurement order: the newest time a sample measured before the run was
    # back inside (a late sample measured after it and before `since` began the run
    # earlier), and the run a sample back inside ended at `ended_at`, which a late
    # sample measured between the two may still complete.
    inside_at: float = math.inf
    ended: Tracker | None = None
    ended_at: float | None = None

    def completed_by(self, ts: float) -> bool:
        """Whether a sample measured at `ts` falls within the ended run, before the sample
        that ended it."""
        run, until = self.ended, self.ended_at
        return (
            run is not None
            and run.since is not None
            and until is not None
            and (run.since <= ts < until)
        )

    def split(self, at: float) -> Tracker | None:
        """This pending run, broken by a sample back inside measured at `at` that arrived
        late: the run after it, which keeps the run before it as ended (from the
        evidence); None when the evidence no longer holds every sample of the run."""
        if self.since is None or len(self.evidence) < self.count:
            return None
        before = sorted(e for e in self.evidence if e[0] < at)
        after = sorted(e for e in self.evidence if e[0] > at)
        if not before or not after:
            return None
        ended = Tracker(since=before[0][0], count=len(before), last_ts=before[-1][0])
        ended.evidence = before
        run = Tracker(since=after[0][0], count=len(after), last_ts=after[-1][0])
        run.evidence, run.inside_at = after, at
        run.ended, run.ended_at = ended, at
        return run

    def after(self, previous: Tracker | None, gap: float) -> Tracker:
        """This new run, with what `previous` (a run ended before) knows of what preceded
        it; without that, nothing measured before the run can join it."""
        self.inside_at = self.since if self.since is not None else math.inf
        if previous is None or previous.since is not None or previous.ended_at is None:
            return self
        self.inside_at = previous.inside_at
        if self.since is not None and self.since - previous.ended_at <= gap:
            self.ended, self.ended_at = previous.ended, previous.ended_at
        return self

    def note(self, ts: float, value: float) -> None:
        self.evidence = [*self.evidence, (ts, value)][-EVIDENCE:]

    def note_critical(self, ts: float, critical: bool) -> None:
        """A sample of this run, critical or not, placed where it was measured: a late one
        measured before the critical samples (and within the run) begins them earlier if
        critical, and breaks nothing if not."""
        since, last = self.critical_since, self.critical_last
        early = since is not None and ts < since
        if not critical:
            if early:
                self.calm_at = max(self.calm_at, ts)
            else:
                self.critical_since = self.critical_last = None
                self.critical_count, self.calm_at = 0, ts
            return
        if since is None or last is None:
            self.critical_since = self.critical_last = ts
        elif early:
            if ts <= self.calm_at or (self.since is not None and ts < self.since):
                return  # not next to them in measurement order: a critical run of its own
            self.critical_since = ts
        else:
            self.critical_last = max(last, ts)
        self.critical_count += 1

    def carry_critical(self, run: Tracker) -> None:
        """Take over the critical samples of `run`, the pending run that opened the alert."""
        self.critical_since, self.critical_last = run.critical_since, run.critical_last
        self.critical_count, self.calm_at = run.critical_count, run.calm_at

    def to_list(self) -> list[Any]:
        """What the state's JSON holds of it (encoded at once: nothing here is copied)."""
        return [
            self.since,
            self.count,
            self.last_ts,
            None,  # where escalations kept their own confirming samples before
            0,
            self.clear_since,
            self.evidence,
            self.critical_since,
            self.critical_count,
            None if math.isinf(self.inside_at) else self.inside_at,
            None if self.ended is None else self.ended.to_list(),
            self.ended_at,
            self.critical_last,
            None if math.isinf(self.calm_at) else self.calm_at,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> Tracker:
        since, count, last_ts, worse_since, worse_count, clear_since, evidence = data[:7]
        # State saved before critical values needed confirmation has no such fields.
        critical_since, critical_count = data[7:9] if len(data) >= 9 else (None, 0)
        # Nor before pending runs were judged in measurement order.
        inside_at, ended, ended_at = data[9:12] if len(data) >= 12 else (None, None, None)
        # Nor before critical samples were: their newest was the last one to arrive.
        critical_last, calm_at = data[12:14] if len(data) >= 14 else (critical_since, None)
        if worse_since is not None and critical_since is None:
            # An open alert's escalation, kept apart then: its samples ran until the newest.
            critical_since, critical_count = worse_since, worse_count
            critical_last = max(float(worse_since), float(last_ts))
        return cls(
            since=since,
            count=int(count),
            last_ts=float(last_ts),
            clear_since=clear_since,
            evidence=[(float(t), float(v)) for t, v in evidence],
            critical_since=critical_since,
            critical_last=critical_last,
            critical_count=int(critical_count),
            calm_at=-math.inf if calm_at is None else float(calm_at),
            inside_at=math.inf if inside_at is None else float(inside_at),
            ended=None if ended is None else cls.from_list(ended),
            ended_at=ended_at,
        )


@dataclass(slots=True)
class Sample:
    ts: float
    value: float
    reading_id: str


@dataclass(slots=True)
class SetAside:
    """A held run set aside when its vital came back (at `until`), and the `hold` it had
    to last, with or without the jitter `slack` (None: saved before it was kept): a sample
    measured before the return that arrives after it may show it did."""

    run: list[Sample]
    hold: float
    until: float
    slack: bool | None = None


@dataclass(slots=True)
class PatientState:
    partition: int | None = None
    trackers: dict[str, Tracker] = field(default_factory=dict)
    last: dict[str, Sample] = field(default_factory=dict)
    # Per vital, the samples since a jump, held as a probable artefact until later samples decide.
    held: dict[str, list[Sample]] = field(default_factory=dict)
    # Per vital, the last held run set aside, while a late sample may still complete it.
    aside: dict[str, SetAside] = field(default_factory=dict)
    # While a corroborated desaturation goes on, the levels from before it (see
    # screening.corroborated_desaturation); empty otherwise.
    fall_from: dict[str, float] = field(default_factory=dict)
    # Per vital, the kept (time, value) samples of the last RECENT_S: what NEWS2 scores.
    recent: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    windows: dict[str, TrendWindow] = field(default_factory=dict)
    baselines: dict[str, Baseline] = field(default_factory=dict)
    devices: dict[str, DeviceClock] = field(default_factory=dict)

    def keep(self, vital: str, ts: float, value: float) -> None:
        """Remember a kept sample; those older than RECENT_S before the newest are dropped
        (the newest one always stays, however old). The kept samples stay sorted, so what
        is dropped is a run at the front: every reading's every vital passes here, so the
        list is changed in place rather than rebuilt."""
        kept, sample = self.recent.get(vital), (ts, value)
        if not kept:
            self.recent[vital] = [sample]
            return
        in_order = kept[-1] <= sample
        kept.append(sample)
        if not in_order:
            kept.sort()
        cutoff = kept[-1][0] - RECENT_S
        drop = 0
        while kept[drop][0] < cutoff:
            drop += 1
        drop = max(drop, len(kept) - _RECENT_MAX)
        if drop:
            del kept[:drop]

    def back_inside_after(self, kind: str, vital: str, ts: float, band: Threshold) -> float | None:
        """When the first kept sample of `vital` measured after `ts` was back inside `band`,
        if it was and no run of `kind` is pending: a late sample's run is then over."""
        tracker = self.trackers.get(kind)
        if tracker is not None and tracker.since is not None:
            return None
        kept = self.recent.get(vital, [])
        i = bisect.bisect_right(kept, (ts, math.inf))
        return kept[i][0] if i < len(kept) and band.severity(kept[i][1]) is None else None

    def last_heard(self) -> float | None:
        """When the patient was last heard from: their devices' receive clock, or (with
        no device left, all moved to other patients) the newest sample's time."""
        if self.devices:
            return max(clock.last for clock in self.devices.values())
        return max((sample.ts for sample in self.last.values()), default=None)

    def level(self, vital: str) -> float | None:
        """The vital's current level: the median of its recent kept samples."""
        samples = self.recent.get(vital)
        if not samples:
            last = self.last.get(vital)
            return None if last is None else last.value
        return float(median(map(_VALUE, samples)))

    def to_json(self) -> bytes:
        """The state as the JSON that :meth:`from_dict` reads back: a snapshot that the next
        batch, processed while this one is saved, leaves as it is. Encoded in one pass
        (orjson calls :func:`_as_json` for the engine's own types), without first copying
        it into lists and dicts: every reading's patient pays this with every batch."""
        return orjson.dumps(self, default=_as_json, option=orjson.OPT_PASSTHROUGH_DATACLASS)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PatientState:
        sample = _sample
        return cls(
            partition=doc.get("partition"),
            trackers={k: Tracker.from_list(v) for k, v in doc.get("trackers", {}).items()},
            last={k: sample(v) for k, v in doc.get("last", {}).items()},
            held={
                **{k: [sample(v)] for k, v in doc.get("suspect", {}).items()},  # older state
                **{k: [sample(s) for s in run] for k, run in doc.get("held", {}).items()},
            },
            fall_from={k: float(v) for k, v in doc.get("fall_from", {}).items()},
            aside={k: _set_aside(v) for k, v in doc.get("aside", {}).items()},
            recent={
                k: [(float(t), float(v)) for t, v in r] for k, r in doc.get("recent", {}).items()
            },
            windows={k: TrendWindow.from_list(v) for k, v in doc.get("windows", {}).items()},
            baselines={k: Baseline.from_list(v) for k, v in doc.get("baselines", {}).items()},
            devices={k: DeviceClock.from_list(v) for k, v in doc.get("devices", {}).items()},
        )


def _sample(data: list[Any]) -> Sample:
    return Sample(float(data[0]), float(data[1]), str(data[2]))


def _set_aside(data: list[Any]) -> SetAside:
    """A saved SetAside: [run, hold, until, slack], or without slack if saved before it was."""
    run = [_sample(s) for s in data[0]]
    slack = bool(data[3]) if len(data) > 3 and data[3] is not None else None
    return SetAside(run, float(data[1]), float(data[2]), slack)


def _as_json(value: Any) -> Any:
    """What a type of the engine's state is in JSON (orjson asks for each object it meets)."""
    kind = type(value)
    if kind is Sample:
        return [value.ts, value.value, value.reading_id]
    if kind is PatientState:
        # Tuples are JSON arrays as lists are: no list per sample.
        return {
            "partition": value.partition,
            "trackers": value.trackers,
            "last": value.last,
            "held": value.held,
            "fall_from": value.fall_from,
            "aside": value.aside,
            "recent": value.recent,
            "windows": value.windows,
            "baselines": value.baselines,
            "devices": value.devices,
        }
    if kind is Tracker or kind is TrendWindow or kind is Baseline or kind is DeviceClock:
        return value.to_list()
    if kind is SetAside:
        return [value.run, value.hold, value.until, value.slack]
    raise TypeError(f"{kind.__name__} is not part of the engine's state")
