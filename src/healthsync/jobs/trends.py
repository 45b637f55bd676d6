"""`trends`: hourly and daily aggregates per patient and vital, recent direction, NEWS2 path.

For each patient with readings in the period:

- per vital, hourly and daily buckets (UTC) of the period: count, min, max,
  mean, median (the same figures `GET /v1/patients/{id}/trends` serves);
- per vital, the direction and rate of change over the 24 hours and the 7 days
  before the period's end: the least-squares slope in units per hour, and
  ``rising``/``falling`` when the fitted change over the span the readings
  cover exceeds the vital's hysteresis margin (``anomaly.margins``), else
  ``steady``;
- the NEWS2 trajectory: per hour, the highest and the last score from the
  parameters seen within the last 15 minutes (scale 1), and the last band.

Each patient's document names the patient, so it is sealed (``patients/<pseudonym>.json``);
``summary.json`` holds only counts.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from healthsync.domain.news2 import news2, observed_in
from healthsync.domain.readings import Reading
from healthsync.domain.rule_defaults import DEFAULT_MARGIN
from healthsync.domain.stats import Point, buckets
from healthsync.jobs.base import JobContext

HOUR = 3600.0
DAY = 24 * HOUR
WINDOWS = (("last_24h", DAY), ("last_7d", 7 * DAY))
NEWS2_FRESH_S = 900.0


def slope_per_hour(points: list[Point]) -> float | None:
    if len(points) < 2:
        return None
    xs = [ts / HOUR for ts, _ in points]
    ys = [value for _, value in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread


def direction(points: list[Point], margin: float) -> dict[str, Any] | None:
    rate = slope_per_hour(points)
    if rate is None:
        return None
    span_h = (points[-1][0] - points[0][0]) / HOUR
    change = rate * span_h
    word = "rising" if change > margin else "falling" if change < -margin else "steady"
    return {
        "samples": len(points),
        "span_h": round(span_h, 3),
        "rate_per_h": round(rate, 3),
        "change": round(change, 3),
        "direction": word,
    }


def news2_path(readings: list[Reading]) -> list[dict[str, Any]]:
    seen: dict[str, tuple[Any, float]] = {}
    hours: dict[float, dict[str, Any]] = {}
    for reading in readings:
        for name, value in observed_in(reading).items():
            seen[name] = (value, reading.ts)
        fresh = {k: v for k, (v, ts) in seen.items() if reading.ts - ts <= NEWS2_FRESH_S}
        score = news2(fresh, reading.ts)
        hour = reading.ts // HOUR * HOUR
        slot = hours.setdefault(hour, {"start": hour, "max": score.total})
        slot["max"] = max(slot["max"], score.total)
        slot |= {"last": score.total, "band": score.band, "complete": score.complete}
    return [hours[h] for h in sorted(hours)]


class Trends:
    name = "trends"
    description = "hourly/daily aggregates, 24 h and 7 d direction per vital, NEWS2 trajectory"

    def __init__(self, margins: dict[str, float] | None = None) -> None:
        self.margins = margins or dict(DEFAULT_MARGIN)

    def patient(self, readings: list[Reading], since: float, until: float) -> dict[str, Any]:
        series: dict[str, list[Point]] = defaultdict(list)
        for reading in readings:
            for vital, value in reading.vitals.items():
                series[vital].append((reading.ts, value))
        vitals: dict[str, Any] = {}
        for vital, points in sorted(series.items()):
            in_period = [p for p in points if p[0] >= since]
            doc: dict[str, Any] = {
                "hourly": buckets(in_period, HOUR),
                "daily": buckets(in_period, DAY),
            }
            for label, window in WINDOWS:
                recent = [p for p in points if p[0] >= until - window]
                doc[label] = direction(recent, self.margins.get(vital, 0.0))
            vitals[vital] = doc
        period = [r for r in readings if r.ts >= since]
        return {"since": since, "until": until, "vitals": vitals, "news2": news2_path(period)}

    def run(self, ctx: JobContext) -> dict[str, Any]:
        params = ctx.params
        # The 7-day direction needs the week before the period's end, whatever the period.
        start = min(params.since, params.until - WINDOWS[-1][1])
        by_patient: dict[str, list[Reading]] = defaultdict(list)
        for reading in ctx.reader.readings(start, params.until, params.patients):
            by_patient[reading.patient_id].append(reading)
        directions: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        written = 0
        for patient, readings in sorted(by_patient.items()):
            doc = self.patient(readings, params.since, params.until)
            if not any(v["hourly"] for v in doc["vitals"].values()):
                continue  # nothing in the period itself
            for vital, figures in doc["vitals"].items():
                if figures["last_24h"] is not None:
                    directions[vital][figures["last_24h"]["direction"]] += 1
            tag = ctx.codec.pseudonym(patient)
            ctx.output.write_sealed(
                f"patients/{tag}.json", {"patient_id": patient} | doc, ctx.codec
            )
            written += 1
        summary = {
            "patients": written,
            "last_24h": {v: dict(sorted(d.items())) for v, d in sorted(directions.items())},
        }
        ctx.output.write_json(
            "summary.json", {"since": params.since, "until": params.until} | summary
        )
        return summary
