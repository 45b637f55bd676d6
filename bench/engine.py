"""The anomaly engine and NEWS2 alone: CPU per reading, with no broker, Redis or sealing.

Runs the processor's two clinical steps (NEWS2 scoring, then the anomaly
engine, which also encodes each touched patient's state for the live sink)
over batches of ``--batch`` readings from ``--patients`` patients with normal
vitals, as in live operation at one reading per patient per second, and prints
the CPU time per reading, best of ``--rounds``. The garbage collector is set as
the processor sets it (``collector.collect_less``).

Being CPU-bound and single-threaded, it moves far less from run to run than
``processor.py`` on a shared machine: use it to compare a change to the
engine's hot path, and ``processor.py`` for the whole processor.

    .venv/bin/python bench/engine.py [--readings 40000] [--patients 5000] [--rounds 3]

Under py-spy: ``py-spy record -o engine.svg -- .venv/bin/python bench/engine.py``.
"""

from __future__ import annotations

import argparse
import time

from healthsync.collector import collect_less
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from healthsync.stream.rulebook import RuleBook
from processor import readings

START = 1_767_225_600.0  # 2026-01-01, UTC


def run_once(batches: list[list[Reading]]) -> float:
    """CPU seconds for one fresh engine to take every batch."""
    cfg = AnomalySettings()
    book = RuleBook(cfg.patients)
    engine = AnomalyEngine(cfg, book)
    scores = News2Scores(lambda _patients: {}, freshness_s=900.0, scale_for=book.scale_for)
    started = time.process_time()
    for readings_of_batch in batches:
        batch = Batch(readings_of_batch)
        scores.process(batch)
        engine.process(batch)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=40_000)
    parser.add_argument("--patients", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=2_000, help="readings per batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    data = readings(args.patients, args.readings, START)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
    collect_less()
    best = min(run_once(batches) for _ in range(args.rounds))
    print(
        f"{args.readings:,} readings of {args.patients:,} patients in batches of {args.batch:,}: "
        f"{best * 1e6 / args.readings:.1f} us of CPU per reading "
        f"({args.readings / best:,.0f} readings per CPU second), best of {args.rounds}"
    )


if __name__ == "__main__":
    main()
