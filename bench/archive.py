"""Benchmark of the archive: the writer's rate, bytes per reading, and one patient's queries.

Writes `--days` of readings for `--patients` patients at one reading every
`--interval` seconds, six vitals each (7 days x 100 patients x 5 s: about 12
million readings), straight through :class:`ArchiveWriter` into a local
directory (no Kafka), one batch per partition and `--roll-s` seconds, as the
archiver would cut them. Then it queries one patient's whole period 50 times
(random patients) through :class:`ArchiveReader` and the same patients' hourly
trends; runs the `compact` job (its real code, in this process) over the
period as a deployment's schedule would once the last day has settled, which
merges each day's objects into one per partition; queries the same patients
again; and runs the same two queries on the de-identified set with DuckDB.

Run: ``.venv/bin/python bench/archive.py [--days 7] [--patients 100] [--roll-s 3600]``.
Progress goes to stderr, the report to stdout. Targets (issue 10): at least
100,000 readings/s written, at most 20 bytes a reading, history p99 at most
150 ms, hourly trends at most 300 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from healthsync.config import ArchiveSettings, CryptoSettings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.jobs.base import JobContext, JobParams
from healthsync.jobs.compact import Compact
from healthsync.jobs.output import JobOutput
from healthsync.security.codec import Codec
from healthsync.security.keyring import Keyring
from healthsync.store import job_files
from healthsync.store.archive import layout
from healthsync.store.archive.columns import HISTORY_COLUMNS
from healthsync.store.archive.deidentify import Deidentifier
from healthsync.store.archive.encryption import ParquetCrypto
from healthsync.store.archive.layout import Span
from healthsync.store.archive.objects import LocalStore
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.trends import trends
from healthsync.store.archive.writer import ArchiveWriter
from healthsync.store.period import MemoryArchive

# Monday 2026-11-02 00:00 UTC.
START = 1_794_009_600.0


@dataclass
class Patient:
    """One patient's device and vitals, drifting slowly as a monitor's do."""

    patient_id: str
    device_id: str
    phase: float
    partition: int
    hr: float = 78.0
    spo2: float = 96.0
    temp: float = 36.9
    rr: float = 16.0
    sys: float = 122.0
    dia: float = 79.0
    seq: int = 0

    def drift(self, rng: random.Random) -> dict[str, float]:
        self.hr = min(max(self.hr + rng.gauss(0, 0.8), 45), 150)
        self.spo2 = min(max(self.spo2 + rng.gauss(0, 0.3), 85), 100)
        self.temp = min(max(self.temp + rng.gauss(0, 0.02), 35.5), 40)
        self.rr = min(max(self.rr + rng.gauss(0, 0.3), 8), 30)
        self.sys = min(max(self.sys + rng.gauss(0, 0.8), 80), 190)
        self.dia = min(max(self.dia + rng.gauss(0, 0.5), 45), 110)
        return {
            "heart_rate": float(round(self.hr)),
            "spo2": float(round(self.spo2)),
            "temp": round(self.temp, 1),
            "resp_rate": float(round(self.rr)),
            "bp_sys": float(round(self.sys)),
            "bp_dia": float(round(self.dia)),
        }


def patients(count: int, partitions: int, rng: random.Random) -> list[Patient]:
    made = []
    for i in range(count):
        patient_id = f"P-{100_000 + i}"
        partition = zlib.crc32(patient_id.encode()) % partitions
        made.append(Patient(patient_id, f"mon-{i:04d}", rng.uniform(0, 5), partition))
    return made


def batches(
    people: list[Patient], args: argparse.Namespace, rng: random.Random
) -> Iterator[tuple[Span, list[Reading]]]:
    """One batch per partition and roll, readings in arrival order, offsets as Kafka's."""
    offsets = [0] * args.partitions
    end = START + args.days * 86_400
    roll_start = START
    while roll_start < end:
        by_partition: list[list[Reading]] = [[] for _ in range(args.partitions)]
        steps = int(args.roll_s // args.interval)
        for step in range(steps):
            base = roll_start + step * args.interval
            for p in people:
                ts = round(base + p.phase + rng.uniform(0, 0.05), 3)
                p.seq += 1
                by_partition[p.partition].append(
                    Reading(
                        reading_id=reading_id_for(p.device_id, p.seq, round(ts * 1000)),
                        device_id=p.device_id,
                        patient_id=p.patient_id,
                        ts=ts,
                        received_at=ts + rng.uniform(0.02, 0.2),
                        vitals=p.drift(rng),
                        seq=p.seq,
                    )
                )
        for partition, readings in enumerate(by_partition):
            if readings:
                first = offsets[partition]
                offsets[partition] += len(readings)
                yield Span(partition, first, offsets[partition] - 1), readings
        roll_start += args.roll_s


RESEARCH_HISTORY = "SELECT * FROM read_parquet('{files}') WHERE patient = ? ORDER BY ts"
RESEARCH_TRENDS = (
    "SELECT time_bucket(INTERVAL 1 hour, ts) AS start, count(heart_rate), min(heart_rate),"
    " max(heart_rate), avg(heart_rate), median(heart_rate) FROM read_parquet('{files}')"
    " WHERE patient = ? GROUP BY start ORDER BY start"
)


def hourly_trends(
    reader: ArchiveReader, patient_id: str, since: float, until: float
) -> list[dict[str, Any]]:
    table = reader.readings_table(patient_id, since, until, ["heart_rate"])
    return trends(table, "heart_rate", 3600)


def duck(db: duckdb.DuckDBPyConnection, query: str, files: str, pseudonym: str) -> Any:
    return db.sql(query.format(files=files), params=[pseudonym]).to_arrow_table()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return (time.perf_counter() - started) * 1000, result


def size_of(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def report_queries(name: str, times: list[float], target: float) -> None:
    print(
        f"  {name:<34} first {times[0]:7.1f} ms  p50 {percentile(times[1:], 0.5):7.1f} ms"
        f"  p99 {percentile(times[1:], 0.99):7.1f} ms  (target <= {target:.0f} ms)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--roll-s", type=float, default=3600, help="seconds of data per object")
    parser.add_argument("--row-group-rows", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dir", type=Path, help="write here (kept) instead of a temporary dir")
    return parser.parse_args()


@dataclass
class Written:
    readings: int = 0
    objects: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    total_s: float = 0.0
    # Bytes of the objects as written (identified, research set), before any compaction.
    identified: int = 0
    research: int = 0


def write_all(
    writer: ArchiveWriter,
    people: list[Patient],
    args: argparse.Namespace,
    rng: random.Random,
    root: Path,
) -> Written:
    """Generate and write every batch; only the writer's own time is counted."""
    done = Written()
    generate_started = time.perf_counter()
    for span, readings in batches(people, args, rng):
        started, cpu_started = time.perf_counter(), time.process_time()
        done.objects += len(writer.write_readings(span, readings))
        done.wall_s += time.perf_counter() - started
        done.cpu_s += time.process_time() - cpu_started
        done.readings += len(readings)
        if span.partition == args.partitions - 1:
            print(f"\r{done.readings:,} readings written", end="", file=sys.stderr, flush=True)
    done.total_s = time.perf_counter() - generate_started
    print(file=sys.stderr)
    done.identified = size_of(root / layout.IDENTIFIED)
    done.research = size_of(root / layout.DEIDENTIFIED)
    return done


def query_all(
    reader: ArchiveReader, chosen: list[str], end: float
) -> tuple[list[float], list[float], list[int]]:
    """Each chosen patient's whole history, then hourly trends, through the reader."""
    history = [
        timed(partial(reader.readings_table, p, START, end, HISTORY_COLUMNS)) for p in chosen
    ]
    hourly = [timed(partial(hourly_trends, reader, p, START, end))[0] for p in chosen]
    return [t for t, _ in history], hourly, [table.num_rows for _, table in history]


@dataclass
class Compacted:
    summary: dict[str, Any]
    wall_s: float
    cpu_s: float
    objects_before: int
    objects_after: int
    identified: int


def compact_days(archive: Archive, root: Path, since: float, until: float) -> Compacted:
    """Run the `compact` job over the period as it would run once the last day settled
    (`until` plus the settle time): each day's objects merged into one per partition."""
    defaults = ArchiveSettings()
    params = JobParams("bench-compact", since, until + defaults.day_settle_s)
    output = JobOutput(job_files.LocalStore(root), "compact", params.run_id)
    context = JobContext(params, output, MemoryArchive(), Codec(None))
    before = len(list(root.rglob("*.parquet")))
    started, cpu_started = time.perf_counter(), time.process_time()
    job = Compact(lambda: archive, defaults.day_settle_s, defaults.day_row_group_rows)
    summary = job.run(context)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    output.commit()
    after = len(list(root.rglob("*.parquet")))
    return Compacted(summary, wall_s, cpu_s, before, after, size_of(root / layout.IDENTIFIED))


def report_compaction(done: Compacted) -> None:
    summary = done.summary
    rows = summary["rows"]
    print(
        f"  day compaction (compact job)       {summary['days']} days, {rows:,} rows written"
        f" in {done.wall_s:.1f} s: {rows / done.wall_s:,.0f} rows/s wall,"
        f" {rows / done.cpu_s:,.0f} per CPU second"
    )
    print(
        f"                                     objects {done.objects_before:,} ->"
        f" {done.objects_after:,} ({summary['objects_merged']:,} merged into"
        f" {summary['objects_written']:,}, identified and research sets)"
    )


def report_sizes(compacted: Compacted, readings: int) -> None:
    print(f"  bytes per reading, identified, day objects {compacted.identified / readings:.1f} B")


def query_research(root: Path, pseudonyms: list[str]) -> tuple[list[float], list[float]]:
    """The same two queries on the de-identified set, with DuckDB."""
    db = duckdb.connect()
    db.execute("SET parquet_metadata_cache = true")
    files = f"{root}/{layout.DEIDENTIFIED}/{layout.READINGS}/*/*.parquet"
    history = [timed(partial(duck, db, RESEARCH_HISTORY, files, p))[0] for p in pseudonyms]
    trend = [timed(partial(duck, db, RESEARCH_TRENDS, files, p))[0] for p in pseudonyms]
    return history, trend


def report_writes(args: argparse.Namespace, done: Written) -> None:
    identified, research = done.identified, done.research
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    print(
        f"archive benchmark: {args.days:g} days x {args.patients} patients, one reading "
        f"every {args.interval:g} s, six vitals, {args.partitions} partitions, "
        f"{args.roll_s:g} s per object, {args.row_group_rows} rows per row group"
    )
    print(f"  readings written                   {done.readings:,} in {done.objects:,} objects")
    print(
        f"  write rate (writer alone)          {done.readings / done.wall_s:,.0f} readings/s"
        f"  (target >= 100,000; {done.wall_s:.1f} s writing,"
        f" {done.total_s:.1f} s with generation)"
    )
    print(
        f"  write rate per CPU second          {done.readings / done.cpu_s:,.0f} readings/s"
        f"  ({done.cpu_s:.1f} s of CPU: the figure that other load on the machine"
        " does not lower)"
    )
    print(
        f"  bytes per reading, identified      {identified / done.readings:.1f} B  (target <= 20)"
    )
    print(f"  bytes per reading, de-identified   {research / done.readings:.1f} B")


def main() -> int:
    args = parse_args()
    rng = random.Random(7)
    root = args.dir or Path(tempfile.mkdtemp(prefix="hs-archive-bench-"))
    keyring = Keyring.generate()
    crypto = ParquetCrypto.from_keyring(keyring, CryptoSettings())
    deidentifier = Deidentifier.from_keyring(keyring)
    store = LocalStore(root)
    people = patients(args.patients, args.partitions, rng)
    try:
        done = write_all(
            ArchiveWriter(store, crypto, deidentifier, args.row_group_rows), people, args, rng, root
        )
        end = START + args.days * 86_400
        chosen = [rng.choice(people).patient_id for _ in range(args.queries)]
        reader = ArchiveReader(store, crypto)
        history, hourly, rows = query_all(reader, chosen, end)
        reader.close()
        archive = Archive(store, crypto, deidentifier, args.row_group_rows)
        compacted = compact_days(archive, root, START, end)
        reader = ArchiveReader(store, crypto)
        day_history, day_hourly, day_rows = query_all(reader, chosen, end)
        reader.close()
        pseudonyms = [deidentifier.pseudonym("patient", p) for p in chosen]
        research_history, research_trends = query_research(root, pseudonyms)

        report_writes(args, done)
        same = "the same" if rows == day_rows else "DIFFERENT"
        print(
            f"  one patient's history: {sorted(set(rows))} rows per query,"
            f" {same} before and after day compaction"
        )
        print("  hour objects (as the archiver and hourly compaction leave them):")
        report_queries("history, identified (pyarrow)", history, 150)
        report_queries("hourly trends, identified", hourly, 300)
        report_compaction(compacted)
        report_sizes(compacted, done.readings)
        print("  after day compaction:")
        report_queries("history, identified (pyarrow)", day_history, 150)
        report_queries("hourly trends, identified", day_hourly, 300)
        report_queries("history, de-identified (DuckDB)", research_history, 150)
        report_queries("hourly trends, de-identified (DuckDB)", research_trends, 300)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
