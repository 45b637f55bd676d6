"""The stream processor alone: how fast it drains a backlog of sealed readings.

Starts a private Tansu broker and redis-server, fills the vitals topic with
``--readings`` sealed readings from ``--patients`` patients (as ingest would:
pseudonymous keys, AES-256-GCM values), then runs the processor exactly as
``healthsync process`` builds it (``wiring.build_processor``: NEWS2, the
anomaly engine, FHIR, the Kafka topic sink, the FHIR store and the live
sink) in this process until every reading is stored, and prints the rate.

Run it under py-spy to see where the processor's time goes:

    py-spy record -o profile.svg -- .venv/bin/python bench/processor.py

It measures the processor's code path with Kafka and Redis on loopback
without TLS (``up`` adds TLS on both links: see bench/pipeline.py for the
whole system as ``up`` runs it).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.kafka import client_config, ensure_topics
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import Keyring
from healthsync.stack import start_broker, start_redis
from healthsync.wiring import build_processor

INTERVAL_S = 1.0  # one reading per patient per second, as a bedside monitor sends


def readings(patients: int, count: int, start: float) -> list[Reading]:
    """Normal vitals with a little noise: nothing alarms, as on most of a ward most of the time."""
    rng = random.Random(7)
    out = []
    for n in range(count):
        patient, step = n % patients, n // patients
        ts = start + step * INTERVAL_S
        device = f"mon-{patient:04d}"
        vitals = {
            "heart_rate": round(rng.gauss(76, 3)),
            "spo2": round(rng.gauss(97, 0.8)),
            "resp_rate": round(rng.gauss(15, 1)),
            "temp": round(rng.gauss(36.9, 0.1), 1),
            "bp_sys": round(rng.gauss(122, 4)),
            "bp_dia": round(rng.gauss(78, 3)),
        }
        rid = reading_id_for(device, step, round(ts * 1000))
        out.append(Reading(rid, device, f"P-{patient:05d}", ts, ts, vitals, seq=step))
    return out


def fill(settings: Settings, batch: list[Reading]) -> float:
    """Produce the readings as ingest does; returns the seconds it took."""
    codec = Codec.from_settings(settings)
    producer = Producer(client_config(settings.kafka, {"linger.ms": 5, "acks": "all"}))
    started = time.perf_counter()
    for i, reading in enumerate(batch):
        key = codec.message_key(reading.patient_id)
        value = codec.seal_message(roles.VITALS, key, reading.to_json())
        while True:
            try:
                producer.produce(settings.kafka.vitals_topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def processed(client: Redis, settings: Settings) -> int:
    key = StatsRecorder(settings.redis.keys, "processor").key
    return int(client.hget(key, "readings_processed_total") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="processor.batch_size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        run = Path(tmp)
        broker = start_broker(log_dir=run)
        redis = start_redis(log_dir=run)
        try:
            keyring = run / "keyring.json"
            Keyring.generate().save(keyring)
            processor_cfg: dict[str, object] = {"group_id": "bench"}
            if args.batch_size:
                processor_cfg["batch_size"] = args.batch_size
            settings = Settings(
                kafka={"bootstrap": f"{broker.host}:{broker.port}", "partitions": args.partitions},
                redis={"url": f"redis://{redis.host}:{redis.port}/0"},
                processor=processor_cfg,
                crypto={"keyring_file": str(keyring)},
            )
            ensure_topics(settings.kafka)
            batch = readings(args.patients, args.readings, time.time() - args.readings)
            fill_s = fill(settings, batch)
            print(f"filled {len(batch)} readings in {fill_s:.1f} s ({len(batch) / fill_s:,.0f}/s)")

            # One connection, polled 4 times a second: this thread's CPU counts in the
            # process's figure, so it must stay small.
            client = Redis.from_url(str(settings.redis.url))
            broker_before = _rss_kib(broker.process.pid)
            processor = build_processor(settings)
            thread = threading.Thread(target=processor.run, name="processor")
            thread.start()
            try:
                # Timed from the first stored batch: the consumer group join is not the
                # processor's work. CPU time counts every thread of this process (the
                # processor and librdkafka's), which a busy machine does not inflate.
                while (first := processed(client, settings)) == 0:
                    time.sleep(0.01)
                started, cpu_started = time.perf_counter(), time.process_time()
                while processed(client, settings) < len(batch):
                    time.sleep(0.25)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
            finally:
                processor.stop()
                thread.join(30)
                client.close()
            done = len(batch) - first
            grown = (_rss_kib(broker.process.pid) - broker_before) * 1024
            print(
                f"the broker's RSS grew {grown / 2**20:.0f} MiB while the processor ran: "
                f"{grown / len(batch):,.0f} B per reading for what it produced "
                "(observations, alerts) and its offset commits"
            )
            print(
                f"processed {done} readings of {args.patients} patients in {elapsed:.1f} s: "
                f"{done / elapsed:,.0f} readings/s; {cpu:.1f} CPU s, "
                f"{done / cpu:,.0f} readings per CPU second"
            )
        finally:
            redis.stop()
            broker.stop()


if __name__ == "__main__":
    main()
