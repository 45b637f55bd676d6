"""What the consumer's ``fetch.wait.max.ms`` costs and buys against the embedded broker.

Starts a private Tansu broker (memory storage, as ``healthsync up`` runs it) and,
for each wait in ``--waits``, prints three figures:

- latency on a quiet partition: one message every ``--interval`` seconds to an
  idle topic, read by one consumer per wait at once; p50 and p99 of the delay
  from produce to consume. If the broker answers a waiting fetch as soon as data
  arrives, a longer wait costs nothing here.
- latency under a steady flow: ``--flow-rate`` messages/s over ``--flow-partitions``
  partitions, produced as ingest produces (its linger, lz4, ``acks=all``) and read
  by a consumer that works ``--flow-work`` ms on each batch it gets, as the processor
  does; p50 and p99 of the delay from produce to consume. This is the processor's
  case at 1,000 readings/s, and where the broker's answer to a waiting fetch shows.
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

from healthsync.kafka import LINGER_MS
from healthsync.stack import start_broker


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def new_topic(bootstrap: str) -> str:
    topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    return topic


def consumer(
    bootstrap: str, topic: str, wait_ms: int, min_bytes: int, partitions: int = 1
) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fetch-wait-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": wait_ms,
            "fetch.min.bytes": min_bytes,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
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


def paced(bootstrap: str, topic: str, rate: float, done: threading.Event) -> None:
    """Produce `rate` messages/s to `topic` as ingest does, until `done`."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": LINGER_MS,
            "compression.type": "lz4",
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    started, sent = time.monotonic(), 0
    while not done.is_set():
        sent += 1
        value = struct.pack("!d", time.time()) + bytes(300)
        producer.produce(topic, value=value, key=str(sent % 300).encode())
        producer.poll(0)
        ahead = started + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(10)


def steady_flow(bootstrap: str, wait: int, args: argparse.Namespace) -> list[float]:
    """Delays (ms) from produce to consume under a paced flow, read with `wait`."""
    seconds, counted_from = 12.0, 3.0
    topic = f"fetch-flow-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, args.flow_partitions, 1)])[topic].result(15)
    c = consumer(bootstrap, topic, wait, args.min_bytes, args.flow_partitions)
    done = threading.Event()
    sender = threading.Thread(target=paced, args=(bootstrap, topic, args.flow_rate, done))
    sender.start()
    delays: list[float] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            batch = c.consume(2000, 0.02)
            now = time.time()
            if time.monotonic() - started >= counted_from:
                delays += [
                    (now - struct.unpack("!d", (m.value() or b"")[:8])[0]) * 1000
                    for m in batch
                    if m.error() is None
                ]
            if batch:
                busy_until = time.perf_counter() + args.flow_work / 1000
                while time.perf_counter() < busy_until:
                    pass  # holds the interpreter, as the processor's own work does
    finally:
        done.set()
        sender.join()
        c.close()
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
    parser.add_argument("--flow-rate", type=float, default=1000.0)
    parser.add_argument("--flow-partitions", type=int, default=6)
    parser.add_argument("--flow-work", type=float, default=50.0)
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
        print(
            f"steady flow, {args.flow_rate:.0f} messages/s over {args.flow_partitions} "
            f"partitions (linger {LINGER_MS} ms), {args.flow_work:.0f} ms of work per batch read:"
        )
        for wait in args.waits:
            ms = steady_flow(bootstrap, wait, args)
            print(
                f"  fetch.wait.max.ms={wait:>4}: {len(ms)} messages, "
                f"p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms"
            )
        print(f"backlog of {args.backlog}, one message per record batch, from offset 0:")
        drain(bootstrap, args.waits, args.min_bytes, args.backlog, args.drain_timeout)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
