"""After the run: alerts and archived readings counted per phase, and the table.

Alerts: each episode of an alerting device should open one
`threshold:heart_rate` alert whose opening time falls inside it. An episode
whose acknowledged critical readings span the engine's 10 s artefact hold (what
opening the alert needs) and has no such alert lost its alert; one with more
than one alert has duplicates. Both are charged to the phase in which the
episode's first critical reading was acknowledged. Heart-rate alerts inside no
counted episode are counted apart.

Archive: every identified readings object, read for its `reading_id` column;
an acknowledged reading missing from it is lost, a reading id in more than
one row is archived twice (charged to the phase of its acknowledgement).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import pyarrow.parquet as pq
from redis import Redis

from faults_bench.fleet import Fleet
from faults_bench.measure import Recovery
from healthsync.security.codec import Codec
from healthsync.store.archive.layout import READINGS
from healthsync.store.archive.setup import Archive
from healthsync.store.records import Records

KIND = "threshold:heart_rate"
# The engine's artefact hold: a critical level must stand this long to open an alert.
_HOLD_S = 10.0
# An alert opens from the episode's first critical sample, or the next if that one was lost.
_SLACK_S = 1.0


@dataclass
class Row:
    """One phase's figures; `settled` says how its phase ended."""

    name: str
    acked: int = 0
    lost: int = 0
    twice: int = 0
    episodes: int = 0
    alerts_lost: int = 0
    alerts_twice: int = 0
    archive_lost: int = 0
    archive_twice: int = 0
    recovery: Recovery | None = None  # None: no fault in this phase
    settled: str = ""
    before: tuple[float, float | None] | None = None  # acked/s, stored/s over the lead-in


def alerts_by_episode(
    client: Redis, codec: Codec, fleet: Fleet, rows: dict[str, Row]
) -> Counter[str]:
    """Charge lost and duplicated alerts to the rows; every alert in Redis counted by kind."""
    records = Records(codec)
    kinds: Counter[str] = Counter()
    ids = [i.decode() for i in cast("list[bytes]", client.zrange(codec.keys.recent_alerts, 0, -1))]
    opened: dict[str, list[float]] = defaultdict(list)
    for alert_id in ids:
        raw = cast("bytes | None", client.get(codec.keys.alert(alert_id)))
        if raw is None:
            continue
        alert = records.decode_alert(alert_id, raw)
        kinds[str(alert["kind"]).split(":")[0]] += 1
        if alert["kind"] == KIND:
            opened[alert["patient_id"]].append(float(alert["opened_at"]))
    for episode in fleet.episodes.values():
        if episode.acked_span < _HOLD_S or episode.phase is None:
            continue
        times = opened[f"B-{episode.device}"]
        inside = [t for t in times if episode.start - _SLACK_S <= t <= episode.end + _SLACK_S]
        for t in inside:
            times.remove(t)
        row = rows[episode.phase]
        row.episodes += 1
        row.alerts_lost += not inside
        row.alerts_twice += max(0, len(inside) - 1)
    # Heart-rate alerts inside no counted episode (e.g. one whose critical readings
    # were acknowledged over less than the hold, yet all reached the engine).
    kinds["threshold:heart_rate outside the counted episodes"] = sum(map(len, opened.values()))
    return kinds


def archive_counts(archive: Archive, since: float, until: float) -> Counter[str]:
    counts: Counter[str] = Counter()
    for key in archive.reader().objects(READINGS, since, until):
        file = pq.ParquetFile(
            archive.store.open(key), decryption_properties=archive.crypto.decryption_properties()
        )
        counts.update(file.read(columns=["reading_id"]).column("reading_id").to_pylist())
    return counts


def charge_archive(counts: Counter[str], fleet: Fleet, rows: dict[str, Row]) -> None:
    for reading_id, (phase, _device) in fleet.acked.items():
        n = counts.get(reading_id, 0)
        rows[phase].archive_lost += n == 0
        rows[phase].archive_twice += max(0, n - 1)


def _seconds(recovery: Recovery | None, which: str, cap_s: float) -> str:
    if recovery is None:
        return "-"
    value = recovery.pipeline if which == "pipeline" else recovery.archive
    return f"{value:.1f}" if value is not None else f"> {cap_s:.0f}"


def _rates(before: tuple[float, float | None] | None) -> str:
    if before is None:
        return "-"
    acked, stored = before
    return f"{acked:,.0f}, " + (f"{stored:,.0f}" if stored is not None else "?")


def table(rows: Iterable[Row], cap_s: float) -> list[str]:
    lines = [
        "| fault | acked/s, stored/s before | acked | lost | stored twice "
        "| alert episodes: lost / twice | archive: lost / twice | s to rate "
        "| s to archive caught up |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        pipeline = _seconds(r.recovery, "pipeline", cap_s)
        archive = _seconds(r.recovery, "archive", cap_s)
        lines.append(
            f"| {r.name} | {_rates(r.before)} | {r.acked:,} | {r.lost:,} | {r.twice:,} "
            f"| {r.episodes}: {r.alerts_lost} / {r.alerts_twice} "
            f"| {r.archive_lost:,} / {r.archive_twice:,} "
            f"| {pipeline} | {archive} |"
        )
    return lines
