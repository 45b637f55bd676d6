"""The Redis live sink and the state store against a real redis-server: idempotence, retention,
and state that survives a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, cast

import orjson
import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.errors import StoreBehindError
from healthsync.fhir.patients import device_for
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.hourly import ProcessedByHour
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from healthsync.store.state import RedisStateStore
from healthsync.supervisor import Pipeline


def reading(rid: str, ts: float, hr: float = 70) -> Reading:
    return Reading(rid, "d1", "P-1", ts, ts, {"heart_rate": hr})


def sink_for(settings: Settings, redis: Redis, codec: Codec) -> RedisLiveSink:
    stats = StatsRecorder(settings.redis.keys, "processor")
    return RedisLiveSink(redis, settings.redis, stats, Records(codec))


def state_for(settings: Settings, redis: Redis, codec: Codec) -> RedisStateStore:
    stats = StatsRecorder(settings.redis.keys, "processor")
    return RedisStateStore(redis, Records(codec), stats)


def test_a_replayed_batch_changes_nothing(settings: Settings, redis: Redis, codec: Codec) -> None:
    sink, state = sink_for(settings, redis, codec), state_for(settings, redis, codec)
    now = time.time()
    batch = [reading("a", now - 2), reading("b", now - 1, hr=75)]
    fresh = state.filter_new([*batch, batch[0]])
    assert [r.reading_id for r in fresh] == ["a", "b"], "a duplicate inside a batch counts once"
    sink.write(Batch(fresh))
    sink.flush()

    assert state.filter_new(batch) == []
    keys = codec.keys
    assert redis.zcard(keys.history("P-1")) == 2
    latest = cast("bytes", redis.hget(keys.latest("P-1"), "heart_rate"))
    assert Records(codec).decode_latest("P-1", "heart_rate", latest)["value"] == 75


def test_the_latest_values_are_the_newest_of_the_batch(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    # Two readings of one patient in one batch, the newer one first (the network reordered
    # them): every latest field, NEWS2 parameter or not, comes from the newer reading.
    sink = sink_for(settings, redis, codec)
    now = time.time()
    older = Reading(
        "old", "d1", "P-1", now - 5, now, {"heart_rate": 70, "bp_sys": 120, "bp_dia": 70}
    )
    newer = Reading(
        "new", "d1", "P-1", now - 1, now, {"heart_rate": 90, "bp_sys": 110, "bp_dia": 80}
    )
    then = Reading("late", "d1", "P-1", now - 9, now, {"heart_rate": 60, "bp_dia": 60})
    sink.write(Batch([older, newer, then]))
    sink.flush()

    key = codec.keys.latest("P-1")
    records = Records(codec)
    latest = {
        name: records.decode_latest("P-1", name, cast("bytes", redis.hget(key, name)))
        for name in ("heart_rate", "bp_sys", "bp_dia")
    }
    assert {name: field["value"] for name, field in latest.items()} == {
        "heart_rate": 90,
        "bp_sys": 110,
        "bp_dia": 80,
    }
    assert {field["reading_id"] for field in latest.values()} == {"new"}


def test_stored_readings_are_counted_by_received_hour_once(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    sink, state = sink_for(settings, redis, codec), state_for(settings, redis, codec)
    hour = (time.time() // 3600 - 1) * 3600
    batch = [reading("a", hour + 10), reading("b", hour + 3599), reading("c", hour + 3600)]
    for _ in range(2):  # the second time, a replay after a crash: nothing is new
        sink.write(Batch(state.filter_new(batch)))
        sink.flush()
    counts = ProcessedByHour(redis, settings.redis.keys).per_hour(hour, hour + 7200)
    assert counts == {hour: 2, hour + 3600: 1}
    # A period ending part-way into an hour still reads that hour.
    assert ProcessedByHour(redis, settings.redis.keys).per_hour(hour, hour + 3600.5) == counts


def test_history_older_than_the_retention_is_trimmed(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    settings.redis.history_retention_s = 60
    sink = sink_for(settings, redis, codec)
    now = time.time()
    sink.write(Batch([reading("old", now - 3600), reading("new", now - 1)]))
    sink.flush()
    keys = codec.keys
    history = cast("list[bytes]", redis.zrange(keys.history("P-1"), 0, -1))
    opened = [codec.open(entry, keys.history("P-1")) for entry in history]
    assert [orjson.loads(entry)["id"] for entry in opened] == ["new"]
    assert redis.zrange(keys.seen("P-1"), 0, -1) == [b"new"]


def test_a_reading_measured_before_the_retention_is_still_seen_once_stored(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    """The seen set was scored, and trimmed, by measurement time: a wearable's backlog
    measured a day ago was forgotten as it was stored, and its replay or a resend went
    through the engine and the counts again."""
    sink, state = sink_for(settings, redis, codec), state_for(settings, redis, codec)
    now = time.time()
    late = Reading("late", "d1", "P-1", now - 25 * 3600, now - 1, {"heart_rate": 70})
    sink.write(Batch(state.filter_new([late])))
    sink.flush()
    assert state.filter_new([late]) == []


def test_news2_inputs_survive_a_restart(settings: Settings, redis: Redis, codec: Codec) -> None:
    sink = sink_for(settings, redis, codec)
    now = time.time()
    nurse = Reading("n", "nurse-1", "P-1", now, now, {}, None, True, "A")
    sink.write(Batch([reading("a", now - 5, hr=101), nurse]))
    sink.flush()
    observed = state_for(settings, redis, codec).load_observed(["P-1", "P-unknown"])
    assert observed["P-1"] == {
        "heart_rate": (101, now - 5, "a"),
        "on_oxygen": (True, now, "n"),
        "consciousness": ("A", now, "n"),
    }
    assert observed["P-unknown"] == {}


def test_an_offline_device_s_id_is_not_in_any_key_or_field(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    """`device_offline:<device>` names a device; Redis keeps it only sealed or pseudonymous."""
    now = time.time()
    alert = Alert(
        alert_id="0f0f",
        patient_id="P-OFF-1",
        kind="device_offline:mon-bed-12",
        vital=None,
        severity="warning",
        status="open",
        opened_at=now,
        updated_at=now,
        value=0,
        band="",
        reading_id="",
        category="technical",
        device_id="mon-bed-12",
    )
    batch = Batch([], alert_events=[AlertEvent("opened", alert)])
    batch.observations.append(("P-OFF-1", device_for("mon-bed-12", now)))
    for sink in (
        sink_for(settings, redis, codec),
        RedisFhirSink(redis, settings.redis, Records(codec)),
    ):
        sink.write(batch)
        sink.flush()
    names = [cast("bytes", k) for k in redis.scan_iter(f"{settings.redis.prefix}:*")]
    fields = [f for k in names if redis.type(k) == b"hash" for f in redis.hkeys(k)]
    members = [m for k in names if redis.type(k) == b"zset" for m in redis.zrange(k, 0, -1)]
    assert redis.hlen(codec.keys.open_alerts) == 1, "the alert is stored as open"
    leaked = [b for b in (*names, *fields, *members) if b"mon-bed-12" in b]
    assert leaked == []


def test_acknowledgements_go_once_their_alert_has_expired(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    now, keys, records = time.time(), codec.keys, Records(codec)

    def alert(alert_id: str, status: Literal["open", "resolved"]) -> AlertEvent:
        return AlertEvent(
            "opened" if status == "open" else "resolved",
            Alert(
                alert_id,
                "P-1",
                "threshold:heart_rate",
                "heart_rate",
                "warning",
                status,
                now,
                now,
                150,
                "50..130",
                "r1",
            ),
        )

    sink = sink_for(settings, redis, codec)
    sink.write(Batch([], alert_events=[alert("a-open", "open"), alert("a-over", "resolved")]))
    sink.flush()
    for alert_id in ("a-open", "a-over"):  # as the API records a clinician's acknowledgement
        ack = records.encode_ack(alert_id, {"by": "nurse@ward-3", "at": now})
        redis.hset(keys.acknowledged, alert_id, ack)
    redis.delete(keys.alert("a-over"))  # resolved a retention ago: expired

    sink = sink_for(settings, redis, codec)  # as after a restart: the alerts are trimmed at once
    sink.write(Batch([reading("r2", now)]))
    sink.flush()
    assert redis.hkeys(keys.acknowledged) == [b"a-open"]


def test_processors_storing_different_partitions_do_not_fail_each_others_batches(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    """Two processors on one Redis server, each with its own partition: a batch stored by
    one between the other's write and flush leaves the other's transaction standing (each
    watches its own partition's reach, not one record shared by all)."""
    topic, now = settings.kafka.vitals_topic, time.time()
    first = sink_for(settings, redis, codec)
    second = sink_for(settings, Redis.from_url(str(settings.redis.url)), codec)
    first.write(Batch([reading("a", now - 2)], positions={(topic, 0): (0, 1)}))
    other = Reading("b", "d2", "P-2", now - 1, now - 1, {"heart_rate": 80})
    second.write(Batch([other], positions={(topic, 1): (0, 1)}))
    second.flush()
    first.flush()  # raised WatchError while both reaches were one hash

    state = state_for(settings, redis, codec)
    assert state.filter_new([reading("a", now - 2), other]) == [], "both batches are stored"
    second.client.close()


def test_a_reach_recorded_in_the_one_hash_of_earlier_versions_still_counts(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    """A store written before each partition had its own record: the processor carries on
    from the reach recorded there, neither replaying the partition from its start nor
    missing a gap after it."""
    topic, now, keys = settings.kafka.vitals_topic, time.time(), codec.keys
    redis.hset(f"{keys.prefix}:offsets", mapping={f"{topic}:0": 10, f"{topic}:1": 7})
    sink = sink_for(settings, redis, codec)
    sink.write(Batch([reading("a", now - 2)], positions={(topic, 0): (10, 11)}))
    sink.flush()
    with pytest.raises(StoreBehindError) as behind:
        sink.write(Batch([reading("b", now - 1)], positions={(topic, 1): (9, 10)}))
    assert behind.value.positions == {(topic, 1): 7}, "replayed from the recorded reach"
    sink.write(Batch([reading("b", now - 1)], positions={(topic, 0): (11, 12)}))
    sink.flush()  # the partition's own record now: 12
    assert state_for(settings, redis, codec).filter_new([reading("b", now - 1)]) == []


def test_a_new_broker_leaves_no_recorded_reach_behind(
    settings: Settings, redis: Redis, codec: Codec, tmp_path: Path
) -> None:
    """After the embedded broker came back empty (offsets from 0 again), no record of the
    old broker's reach is left, the one hash of earlier versions included: a reach read
    from it would be taken for this partition's and hide a real gap."""
    topic, now, keys = settings.kafka.vitals_topic, time.time(), codec.keys
    redis.hset(keys.shared_offsets, f"{topic}:1", 5000)
    sink = sink_for(settings, redis, codec)
    sink.write(Batch([reading("a", now - 2)], positions={(topic, 0): (0, 40)}))
    sink.flush()

    Pipeline(settings, tmp_path).forget_offsets()
    with pytest.raises(StoreBehindError) as behind:  # the new broker's offsets 10-11
        sink.write(Batch([reading("b", now - 1)], positions={(topic, 1): (10, 11)}))
    assert behind.value.positions == {(topic, 1): 0}, "nothing of the new broker stored yet"
    assert [k for k in redis.scan_iter(f"{keys.prefix}:offsets*")] == []
