"""The CloudWatch exporter: two background threads, so a slow or absent CloudWatch
delays nothing but itself.

- the collector reads the pipeline's counters every ``interval_s`` and queues a
  batch (mode ``api``) or prints Embedded Metric Format lines (mode ``emf``);
- the sender drains the queue with PutMetricData and ships new log lines; when
  CloudWatch fails it backs off (up to the interval) and tries again, so what
  waited is sent once CloudWatch is back.

It runs inside ``healthsync scheduler`` when ``HEALTHSYNC_CLOUDWATCH_ENABLED``
is true. With several schedulers (one per application host) only one sends the
pipeline's metrics, which are the same wherever they are read: the one holding
``{p}:cloudwatch:leader`` (a TTL of three intervals, renewed each interval).
Every host ships its own logs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthsync.aws.cloudwatch import MetricQueue, PipelineMetrics, PutMetricDataSender, emf_lines
from healthsync.aws.cloudwatch_logs import LogShipper
from healthsync.config_services import CloudWatchSettings
from healthsync.errors import ConfigError

log = logging.getLogger(__name__)

_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class CloudWatchExporter:
    settings: CloudWatchSettings
    metrics: PipelineMetrics
    sender: PutMetricDataSender | None  # None in emf mode
    shipper: LogShipper | None
    emit: Callable[[str], None] = _print
    queue: MetricQueue = field(init=False)
    failures: int = 0
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = MetricQueue(self.settings.queue_size)

    def leads(self) -> bool:
        """Whether this exporter sends the metrics now: it holds or takes the leader key."""
        client, key = self.metrics.client, self.metrics.keys.cloudwatch_leader
        ttl_ms = max(1000, int(self.settings.interval_s * 3000))
        return bool(client.eval(_LEAD, 1, key, self.identity, ttl_ms))

    def collect_once(self) -> None:
        if not self.leads():
            return
        data = self.metrics.collect()
        if self.sender is None:
            for line in emf_lines(data, self.settings.namespace):
                self.emit(line)
        else:
            self.queue.put(data)

    def send_once(self) -> None:
        if self.sender is not None:
            self.sender.drain(self.queue)
        if self.shipper is not None:
            self.shipper.ship()

    def start(self) -> None:
        for name, target in (("collect", self._collect), ("send", self._send)):
            thread = threading.Thread(target=target, name=f"cloudwatch-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.ready.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.collect_once()
            except Exception as exc:  # noqa: BLE001 - a Redis hiccup skips one interval
                log.warning("metrics not collected", extra={"error": str(exc)})
            self._stop.wait(self.settings.interval_s)

    def _send(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.send_once()
            except Exception as exc:  # noqa: BLE001 - CloudWatch away: keep what waits, retry
                self.failures += 1
                log.warning("CloudWatch unavailable", extra={"error": type(exc).__name__})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.interval_s)
                continue
            backoff = 0.5
            # Woken early by a new batch; logs are shipped at least once an interval.
            self.queue.ready.wait(self.settings.interval_s)


def aws_client(service: str, region: str | None) -> Any:
    """A boto3 client that fails fast, so the sender's own retry loop decides."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "HEALTHSYNC_CLOUDWATCH_ENABLED needs boto3: pip install 'healthsync[aws]'"
        ) from None
    config = Config(connect_timeout=2, read_timeout=10, retries={"mode": "standard"})
    return boto3.client(service, region_name=region, config=config)


def build_exporter(
    settings: CloudWatchSettings, metrics: PipelineMetrics, log_dir: Path
) -> CloudWatchExporter:
    sender = None
    if settings.mode == "api":
        client = aws_client("cloudwatch", settings.aws_region)
        sender = PutMetricDataSender(client, settings.namespace)
    shipper = None
    if settings.ship_logs and settings.mode == "api":
        client = aws_client("logs", settings.aws_region)
        shipper = LogShipper(client, settings.log_dir or log_dir, settings.log_group_prefix)
    return CloudWatchExporter(settings, metrics, sender, shipper)
