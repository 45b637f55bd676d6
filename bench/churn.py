"""Patients coming and going: whether Redis and the processor keep the ones who left.

A ward's turnover runs in real time through the processor's steps and Redis
sinks, against a private redis-server. ``--active`` patients send at a time,
each once a second for ``--stay`` seconds; then the patient leaves and a new
one takes the bed. The history retention is 60 s (the shortest allowed), so
a patient who left is past it a minute later.

Every ``--every`` seconds it prints:
- how many patients have come;
- Redis's keys and memory;
- how many patients the engine, the NEWS2 step and the rule book hold.

With patients leaving as they should, the figures level off once the first
ones' keys have expired: the retention plus 6 minutes of margin after their
last trim (store/retention.py). Otherwise they grow with every patient. The
stages are the processor's own (:func:`healthsync.wiring.build_stages`), with
the engine's ``forget_after_s`` at its default, the retention.

    .venv/bin/python bench/churn.py [--minutes 12] [--active 30] [--stay 120]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterable

from redis import Redis

from fhir_trim import private_store
from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.security.codec import Codec
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from healthsync.stream.rulebook import RuleBook
from healthsync.wiring import build_stages


class Stages:
    """The processor's steps and Redis sinks as its wiring builds them, run without Kafka."""

    def __init__(self, settings: Settings, client: Redis, codec: Codec) -> None:
        built = build_stages(settings, client, codec)
        self.steps = built.steps
        self.sinks = (built.fhir_store, built.live)  # in the processor's order, Kafka's left out
        [self.engine] = [s for s in built.steps if isinstance(s, AnomalyEngine)]
        [self.news2] = [s for s in built.steps if isinstance(s, News2Scores)]
        [self.rules] = [s for s in built.steps if isinstance(s, RuleBook)]

    def run(self, readings: Iterable[Reading] = (), now: float | None = None) -> Batch:
        """One batch through the steps and the sinks; with no readings and `now`, a tick."""
        batch = Batch(list(readings), now=now)
        for step in self.steps:
            step.process(batch)
        for sink in self.sinks:
            sink.write(batch)
            sink.flush()
        return batch


class Ward:
    """`active` beds, each patient staying `stay_s`; a new patient takes a bed that empties."""

    def __init__(self, active: int, stay_s: float, start: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.stay_s = stay_s
        self.came = 0
        self.sent = 0
        # Staggered, so that patients leave one by one rather than all at once.
        self.beds = {self._admit(): start + stay_s * (i + 1) / active for i in range(active)}

    def _admit(self) -> str:
        self.came += 1
        return f"P-{self.came:05d}"

    def readings(self, now: float) -> list[Reading]:
        for patient, leaves in list(self.beds.items()):
            if now >= leaves:
                del self.beds[patient]
                self.beds[self._admit()] = now + self.stay_s
        out = []
        for patient in self.beds:
            self.sent += 1
            vitals = {
                "heart_rate": round(self.rng.gauss(76, 3)),
                "spo2": round(self.rng.gauss(97, 0.8)),
                "resp_rate": round(self.rng.gauss(15, 1)),
                "temp": round(self.rng.gauss(36.9, 0.1), 1),
                "bp_sys": round(self.rng.gauss(122, 4)),
            }
            rid = f"{self.sent:024x}"
            out.append(Reading(rid, f"mon-{patient}", patient, now, now, vitals))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--active", type=int, default=30, help="patients sending at a time")
    parser.add_argument("--stay", type=float, default=120.0, help="seconds each patient sends")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between report lines")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with private_store(history_retention_s=60) as (settings, codec, url):
        client = Redis.from_url(url)
        stages = Stages(settings, client, codec)
        start = time.time()
        ward = Ward(args.active, args.stay, start, args.seed)
        print(f"{args.active} beds, {args.stay:g} s stays, retention 60 s, {args.minutes:g} min")
        print(
            f"{'min':>5} {'patients':>8} {'keys':>6} {'memory MiB':>10} {'engine':>6}"
            f" {'news2':>6} {'rules':>6}"
        )
        report_at, tick = start, 0
        while (now := time.time()) < start + args.minutes * 60:
            stages.run(ward.readings(now))
            stages.run(now=now)
            if now >= report_at:
                report_at += args.every
                memory = int(client.info("memory")["used_memory"]) / 2**20
                print(
                    f"{(now - start) / 60:5.1f} {ward.came:8d} {client.dbsize():6d}"
                    f" {memory:10.1f} {len(stages.engine.states):6d}"
                    f" {stages.news2.held:6d} {stages.rules.held:6d}",
                    flush=True,
                )
            tick += 1
            time.sleep(max(0.0, start + tick - time.time()))
        client.close()


if __name__ == "__main__":
    main()
