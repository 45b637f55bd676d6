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
whole system as ``up`` runs it). ``--cluster`` puts Redis in a three-primary
Redis Cluster instead (patient groups, one transaction per group). It also
prints what Redis did per reading: commands (INFO commandstats), bytes
received (``total_net_input_bytes``) and memory held at the end
(``used_memory``), summed over the nodes.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from redis import Redis

from healthsync.collector import collect_less
from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.kafka import client_config, ensure_topics
from healthsync.redis_client import connect
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.keyring import Keyring
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


def processed(client: Any, settings: Settings) -> int:
    keys = settings.redis.keys.stats_keys("processor")
    return sum(int(client.hget(k, "readings_processed_total") or 0) for k in keys)


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def redis_figures(ports: list[int]) -> tuple[int, int, int, float]:
    """Commands, bytes received, memory used and CPU seconds, summed over the Redis nodes."""
    calls = received = memory = 0
    cpu = 0.0
    for port in ports:
        with Redis("127.0.0.1", port) as node:
            stats = node.info("commandstats")
            calls += sum(int(v["calls"]) for k, v in stats.items() if k not in _NOT_THE_PIPELINE)
            received += int(node.info("stats")["total_net_input_bytes"])
            memory += int(node.info("memory")["used_memory"])
            usage = node.info("cpu")
            cpu += float(usage["used_cpu_user"]) + float(usage["used_cpu_sys"])
    return calls, received, memory, cpu


# The bench's own polling and INFO, not the processor's work.
_NOT_THE_PIPELINE = {"cmdstat_info", "cmdstat_hget", "cmdstat_cluster", "cmdstat_command"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="processor.batch_size")
    parser.add_argument("--cluster", action="store_true", help="a three-primary Redis Cluster")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp, ExitStack() as stack:
        run = Path(tmp)
        broker = start_broker(log_dir=run)
        stack.callback(broker.stop)
        if args.cluster:
            # The tests' three-primary cluster, from the repository's tests/ package.
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.redis_cluster import redis_cluster

            nodes = stack.enter_context(redis_cluster(run / "cluster"))
            url, ports = nodes.url, nodes.ports
        else:
            redis = start_redis(log_dir=run)
            stack.callback(redis.stop)
            url, ports = f"redis://{redis.host}:{redis.port}/0", [redis.port]
        keyring = run / "keyring.json"
        Keyring.generate().save(keyring)
        processor_cfg: dict[str, object] = {"group_id": "bench"}
        if args.batch_size:
            processor_cfg["batch_size"] = args.batch_size
        # The backlog's readings end now, but were measured up to its whole span before:
        # without room for that, every device would be found offline at the first tick,
        # a wave of alerts (and their FHIR resources) that live operation does not have.
        span_s = args.readings / args.patients * INTERVAL_S
        settings = Settings(
            kafka={"bootstrap": f"{broker.host}:{broker.port}", "partitions": args.partitions},
            redis={"url": url},
            processor=processor_cfg,
            crypto={"keyring_file": str(keyring)},
            anomaly={"offline_min_s": span_s + 3600},
        )
        ensure_topics(settings.kafka)
        batch = readings(args.patients, args.readings, time.time() - span_s)
        fill_s = fill(settings, batch)
        print(f"filled {len(batch)} readings in {fill_s:.1f} s ({len(batch) / fill_s:,.0f}/s)")
        run_processor(settings, batch, ports, broker.process.pid)


def run_processor(settings: Settings, batch: list[Reading], ports: list[int], broker: int) -> None:
    processor = build_processor(settings)
    collect_less()  # as `healthsync process` does once it has built the processor
    thread = threading.Thread(target=processor.run, name="processor")
    calls0, received0, _memory, cpu0 = redis_figures(ports)
    broker_before = _rss_kib(broker)
    # One connection, polled 4 times a second: this thread's CPU counts in the
    # process's figure, so it must stay small.
    client = connect(settings.redis)
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
    grown = (_rss_kib(broker) - broker_before) * 1024
    print(
        f"the broker's RSS grew {grown / 2**20:.0f} MiB while the processor ran: "
        f"{grown / len(batch):,.0f} B per reading for what it produced "
        "(observations, alerts) and its offset commits"
    )
    patients = len({r.patient_id for r in batch})
    print(
        f"processed {done} readings of {patients} patients in {elapsed:.1f} s: "
        f"{done / elapsed:,.0f} readings/s; {cpu:.1f} CPU s, "
        f"{done / cpu:,.0f} readings per CPU second"
    )
    calls, received, memory, redis_cpu = redis_figures(ports)
    n = len(batch)
    print(
        f"redis per reading: {(calls - calls0) / n:.2f} commands, "
        f"{(received - received0) / n:,.0f} bytes received, "
        f"{(redis_cpu - cpu0) / n * 1e6:.0f} us of Redis CPU; "
        f"{memory / n:,.0f} bytes of memory held per reading stored ({memory / 2**20:,.0f} MiB)"
    )


if __name__ == "__main__":
    main()
