"""CloudWatch metrics and logs against moto, from a real pipeline's counters in Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from redis import Redis

from healthsync.aws.cloudwatch import (
    Datum,
    MetricQueue,
    PipelineMetrics,
    PutMetricDataSender,
    emf_lines,
)
from healthsync.aws.cloudwatch_logs import LogShipper, batches, event_for
from healthsync.aws.exporter import CloudWatchExporter, build_exporter
from healthsync.config import Settings
from healthsync.config_services import CloudWatchSettings
from healthsync.metrics import StatsRecorder
from healthsync.store.runs import RunRecord, RunStore
from healthsync.supervisor import Pipeline
from tests.aws.conftest import MotoServer
from tests.conftest import Device, wait_for


def statistic(cw: Any, namespace: str, name: str, **dims: str) -> float:
    """The Sum of a metric over the last hour (0 when nothing arrived)."""
    now = datetime.now(UTC)
    answer = cw.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(minutes=5),
        Period=3600,
        Statistics=["Sum", "Maximum"],
    )
    return float(sum(p["Sum"] for p in answer["Datapoints"]))


def maximum(cw: Any, namespace: str, name: str, **dims: str) -> float | None:
    now = datetime.now(UTC)
    answer = cw.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(minutes=5),
        Period=3600,
        Statistics=["Maximum"],
    )
    points = answer["Datapoints"]
    return max(p["Maximum"] for p in points) if points else None


def namespace() -> str:
    # Each test its own namespace: moto's server keeps what every test sent.
    return f"HealthSync-{uuid.uuid4().hex[:8]}"


def cw_settings(ns: str, log_dir: Path, interval: float = 0.3) -> CloudWatchSettings:
    return CloudWatchSettings(
        enabled=True,
        interval_s=interval,
        namespace=ns,
        log_group_prefix=f"/{ns}",
        log_dir=log_dir,
    )


def test_counters_become_per_interval_metrics(
    settings: Settings, redis: Redis, aws: MotoServer
) -> None:
    keys = settings.redis.keys
    runs = RunStore(redis, keys)
    metrics = PipelineMetrics(redis, keys, runs)
    ingest, processor = StatsRecorder(keys, "ingest"), StatsRecorder(keys, "processor")

    def flush(*recorders: StatsRecorder) -> None:
        pipe = redis.pipeline()
        for recorder in recorders:
            recorder.add_to(pipe)
        pipe.execute()

    ingest.inc("readings_accepted_total", 100)
    flush(ingest)
    first = {d.name for d in metrics.collect()}
    assert "ReadingsIngested" not in first  # the first look sets the baseline
    ingest.inc("readings_accepted_total", 7)
    ingest.inc("readings_rejected_total", 2, reason="out_of_range")
    ingest.inc("readings_rejected_total", 1, reason="bad_value")
    processor.inc("readings_processed_total", 5)
    processor.gauge("consumer_lag", 4, partition="0")
    processor.gauge("consumer_lag", 6, partition="1")
    processor.observe_latencies([0.004] * 98 + [0.3, 3.0])
    flush(ingest, processor)
    redis.hset(keys.open_alerts, mapping={"a|news2": "x", "b|news2": "y"})
    runs.save(
        RunRecord("f-1", "trends", "failed", "local", "schedule", 1.0, finished_at=time.time())
    )
    data = {(d.name, d.dimensions): d for d in metrics.collect()}
    values = {name: datum.value for (name, _), datum in data.items()}
    assert values == {
        "ReadingsIngested": 7,
        "ReadingsRejected": 3,
        "ReadingsProcessed": 5,
        "ConsumerLag": 10,
        "OpenAlerts": 2,
        "EndToEndLatencyP99": 0.5,  # 99 of 100 samples are at or under the 0.5 s bucket
        "JobFailures": 1,
    }
    assert data[("JobFailures", (("Stage", "jobs"), ("Job", "trends")))].value == 1
    assert data[("JobFailures", (("Stage", "jobs"),))].value == 1
    assert data[("ReadingsIngested", (("Stage", "ingest"),))].unit == "Count"
    # Nothing new: counters report zero rather than going silent, the failure is not repeated.
    again = {d.name: d.value for d in metrics.collect()}
    assert again["ReadingsIngested"] == 0 and again["JobFailures"] == 0


def test_batches_keep_within_the_api_limit_and_all_arrive(aws: MotoServer) -> None:
    ns = namespace()
    cw = boto3.client("cloudwatch")
    sent: list[int] = []

    class Counting:
        def put_metric_data(self, **call: Any) -> None:
            sent.append(len(call["MetricData"]))
            cw.put_metric_data(**call)

    now = time.time()
    batch = [
        Datum("ReadingsIngested", 1.0, "Count", (("Stage", "ingest"),), now) for _ in range(2500)
    ]
    queue = MetricQueue(10)
    queue.put(batch)
    PutMetricDataSender(Counting(), ns).drain(queue)
    assert sent == [1000, 1000, 500]
    assert len(queue) == 0
    assert statistic(cw, ns, "ReadingsIngested", Stage="ingest") == 2500


def test_emf_lines_carry_one_set_of_dimension_values_each() -> None:
    now = 1_800_000_000.0
    data = [
        Datum("ReadingsIngested", 7, "Count", (("Stage", "ingest"),), now),
        Datum("ReadingsRejected", 3, "Count", (("Stage", "ingest"),), now),
        Datum("JobFailures", 1, "Count", (("Stage", "jobs"), ("Job", "trends")), now),
    ]
    import json

    lines = [json.loads(line) for line in emf_lines(data, "HealthSync")]
    assert lines[0]["Stage"] == "ingest" and lines[0]["ReadingsIngested"] == 7
    assert lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Stage"]]
    assert lines[0]["_aws"]["Timestamp"] == 1_800_000_000_000
    assert (lines[1]["Stage"], lines[1]["Job"], lines[1]["JobFailures"]) == ("jobs", "trends", 1)


def test_log_batches_keep_within_the_api_limits() -> None:
    big = "x" * 200_000
    events = [
        event_for(f'{{"ts":"2026-11-30T10:00:{i % 60:02d}.000Z","msg":"{big}"}}', 0)
        for i in range(12)
    ]
    parts = batches([e for e in events if e is not None])
    assert [len(p) for p in parts] == [5, 5, 2]
    assert all(sum(e.size for e in p) <= 1_048_576 for p in parts)
    assert all(p == sorted(p, key=lambda e: e.timestamp) for p in parts)
    many = [event_for('{"msg":"ok"}', i) for i in range(25_000)]
    assert [len(p) for p in batches([e for e in many if e is not None])] == [10_000, 10_000, 5_000]
    assert event_for('{"level":"debug","msg":"P-1 hr=80"}', 0) is None


def send_readings(pipeline: Pipeline, patients: list[str], count: int) -> None:
    cfg = pipeline.settings.ingest
    device = Device(cfg.host, cfg.port)
    try:
        for i in range(count):
            patient = patients[i % len(patients)]
            line = f"device_id=cw-dev-{i % 3} patient_id={patient} seq={i} heart_rate=71 temp=36.87"
            assert device.send(line.encode()).startswith("OK "), line
        for _ in range(2):
            reply = device.send(
                f"device_id=cw-dev-0 patient_id={patients[0]} heart_rate=-5".encode()
            )
            assert reply.startswith("ERR 422")
    finally:
        device.close()


def processed(redis: Redis, settings: Settings) -> float:
    raw = redis.hget(settings.redis.keys.stats("processor"), "readings_processed_total")
    return float(raw or 0)


@pytest.fixture
def exporter(pipeline: Pipeline, redis: Redis, aws: MotoServer) -> Iterator[CloudWatchExporter]:
    settings = pipeline.settings
    runs = RunStore(redis, settings.redis.keys)
    metrics = PipelineMetrics(redis, settings.redis.keys, runs)
    running = build_exporter(cw_settings(namespace(), pipeline.logs), metrics, pipeline.logs)
    running.collect_once()  # the baseline, before any reading
    running.start()
    yield running
    running.stop()


def test_metrics_and_logs_arrive_and_carry_no_phi(
    pipeline: Pipeline, redis: Redis, exporter: CloudWatchExporter
) -> None:
    ns = exporter.settings.namespace
    cw, logs = boto3.client("cloudwatch"), boto3.client("logs")
    patients = [f"PHI-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    send_readings(pipeline, patients, 30)
    wait_for(lambda: processed(redis, pipeline.settings) >= 30, what="the readings processed")
    wait_for(
        lambda: statistic(cw, ns, "ReadingsProcessed", Stage="processor") == 30,
        what="ReadingsProcessed in CloudWatch",
    )
    # Ingest adds its counts to Redis once a second, so they can come an interval later.
    wait_for(
        lambda: (
            (
                statistic(cw, ns, "ReadingsIngested", Stage="ingest"),
                statistic(cw, ns, "ReadingsRejected", Stage="ingest"),
            )
            == (30, 2)
        ),
        what="30 readings ingested and 2 rejected in CloudWatch",
    )
    # Latencies are counted after the batch is stored, so they reach Redis a flush later.
    p99 = wait_for(
        lambda: maximum(cw, ns, "EndToEndLatencyP99", Stage="processor"), what="the p99 latency"
    )
    assert 0 < p99 <= 10
    # The stages' logs, by stage, and filterable.
    group = f"/{ns}/ingest"
    found = wait_for(
        lambda: logs.filter_log_events(logGroupName=group, filterPattern="listening")["events"],
        what="the ingest log in CloudWatch Logs",
    )
    assert "ingest listening" in found[0]["message"]
    # No patient id or value in any log event or metric dimension.
    shipped = []
    for g in logs.describe_log_groups(logGroupNamePrefix=f"/{ns}/")["logGroups"]:
        shipped += [
            e["message"] for e in logs.filter_log_events(logGroupName=g["logGroupName"])["events"]
        ]
    dimensions = [
        d["Value"] for m in cw.list_metrics(Namespace=ns)["Metrics"] for d in m["Dimensions"]
    ]
    assert shipped and dimensions
    for text in shipped + dimensions:
        for secret in [*patients, "36.87"]:
            assert secret not in text


def test_a_cloudwatch_outage_slows_nothing_and_the_metrics_follow_later(
    pipeline: Pipeline, redis: Redis, aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    outage.start()
    host, port = outage.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    settings = pipeline.settings
    ns = namespace()
    metrics = PipelineMetrics(redis, settings.redis.keys, RunStore(redis, settings.redis.keys))
    running = build_exporter(cw_settings(ns, pipeline.logs), metrics, pipeline.logs)
    running.collect_once()
    running.start()
    try:
        outage.stop()  # CloudWatch is away
        send_readings(pipeline, [f"PHI-{uuid.uuid4().hex[:8]}"], 40)
        # Every reading was acknowledged (above) and processed, as without CloudWatch.
        wait_for(lambda: processed(redis, settings) >= 40, what="the readings processed")
        wait_for(lambda: running.failures > 0 and len(running.queue) > 0, what="batches waiting")
        back = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        back.start()
        try:
            cw = boto3.client("cloudwatch")
            wait_for(
                lambda: statistic(cw, ns, "ReadingsProcessed", Stage="processor") == 40,
                what="the metrics sent once CloudWatch is back",
            )
            wait_for(
                lambda: statistic(cw, ns, "ReadingsIngested", Stage="ingest") == 40,
                what="ReadingsIngested sent once CloudWatch is back",
            )
        finally:
            running.stop()
            back.stop()
    finally:
        running.stop()


def test_shipping_resumes_where_it_stopped(aws: MotoServer, tmp_path: Path) -> None:
    ns = namespace()
    logs = boto3.client("logs")
    path = tmp_path / "api.log"
    path.write_text('{"ts":"2026-11-30T10:00:00.000Z","level":"info","msg":"one"}\n')
    LogShipper(logs, tmp_path, f"/{ns}").ship()
    with path.open("a") as f:
        f.write('{"ts":"2026-11-30T10:00:01.000Z","level":"info","msg":"two"}\n{"partial')
    LogShipper(logs, tmp_path, f"/{ns}").ship()  # a restarted shipper
    events = logs.filter_log_events(logGroupName=f"/{ns}/api")["events"]
    assert [e["message"].split('"msg":"')[1].split('"')[0] for e in events] == ["one", "two"]


def test_each_ingest_replica_ships_to_the_ingest_group_in_its_own_stream(
    aws: MotoServer, tmp_path: Path
) -> None:
    ns = namespace()
    logs = boto3.client("logs")
    for replica in (1, 2):
        line = f'{{"ts":"2026-11-30T10:00:0{replica}.000Z","level":"info","msg":"r{replica}"}}\n'
        (tmp_path / f"ingest-{replica}.log").write_text(line)
    (tmp_path / "ingest-front.log").write_text('{"msg":"not a replica"}\n')
    LogShipper(logs, tmp_path, f"/{ns}", stream="host").ship()
    streams = logs.describe_log_streams(logGroupName=f"/{ns}/ingest")["logStreams"]
    assert sorted(s["logStreamName"] for s in streams) == ["host/1", "host/2"]
    events = logs.filter_log_events(logGroupName=f"/{ns}/ingest")["events"]
    assert sorted(e["message"].split('"msg":"')[1].split('"')[0] for e in events) == ["r1", "r2"]


def test_of_several_exporters_one_sends_the_pipeline_metrics(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    keys = settings.redis.keys
    sent: list[tuple[str, str]] = []

    def exporter(name: str) -> CloudWatchExporter:
        metrics = PipelineMetrics(redis, keys, RunStore(redis, keys))
        made = CloudWatchExporter(
            cw_settings("HealthSync", tmp_path, interval=60),
            metrics,
            None,
            None,
            lambda line: sent.append((name, line)),
        )
        made.identity = name
        return made

    first, second = exporter("host-a"), exporter("host-b")
    for _ in range(3):
        first.collect_once()
        second.collect_once()
    assert sent and {name for name, _ in sent} == {"host-a"}
    redis.delete(keys.cloudwatch_leader)  # host-a went away and its key expired
    sent.clear()
    second.collect_once()
    first.collect_once()
    assert sent and {name for name, _ in sent} == {"host-b"}
