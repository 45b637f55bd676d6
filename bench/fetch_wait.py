"""What the consumer's ``fetch.wait.max.ms`` costs and buys against the embedded broker.

Starts a private Tansu broker (memory storage, as ``healthsync up`` runs it) and,
for each wait in ``--waits``, prints two figures:

- latency on a quiet partition: one message every ``--interval`` seconds to an
  idle topic, read by one consumer per wait at once; p50 and p99 of the delay
  from produce to consume. If the broker answers a waiting fetch as soon as data
  arrives, a longer wait costs nothing here.
- draining a backlog: ``--backlog`` messages, one per record batch (the way
  ingest's acknowledged writes reach the broker at a ward's pace), read from
  offset 0 by a fresh consumer; how many it got and in how long (at most
  ``--drain-timeout`` seconds).

    .venv/bin/python bench/fetch_wait.py [--waits 10 50 100 250] [--backlog 40000]

Each consumer sets ``fetch.min.bytes`` to ``--min-bytes`` (librdkafka's default 1).
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from healthsync.stack import start_broker


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def new_topic(bootstrap: str) -> str:
    topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    return topic


def consumer(bootstrap: str, topic: str, wait_ms: int, min_bytes: int) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fetch-wait-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": wait_ms,
            "fetch.min.bytes": min_bytes,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    return c


def quiet_latency(
    bootstrap: str, waits: list[int], min_bytes: int, count: int, interval: float
) -> dict[int, list[float]]:
    topic = new_topic(bootstrap)
    delays: dict[int, list[float]] = {wait: [] for wait in waits}
    done = threading.Event()

    def read(wait: int) -> None:
        c = consumer(bootstrap, topic, wait, min_bytes)
        try:
            while not done.is_set() or len(delays[wait]) < count:
                # poll, not consume(n): consume waits for n messages or its timeout.
                message = c.poll(0.5)
                if message is not None and message.error() is None:
                    (sent,) = struct.unpack("!d", message.value() or b"")
                    delays[wait].append(time.time() - sent)
                if done.is_set() and time.monotonic() > deadline:
                    break
        finally:
            c.close()

    deadline = float("inf")
    readers = [threading.Thread(target=read, args=(wait,)) for wait in waits]
    for reader in readers:
        reader.start()
    time.sleep(3.0)  # every consumer has its assignment and is polling an idle partition
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    for _ in range(count):
        producer.produce(topic, value=struct.pack("!d", time.time()))
        producer.flush(10)
        time.sleep(interval)
    deadline = time.monotonic() + 5.0
    done.set()
    for reader in readers:
        reader.join()
    return delays


def drain(bootstrap: str, waits: list[int], min_bytes: int, backlog: int, timeout: float) -> None:
    topic = new_topic(bootstrap)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1, "acks": "all"}
    )
    value = os.urandom(300)
    for _ in range(backlog):
        producer.produce(topic, value=value)
        producer.poll(0)
    producer.flush(60)
    for wait in waits:
        c = consumer(bootstrap, topic, wait, min_bytes)
        got, started = 0, time.monotonic()
        while got < backlog and time.monotonic() - started < timeout:
            got += sum(1 for m in c.consume(1000, 0.5) if m.error() is None)
        c.close()
        elapsed = time.monotonic() - started
        print(f"  fetch.wait.max.ms={wait:>4}: {got:>6} of {backlog} in {elapsed:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=int, nargs="+", default=[10, 50, 100, 250])
    parser.add_argument("--min-bytes", type=int, default=1)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--drain-timeout", type=float, default=15.0)
    args = parser.parse_args()
    broker = start_broker(log_dir=Path(tempfile.mkdtemp(prefix="fetch-wait-")))
    try:
        bootstrap = f"{broker.host}:{broker.port}"
        print(f"fetch.min.bytes={args.min_bytes}")
        print(f"quiet partition, one message every {args.interval * 1000:.0f} ms:")
        delays = quiet_latency(bootstrap, args.waits, args.min_bytes, args.messages, args.interval)
        for wait in args.waits:
            ms = [d * 1000 for d in delays[wait]]
            p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
            print(
                f"  fetch.wait.max.ms={wait:>4}: {len(ms)} messages, "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
        print(f"backlog of {args.backlog}, one message per record batch, from offset 0:")
        drain(bootstrap, args.waits, args.min_bytes, args.backlog, args.drain_timeout)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
