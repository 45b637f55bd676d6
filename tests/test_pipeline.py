"""End to end through real processes: nc -> ingest -> Tansu -> processor -> Redis -> API."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from redis import Redis

from healthsync.config import Settings
from healthsync.fhir.observations import unbundled
from healthsync.kafka import make_consumer, make_producer
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.stack import Service, start_redis
from healthsync.supervisor import Pipeline
from tests.conftest import Device, make_settings, wait_for

LITERAL = "device_id=mon-0001 patient_id=P-1001 heart_rate=78, oxygen=95% temp=36.9"


def latest(api: httpx.Client, patient: str) -> dict[str, Any] | None:
    response = api.get(f"/v1/patients/{patient}/vitals/latest")
    return response.json() if response.status_code == 200 else None


def test_netcat_reading_is_acknowledged_and_served(pipeline: Pipeline, api: httpx.Client) -> None:
    cfg = pipeline.settings.ingest
    result = subprocess.run(
        ["nc", "-q1", cfg.host, str(cfg.port)],
        input=(LITERAL + "\n").encode(),
        capture_output=True,
        timeout=30,
        check=True,
    )
    reply = result.stdout.decode().strip()
    assert reply.startswith("OK "), reply
    reading_id = reply.split()[1]

    body = wait_for(lambda: latest(api, "P-1001"), what="the reading in the API")
    vitals = body["vitals"]
    assert vitals["heart_rate"]["value"] == 78
    assert vitals["spo2"]["value"] == 95
    assert vitals["temp"]["value"] == 36.9
    assert vitals["spo2"]["reading_id"] == reading_id

    patients = api.get("/v1/patients").json()["patients"]
    assert [p["patient_id"] for p in patients] == ["P-1001"]
    history = api.get("/v1/patients/P-1001/vitals", params={"vital": "spo2"}).json()
    assert [r["vitals"] for r in history["readings"]] == [{"spo2": 95.0}]


def test_low_spo2_opens_an_alert_and_normal_values_resolve_it(
    device: Device, api: httpx.Client
) -> None:
    # Measurement times a few seconds apart, as a monitor sends them: an alert opens once
    # low SpO2 persists (15 s) and resolves once it has been normal for 30 s.
    t = int(time.time()) - 120

    def send(seq: int, at: int, vitals: str) -> None:
        line = f"device_id=mon-7 patient_id=P-7 seq={seq} ts={t + at} {vitals}"
        assert device.send(line.encode()).startswith("OK")

    send(1, 0, "spo2=97 heart_rate=70")
    send(2, 5, "oxygen=85%")
    send(3, 20, "oxygen=85%")

    def alerts(status: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = api.get("/v1/alerts", params={"status": status}).json()[
            "alerts"
        ]
        return rows

    [alert] = wait_for(lambda: alerts("open"), what="an open SpO2 alert")
    assert (alert["patient_id"], alert["vital"], alert["value"]) == ("P-7", "spo2", 85)
    assert api.get("/v1/patients").json()["patients"][0]["open_alerts"] == 1

    ack = api.post(f"/v1/alerts/{alert['alert_id']}/ack")
    assert ack.status_code == 200 and ack.json()["acknowledged"] is True
    assert alerts("open")[0]["status"] == "open", "acknowledging must not close the alert"

    send(4, 25, "spo2=96")
    send(5, 30, "spo2=96")
    assert alerts("open"), "back to normal for 5 s only: still open"
    send(6, 60, "spo2=97")

    [done] = wait_for(lambda: alerts("resolved"), what="the alert to resolve")
    assert done["alert_id"] == alert["alert_id"]
    assert done["acknowledged"] is True
    assert alerts("open") == []


def test_bad_input_is_rejected_counted_and_the_connection_keeps_working(
    pipeline: Pipeline, device: Device, api: httpx.Client
) -> None:
    bad_lines = {
        b"\x00\xff\xfe garbage \x80": "ERR 400 invalid_utf8",
        b"device_id=mon-1 patient_id=P-1 heart_rate=\xc3\x28": "ERR 400 invalid_utf8",
        b"device_id=mon-1 patient_id=P-1 heart_rate=-5": "ERR 422 out_of_range",
        b"device_id=mon-1 patient_id=P-1 temp=1e308": "ERR 422 out_of_range",
        b"device_id=mon-1 patient_id=P-1 heart_rate=abc": "ERR 400 bad_value",
        b"device_id=mon-1 patient_id=P-1 colour=blue heart_rate=80": "ERR 400 unknown_key",
        b"patient_id=P-1 heart_rate=80": "ERR 400 missing_field",
        b"device_id=mon-1 heart_rate=80": "ERR 400 missing_field",
        b"device_id=mon-1 patient_id=P-1": "ERR 400 no_vitals",
        b'{"device_id": "mon-1", "patient_id": "P-1", "heart_rate": true}': "ERR 400 bad_value",
        b"{not json": "ERR 400 malformed",
    }
    for line, expected in bad_lines.items():
        reply = device.send(line)
        assert reply.startswith(expected), (line, reply)

    # A 1 MB line: rejected whole, without the server holding it in memory.
    assert device.send(b"device_id=mon-1 patient_id=P-1 heart_rate=" + b"9" * 1_000_000).startswith(
        "ERR 413 too_long"
    )

    reply = device.send(b"device_id=mon-1 patient_id=P-GOOD heart_rate=72")
    assert reply.startswith("OK "), reply
    wait_for(lambda: latest(api, "P-GOOD"), what="the valid reading after the bad ones")
    assert latest(api, "P-1") is None, "nothing from a rejected line may be stored"

    def rejected_by_reason() -> dict[str, float] | None:
        counts = {}
        for line in api.get("/metrics").text.splitlines():
            if line.startswith("healthsync_readings_rejected_total{"):
                reason = line.split('reason="')[1].split('"')[0]
                counts[reason] = float(line.rsplit(" ", 1)[1])
        return counts if sum(counts.values()) == len(bad_lines) + 1 else None

    counts = wait_for(rejected_by_reason, what="reject counters in /metrics")
    assert counts["out_of_range"] == 2 and counts["missing_field"] == 2 and counts["too_long"] == 1

    # Every rejected line is kept, with its reason, on the dead-letter topic.
    dead = read_topic(pipeline.settings, pipeline.settings.kafka.dlq_topic, len(bad_lines) + 1)
    reasons = [reply.split()[2] for reply in bad_lines.values()] + ["too_long"]
    assert sorted(r["reason"] for r in dead) == sorted(reasons)
    assert any("colour=blue" in r["line"] for r in dead)


def read_topic(
    settings: Settings, topic: str, count: int, unbundle: bool = False
) -> list[dict[str, Any]]:
    """Read `count` JSON records from every partition of a topic, without a consumer group.

    Values are opened with the settings' keyring, as the pipeline's own consumers do.
    With `unbundle`, a reading's Bundle counts as the Observations it carries.
    """
    codec = Codec.from_settings(settings)
    kafka = settings.kafka
    role = {
        kafka.vitals_topic: roles.VITALS,
        kafka.observations_topic: roles.OBSERVATIONS,
        kafka.alerts_topic: roles.ALERTS,
        kafka.dlq_topic: roles.DLQ,
    }[topic]
    consumer = make_consumer(settings.kafka, "test-reader")
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.kafka.partitions)]
    )
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while len(records) < count and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    value = codec.open_message(role, message.key(), message.value() or b"null")
                    record = orjson.loads(value)
                    records.extend(unbundled([record]) if unbundle else [record])
    finally:
        consumer.close()
    return records


def test_logs_carry_no_patient_data(pipeline: Pipeline, device: Device, api: httpx.Client) -> None:
    t = int(time.time()) - 30
    assert device.send(f"{LITERAL} ts={t}".encode()).startswith("OK ")
    # An SpO2 of 80 after 95 is held as a possible probe artefact until it has stood 15 s
    # (`desaturation_hold_s`), then opens a critical alert at once.
    for at in (5, 10, 15, 20):
        line = f"device_id=mon-0001 patient_id=P-1001 oxygen=80% ts={t + at}"
        assert device.send(line.encode()).startswith("OK ")
    assert device.send(b"device_id=mon-0001 patient_id=P-1001 hr=999").startswith("ERR")
    wait_for(lambda: api.get("/v1/alerts").json()["alerts"], what="the alert")
    logs = "".join(path.read_text() for path in pipeline.logs.glob("*.log"))
    assert "ingest listening" in logs
    assert "P-1001" not in logs and "mon-0001" not in logs


def test_api_errors_are_json(api: httpx.Client, device: Device) -> None:
    missing = api.get("/v1/patients/P-NOBODY/vitals/latest")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"status": 404, "message": "no vitals for patient P-NOBODY"}}
    bad = api.get("/v1/patients/P-1/vitals", params={"vital": "mood"})
    assert bad.status_code == 400 and "unknown vital" in bad.json()["error"]["message"]
    assert api.get("/v1/alerts", params={"status": "maybe"}).status_code == 422
    assert api.post("/v1/alerts/abc123/ack").status_code == 404
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"redis": "ok", "kafka": "ok"}


def test_metrics_show_throughput_and_latency(device: Device, api: httpx.Client) -> None:
    for seq in range(20):
        assert device.send(f"device_id=m-9 patient_id=P-9 seq={seq} hr=70".encode()).startswith(
            "OK"
        )

    def processed() -> str | None:
        text = api.get("/metrics").text
        # Latency is measured once the batch is visible, so it is published a moment later.
        done = "healthsync_end_to_end_latency_seconds_count 20.0" in text
        # Ingest adds its counts once a second, on a clock of its own.
        done = done and "healthsync_readings_accepted_total 20.0" in text
        return text if done and "healthsync_readings_processed_total 20.0" in text else None

    text = wait_for(processed, what="accepted, processed and latency counters")
    assert 'healthsync_end_to_end_latency_seconds_bucket{le="+Inf"} 20.0' in text
    assert "healthsync_consumer_lag" in text


def test_processor_killed_mid_stream_stores_every_acknowledged_reading_once(
    pipeline: Pipeline, device: Device, redis: Redis
) -> None:
    keys = Codec.from_settings(pipeline.settings).keys
    acknowledged: set[str] = set()
    patients = [f"P-{i}" for i in range(8)]

    def send(start: int, count: int) -> None:
        lines = []
        for seq in range(start, start + count):
            patient = patients[seq % len(patients)]
            line = f"device_id=dev-{patient} patient_id={patient} seq={seq} hr={60 + seq % 40}"
            lines.append(line.encode())
        for reply in device.send_many(lines):
            assert reply.startswith("OK "), reply
            acknowledged.add(reply.split()[1])

    def stored() -> int:
        return sum(int(redis.zcard(keys.seen(p))) for p in patients)

    send(0, 300)
    wait_for(lambda: stored() > 0, what="the processor to start storing")
    pipeline.children["process"].kill()
    send(300, 700)  # accepted by ingest while the processor is down
    pipeline.start_child("process")
    send(1000, 300)

    wait_for(lambda: stored() == len(acknowledged), timeout=60, what="every reading stored")
    seen: set[str] = set()
    history_entries = 0
    for patient in patients:
        members = cast("list[bytes]", redis.zrange(keys.seen(patient), 0, -1))
        seen.update(m.decode() for m in members)
        history_entries += int(redis.zcard(keys.history(patient)))
    assert seen == acknowledged
    assert history_entries == len(acknowledged), "a replayed reading was stored twice"
    time.sleep(1.0)  # a late duplicate write would show up here
    assert stored() == len(acknowledged)


def test_a_resent_reading_is_acknowledged_again_and_stored_once(
    pipeline: Pipeline, device: Device, api: httpx.Client, redis: Redis
) -> None:
    line = b"device_id=mon-5 patient_id=P-5 seq=41 hr=88 spo2=97"
    first, again = device.send(line), device.send(line)
    assert first.startswith("OK ") and first == again
    assert device.send(b"device_id=mon-5 patient_id=P-5 seq=42 hr=89").startswith("OK ")
    keys = Codec.from_settings(pipeline.settings).keys
    wait_for(lambda: redis.zcard(keys.seen("P-5")) == 2, what="both distinct readings")
    history = api.get("/v1/patients/P-5/vitals", params={"vital": "heart_rate"}).json()
    assert [r["vitals"]["heart_rate"] for r in history["readings"]] == [88, 89]


def test_a_value_on_the_topic_that_is_not_a_reading_is_set_aside(
    pipeline: Pipeline, device: Device, api: httpx.Client
) -> None:
    settings = pipeline.settings
    producer = make_producer(settings.kafka)
    producer.produce(settings.kafka.vitals_topic, b"\x00 not a reading", b"P-X")
    assert producer.flush(10) == 0
    assert device.send(b"device_id=mon-6 patient_id=P-6 hr=75").startswith("OK ")
    wait_for(lambda: latest(api, "P-6"), what="the reading after the poison value")
    [record] = read_topic(settings, settings.kafka.dlq_topic, 1)
    assert record["reason"] == "not_a_reading"
    assert record["value"].endswith("not a reading")


def test_a_sealed_reading_ingest_would_refuse_is_set_aside_and_the_partition_flows(
    pipeline: Pipeline, device: Device, api: httpx.Client
) -> None:
    # Sealed with the pipeline's keyring and keyed to the patient, as ingest writes:
    # only its contents are wrong. The anomaly engine raised on an infinite heart rate, and
    # formatting a time past any date raised OverflowError, on every retry of the batch,
    # so the partition's later readings were never stored.
    settings = pipeline.settings
    codec = Codec.from_settings(settings)
    key = codec.message_key("P-7")
    now = time.time()
    bad: list[dict[str, Any]] = [
        {"vitals": {"heart_rate": "inf"}},
        {"ts_epoch": 1e300},
        {"vitals": {"colour": 1.0}},
    ]
    producer = make_producer(settings.kafka)
    for n, changes in enumerate(bad):
        doc = {
            "reading_id": f"r-bad-{n}",
            "device_id": "mon-7",
            "patient_id": "P-7",
            "ts_epoch": now,
            "received_at": now,
            "vitals": {"heart_rate": 80.0},
            **changes,
        }
        value = codec.seal_message(roles.VITALS, key, orjson.dumps(doc))
        producer.produce(settings.kafka.vitals_topic, value, key)
    assert producer.flush(10) == 0
    assert device.send(b"device_id=mon-7 patient_id=P-7 hr=75").startswith("OK ")
    body = wait_for(lambda: latest(api, "P-7"), what="the reading after the refused ones")
    assert body["vitals"]["heart_rate"]["value"] == 75
    dead = read_topic(settings, settings.kafka.dlq_topic, len(bad))
    assert len(dead) == len(bad)
    details = sorted(record["detail"] for record in dead)
    assert all(record["reason"] == "not_a_reading" for record in dead)
    assert ["colour" in d for d in details].count(True) == 1
    assert ["heart_rate" in d for d in details].count(True) == 1
    assert ["ts_epoch" in d for d in details].count(True) == 1


def test_redis_outage_holds_the_partition_and_loses_nothing(
    broker: Service, tmp_path: Path
) -> None:
    own_redis = start_redis(log_dir=tmp_path)
    settings = make_settings(broker, own_redis, redis={"timeout_s": 1.0})
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start()
    client = Redis.from_url(str(settings.redis.url))
    keys = Codec.from_settings(settings).keys
    try:
        device = Device(settings.ingest.host, settings.ingest.port)

        def send(seqs: range) -> None:
            lines = [f"device_id=mon-8 patient_id=P-8 seq={seq} hr=70".encode() for seq in seqs]
            for reply in device.send_many(lines):
                assert reply.startswith("OK "), reply

        send(range(20))
        wait_for(lambda: client.zcard(keys.seen("P-8")) == 20, what="the first readings")
        own_redis.process.send_signal(signal.SIGSTOP)  # Redis stops answering
        try:
            send(range(20, 60))  # ingest does not need Redis: devices still get OK
            time.sleep(3)  # the processor's writes time out and are retried meanwhile
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        wait_for(
            lambda: client.zcard(keys.seen("P-8")) == 60, what="every reading after the outage"
        )
        assert client.zcard(keys.history("P-8")) == 60
        # Ingest's counts of the outage reach Redis once it answers again.
        wait_for(
            lambda: client.hget(keys.stats("ingest"), "readings_accepted_total") == b"60",
            what="ingest's count of all 60 readings",
        )
        metrics = httpx.get(f"http://127.0.0.1:{settings.api.port}/metrics").text
        sink_errors = [
            row for row in metrics.splitlines() if row.startswith("healthsync_sink_errors_total ")
        ]
        assert sink_errors and float(sink_errors[0].split()[1]) >= 1, "the outage was noticed"
        device.close()
    finally:
        client.close()
        pipeline.stop()
        own_redis.stop()


def test_news2_is_served_with_each_patient(device: Device, api: httpx.Client) -> None:
    monitor = "device_id=mon-3 patient_id=P-3 rr=22 spo2=95 bp=105/70 hr=95 temp=38.4 on_o2=no"
    assert device.send(monitor.encode()).startswith("OK ")
    # A nurse's observation arrives from another device: the score combines both.
    assert device.send(b"device_id=nurse-1 patient_id=P-3 rr=22 consciousness=V").startswith("OK ")

    def scored() -> dict[str, Any] | None:
        body = latest(api, "P-3")
        news2 = body["news2"] if body else None
        return news2 if news2 and news2["complete"] else None

    news2 = wait_for(scored, what="a complete NEWS2")
    # rr 22 -> 2, SpO2 95 -> 1, air -> 0, systolic 105 -> 1, pulse 95 -> 1, V -> 3, 38.4 -> 1
    assert (news2["total"], news2["band"]) == (9, "high")
    listed = api.get("/v1/patients").json()["patients"][0]
    assert listed["news2"]["total"] == 9
    assert listed["vitals"]["consciousness"]["value"] == "V"
