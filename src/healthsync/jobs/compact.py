"""`compact`: each hour's small archive objects merged into one per partition, and each
settled day's into one.

The archiver writes an object per partition and roll (60 s by default), so
an hour holds dozens per partition and a week's query opens thousands.
This job merges, for every hour of its period, the identified readings and
alerts of each partition into one object, and the research objects of the
batches those hours hold likewise (:mod:`healthsync.store.archive.compact`
says how each step stays safe to interrupt). A day of the period that ended
at least ``archive.day_settle_s`` before the period's end (and the clock) is
merged whole instead: one day object per partition
(:mod:`healthsync.store.archive.days`), so a week's query opens seven objects
per partition rather than 168. Each merged object is read back and compared
with its inputs (row count and the multiset of rows) before any input is
deleted. Output: ``report.json`` (per directory and partition: inputs, rows,
the object written, objects deleted; no patient data). A partition it must
leave alone (overlapping offsets, a merged object that does not match) does
not stop the others; the run then fails naming it.

``--option pause_after=written|deleted`` is a test hook: at the first such
step the run prints ``compact: paused after <step>`` and waits for good, so
a test can kill it there.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from healthsync.jobs.base import JobContext, JobError
from healthsync.store.archive import layout
from healthsync.store.archive.compact import Checkpoint, Compactor, Directory, Merge
from healthsync.store.archive.days import DayCompactor, day_of, settled_days
from healthsync.store.archive.errors import ArchiveError
from healthsync.store.archive.setup import Archive

STEPS = ("written", "deleted")


class Compact:
    name = "compact"
    description = (
        "merges each hour's archive objects into one per partition, and each settled day's,"
        " verified first"
    )

    def __init__(
        self,
        archive: Callable[[], Archive],
        day_settle_s: float = 3600.0,
        day_row_group_rows: int = 8192,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Built when the job runs: the other jobs do not need the archive's keys.
        self.archive = archive
        self.day_settle_s = day_settle_s
        self.day_row_group_rows = day_row_group_rows
        self.clock = clock

    def run(self, ctx: JobContext) -> dict[str, Any]:
        params = ctx.params
        if params.patients:
            raise JobError("compact merges whole objects: --patients does not apply")
        unknown = set(params.options) - {"pause_after"}
        if unknown:
            raise JobError(f"compact has no option {', '.join(sorted(unknown))}")
        archive = self.archive()
        compactor = Compactor(
            archive.store, archive.crypto, archive.writer(), _pause(params.options)
        )
        hours = range(int(params.since // layout.HOUR_S), -int(-params.until // layout.HOUR_S))
        now = min(params.until, self.clock())
        days = settled_days(hours, now, self.day_settle_s)
        whole = DayCompactor(compactor, day_of(self.clock()), self.day_row_group_rows)
        # The research set's years (and the real ones, under which it was filed before
        # 2026-12-08).
        research_year = archive.deidentifier.research_year
        years = sorted({y for h in hours for y in (_year(h), research_year(h * layout.HOUR_S))})
        merges: list[tuple[str, str, Merge]] = []
        refused: list[str] = []

        def done(dataset: str, kind: str, directory: Directory) -> dict[tuple[int, str], int]:
            merges.extend((dataset, kind, m) for m in directory.merges)
            refused.extend(directory.refused)
            return directory.reach

        try:
            for dataset in (layout.READINGS, layout.ALERTS):
                # Per partition and incarnation of the topic: how far the days and hours reach.
                reach: dict[tuple[int, str], int] = {}
                parts = [functools.partial(whole.day, dataset, day) for day in days]
                parts += [
                    functools.partial(compactor.hour, dataset, hour)
                    for hour in hours
                    if hour // 24 not in days
                ]
                for part in parts:
                    for stream, last in done(dataset, layout.IDENTIFIED, part()).items():
                        reach[stream] = max(last, reach.get(stream, -1))
                for year in years:
                    done(dataset, layout.DEIDENTIFIED, compactor.research(dataset, year, reach))
        except ArchiveError as exc:
            raise JobError(f"compaction stopped: {exc}") from exc
        written = [m for _, _, m in merges if m.written]
        summary = {
            "hours": len(hours),
            "days": len(days),
            "objects_merged": sum(m.inputs for m in written),
            "objects_written": len(written),
            "objects_deleted": sum(m.deleted for _, _, m in merges),
            "rows": sum(m.rows for m in written),
            "refused": len(refused),
        }
        ctx.output.write_json(
            "report.json",
            {
                "since": params.since,
                "until": params.until,
                "summary": summary,
                "merges": [
                    {"dataset": dataset, "set": kind} | m.describe()
                    for dataset, kind, m in merges
                    if m.written or m.deleted
                ],
                "refused": refused,
            },
        )
        if refused:
            more = f" (and {len(refused) - 1} more; see report.json)" if len(refused) > 1 else ""
            raise JobError(f"{refused[0]}{more}")
        return summary


def _year(hour: int) -> int:
    return datetime.fromtimestamp(hour * layout.HOUR_S, tz=UTC).year


def _pause(options: Any) -> Checkpoint | None:
    step = options.get("pause_after")
    if step is None:
        return None
    if step not in STEPS:
        raise JobError(f"pause_after must be one of {', '.join(STEPS)}, not {step!r}")

    def checkpoint(done: str, _key: str) -> None:
        if done == step:
            print(f"compact: paused after {done}", flush=True)
            sys.stdout.flush()
            while True:
                time.sleep(60)

    return checkpoint
