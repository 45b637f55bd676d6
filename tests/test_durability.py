"""Redis that dies and comes back: nothing acknowledged goes missing, nothing is stored twice."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import cast

from redis import Redis

from healthsync.names import RedisKeys
from healthsync.security.codec import Codec
from healthsync.stack import RedisDisk, Service, start_redis
from healthsync.supervisor import Pipeline
from tests.conftest import Device, make_settings, wait_for
from tests.live_stack import Load, live_stack

PATIENTS = [f"P-{i}" for i in range(6)]


class Sender:
    """One device connection that remembers every reading id it got OK for.

    It sends `at_once` lines before reading their replies, as a device with a backlog
    does: a reply waits for the producer's linger, so one line at a time gets only about
    ten readings a second through.
    """

    def __init__(self, device: Device, patients: list[str] = PATIENTS, at_once: int = 50) -> None:
        self.device = device
        self.patients = patients
        self.at_once = at_once
        self.acknowledged: set[str] = set()

    def send(self, seqs: range) -> None:
        for start in range(seqs.start, seqs.stop, self.at_once):
            lines = []
            for seq in range(start, min(start + self.at_once, seqs.stop)):
                patient = self.patients[seq % len(self.patients)]
                hr = 60 + seq % 40
                lines.append(f"device_id=dev-{patient} patient_id={patient} seq={seq} hr={hr}")
            for reply in self.device.send_many([line.encode() for line in lines]):
                assert reply.startswith("OK "), reply
                self.acknowledged.add(reply.split()[1])


def stored_ids(client: Redis, keys: RedisKeys) -> set[str]:
    found: set[str] = set()
    for patient in PATIENTS:
        found.update(
            m.decode() for m in cast("list[bytes]", client.zrange(keys.seen(patient), 0, -1))
        )
    return found


def history_entries(client: Redis, keys: RedisKeys) -> int:
    return sum(int(client.zcard(keys.history(p))) for p in PATIENTS)


def test_redis_back_without_its_last_writes_is_refilled_from_kafka(
    broker: Service, tmp_path: Path
) -> None:
    """Redis restarts from an older state than the processor committed: the gap is replayed.

    A snapshot taken mid-run and a kill -9 make the loss certain; with AOF
    `everysec` the same happens to at most the last second.
    """
    own_redis = start_redis(log_dir=tmp_path, disk=RedisDisk(tmp_path / "redis", None))
    settings = make_settings(broker, own_redis)
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start(stages=("ingest", "process"))
    client = Redis.from_url(str(settings.redis.url))
    keys = Codec.from_settings(settings).keys
    try:
        sender = Sender(Device(settings.ingest.host, settings.ingest.port))
        sender.send(range(0, 200))
        wait_for(lambda: len(stored_ids(client, keys)) == 200, what="the first readings")
        client.save()  # what Redis will come back with
        sender.send(range(200, 400))
        wait_for(lambda: len(stored_ids(client, keys)) == 400, what="readings after the snapshot")

        own_redis.process.send_signal(signal.SIGKILL)
        own_redis.process.wait()
        own_redis.restart()
        assert len(stored_ids(client, keys)) == 200, "Redis came back without the last 200"

        sender.send(range(400, 500))
        wait_for(
            lambda: stored_ids(client, keys) == sender.acknowledged,
            timeout=60,
            what="every acknowledged reading in Redis again",
        )
        assert history_entries(client, keys) == 500, "a replayed reading was stored twice"
        replays = client.hget(keys.stats("processor"), "store_replays_total")
        assert replays is not None and int(replays) >= 1
        sender.device.close()
    finally:
        client.close()
        pipeline.stop()
        own_redis.stop()


def test_up_restarts_a_killed_redis_and_keeps_every_acknowledged_reading_once(
    tmp_path: Path,
) -> None:
    patients = [f"P-{i}" for i in range(4)]
    with live_stack(tmp_path) as stack, Load(stack, patients) as load:
        load.sent(300)
        stack.kill(r"redis-server")
        load.sent(300)  # ingest needs no Redis: devices carry on meanwhile
        client = stack.redis()
        keys = stack.keys()
        try:
            load.__exit__()
            wait_for(
                lambda: (
                    {
                        m.decode()
                        for p in patients
                        for m in cast("list[bytes]", client.zrange(keys.seen(p), 0, -1))
                    }
                    == load.acknowledged
                ),
                timeout=90,
                what="every acknowledged reading in the restarted Redis",
            )
            stored = sum(int(client.zcard(keys.history(p))) for p in patients)
            assert stored == len(load.acknowledged), "a reading was stored twice"
        finally:
            client.close()
    assert "redis exited with code -9; restart 1" in stack.output
