"""`up` with several processors (`processor.processes`): they share the partitions of the
vitals topic in one consumer group, and every reading is stored once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from redis import Redis

from healthsync.config import ProcessorSettings, Settings
from healthsync.errors import ConfigError
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Device, make_settings, wait_for
from tests.test_durability import Sender, history_entries, stored_ids


def owned(log: Path) -> set[int]:
    """The partitions a processor owns now, by its log (cooperative: assignments add up)."""
    partitions: set[int] = set()
    for line in log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("msg") == "partitions assigned":
            partitions |= set(entry["partitions"])
        elif entry.get("msg") == "partitions revoked":
            partitions -= set(entry["partitions"])
    return partitions


def test_two_processors_share_the_partitions_and_store_each_reading_once(
    broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    settings = make_settings(broker, redis_server, processor={"processes": 2})
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start(stages=("ingest", "process"))
    client = Redis.from_url(str(settings.redis.url))
    keys = Codec.from_settings(settings).keys
    try:
        processors = [c for c in pipeline.children.values() if c.stage == "process"]
        assert sorted(c.name for c in processors) == ["process", "process-2"]
        logs = [pipeline.logs / f"{c.name}.log" for c in processors]

        def shared() -> bool:
            first, second = (owned(log) for log in logs)
            return bool(first and second) and first | second == {0, 1, 2} and not first & second

        wait_for(shared, timeout=60, what="both processors to own partitions of their own")

        sender = Sender(Device(settings.ingest.host, settings.ingest.port))
        sender.send(range(300))
        sender.device.close()
        wait_for(
            lambda: stored_ids(client, keys) == sender.acknowledged,
            timeout=60,
            what="every acknowledged reading in Redis",
        )
        assert len(sender.acknowledged) == 300
        assert history_entries(client, keys) == 300, "a reading was stored twice"
        assert all(c.alive for c in processors), "a processor died"
    finally:
        client.close()
        pipeline.stop()


def test_more_processors_than_partitions_is_refused_before_anything_starts(
    broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    settings = make_settings(broker, redis_server, processor={"processes": 4})
    pipeline = Pipeline(settings, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"processor\.processes is 4 but kafka\.partitions is 3"):
        pipeline.start(stages=("ingest", "process"))
    assert pipeline.children == {}, "nothing was started"


def test_the_default_is_two_processors_and_no_more_than_the_partitions(
    broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    """Two on a machine of two cores or more (docs/SCALE.md); a topic of one partition,
    which a second processor could not share, starts one rather than refusing to start."""
    assert Settings().processor.processes == min(2, os.cpu_count() or 1)
    settings = make_settings(broker, redis_server, kafka={"partitions": 1})
    settings.processor = ProcessorSettings(group_id=settings.processor.group_id)  # unset
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start(stages=("process",))
    try:
        assert [c.name for c in pipeline.children.values() if c.stage == "process"] == ["process"]
    finally:
        pipeline.stop()
