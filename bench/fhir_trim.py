"""The FHIR store's trim of alert indexes: what a batch pays when many come due at once.

The FHIR store trims each index a batch writes to at most once a minute. An
alert's indexes (Communication, Flag) keep an entry older than the retention
while its alert is open, so their trim reads the old entries and checks
which resources have expired. A batch that changes many patients' alerts at
once (a ward's monitors going offline together after a network fault, or
coming back) finds all of their indexes due.

Starts a private redis-server, stores ``--patients`` patients each with an
alert opened an hour ago (older than a 60 s retention, still open), then
writes a batch of one reading per patient that updates every alert: first
with every index due (a new sink, as after a start), then the same batch
again with none due. Prints each write's wall time, the process's CPU time
and the round trips to Redis, best of ``--rounds``.

    .venv/bin/python bench/fhir_trim.py [--patients 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis import ConnectionPool, Redis
from redis.connection import Connection

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.fhir.step import FhirResources
from healthsync.security.codec import Codec
from healthsync.security.keyring import Keyring
from healthsync.stack import start_redis
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.records import Records
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores

# Alerts open on one sample: the bench is about the store, not the engine's timing.
IMMEDIATE = AnomalySettings(persist_s=0, persist_readings=1, resolve_hold_s=0, max_jump={})


class CountingConnection(Connection):
    """A connection that counts what it sends: one send is one round trip to Redis."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def batch_of(readings: list[Reading], fhir: FhirResources | None = None) -> Batch:
    """The batch the processor's steps make of `readings`, its FHIR resources included."""
    batch = Batch(readings)
    for step in (
        AnomalyEngine(IMMEDIATE),
        News2Scores(lambda _p: {}, 900),
        fhir or FhirResources("urn:mrn"),
    ):
        step.process(batch)
    return batch


def write(sink: RedisFhirSink, batch: Batch) -> None:
    sink.write(batch)
    sink.flush()


def timed(sink: RedisFhirSink, batch: Batch) -> tuple[float, float, int]:
    """Wall ms, CPU ms and round trips of writing `batch` through `sink`."""
    CountingConnection.sends = 0
    wall, cpu = time.perf_counter(), time.process_time()
    write(sink, batch)
    return (
        (time.perf_counter() - wall) * 1000,
        (time.process_time() - cpu) * 1000,
        CountingConnection.sends,
    )


@contextmanager
def private_store(**redis: object) -> Iterator[tuple[Settings, Codec, str]]:
    """A private redis-server and a new keyring: the settings, the codec and Redis's URL."""
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        run = Path(tmp)
        server = start_redis(log_dir=run)
        try:
            keyring = run / "keyring.json"
            Keyring.generate().save(keyring)
            url = f"redis://{server.host}:{server.port}/0"
            settings = Settings(redis={"url": url, **redis}, crypto={"keyring_file": str(keyring)})
            yield settings, Codec.from_settings(settings), url
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with private_store(history_retention_s=60) as (settings, codec, url):
        pool = ConnectionPool.from_url(url, connection_class=CountingConnection)
        client = Redis(connection_pool=pool)
        client.ping()

        now, ids = time.time(), [f"P-{i}" for i in range(args.patients)]
        opened = [
            Reading(f"old-{p}", f"mon-{p}", p, now - 3600, now, {"heart_rate": 150}) for p in ids
        ]
        write(RedisFhirSink(client, settings.redis, Records(codec)), batch_of(opened))
        later = batch_of(
            [Reading(f"new-{p}", f"mon-{p}", p, now, now, {"heart_rate": 150}) for p in ids]
        )

        due, none_due = [], []
        for _ in range(args.rounds):
            sink = RedisFhirSink(client, settings.redis, Records(codec))
            due.append(timed(sink, later))  # a new sink: every index is due
            none_due.append(timed(sink, later))  # trimmed a moment ago
        client.close()

    print(
        f"a batch of {args.patients} readings, one per patient, updating each patient's open alert"
    )
    for label, runs in (("every alert index due", due), ("none due", none_due)):
        wall, cpu, trips = min(runs)
        print(f"  {label:22s} {wall:8.1f} ms wall  {cpu:8.1f} ms CPU  {trips:6d} round trips")
    extra = min(due)[0] - min(none_due)[0]
    print(f"  the trim adds {extra:.1f} ms to that batch")


if __name__ == "__main__":
    main()
