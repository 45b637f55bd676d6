"""Stage logs to CloudWatch Logs: ``<run dir>/logs/<stage>.log`` -> ``/healthsync/<stage>``.

The stages write JSON lines to their log files as always (see
:mod:`healthsync.logs`); the shipper reads what is new in each file and sends
it with PutLogEvents to the log group ``<prefix>/<stage>``, stream = this
host's name, creating group and stream when missing. Batches keep within the
API's limits: at most 10,000 events and 1,048,576 bytes (each event's UTF-8
size plus 26), events of at most 256 KB, in time order, spanning under 24 h.

A file's offset advances only once CloudWatch took what it read, and is kept
in ``.cloudwatch-offsets.json`` beside the logs: a CloudWatch outage or a
restart loses no line (a failure part way through a file repeats the batches
of it already sent). A file that shrank (rotated) is read from its start.

DEBUG records are never shipped: the rule that keeps patient identifiers and
values out of logs holds at INFO and above only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
MAX_SPAN_MS = 24 * 3600 * 1000 - 1
STAGES = ("ingest", "process", "api", "push", "archive", "scheduler")
_OFFSETS = ".cloudwatch-offsets.json"


@dataclass(frozen=True, slots=True)
class Event:
    timestamp: int  # ms
    message: str

    @property
    def size(self) -> int:
        return len(self.message.encode()) + EVENT_OVERHEAD


def event_for(line: str, fallback_ms: int) -> Event | None:
    """The log event for one line of a stage's log, or None for a DEBUG record."""
    message = line.rstrip("\n")
    if not message:
        return None
    timestamp = fallback_ms
    if message.startswith("{"):
        try:
            doc = json.loads(message)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            if doc.get("level") == "debug":
                return None
            timestamp = _ms(doc.get("ts")) or fallback_ms
    encoded = message.encode()
    if len(encoded) > MAX_EVENT_BYTES:
        message = encoded[:MAX_EVENT_BYTES].decode(errors="ignore")
    return Event(timestamp, message)


def _ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def batches(events: Iterable[Event]) -> list[list[Event]]:
    """Events in time order, cut where a PutLogEvents limit would be crossed."""
    out: list[list[Event]] = []
    current: list[Event] = []
    size = 0
    for event in sorted(events, key=lambda e: e.timestamp):
        full = (
            len(current) >= MAX_EVENTS
            or size + event.size > MAX_BATCH_BYTES
            or (current and event.timestamp - current[0].timestamp > MAX_SPAN_MS)
        )
        if full:
            out.append(current)
            current, size = [], 0
        current.append(event)
        size += event.size
    if current:
        out.append(current)
    return out


@dataclass
class LogShipper:
    client: Any
    log_dir: Path
    group_prefix: str = "/healthsync"
    stages: tuple[str, ...] = STAGES
    stream: str = field(default_factory=socket.gethostname)
    shipped: int = 0
    _offsets: dict[str, int] = field(default_factory=dict)
    _ready: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        try:
            self._offsets = json.loads((self.log_dir / _OFFSETS).read_text())
        except (OSError, ValueError):
            self._offsets = {}

    def group(self, stage: str) -> str:
        return f"{self.group_prefix}/{stage}"

    def ship(self) -> None:
        """Send what is new in every stage's log; raises (offsets kept) when CloudWatch fails."""
        for stage in self.stages:
            for path in self._logs_of(stage):
                self._ship_file(stage, path)

    def _logs_of(self, stage: str) -> list[Path]:
        """The stage's log, and its replicas' (`ingest-1.log`, ...) behind a load balancer."""
        single = self.log_dir / f"{stage}.log"
        replicas = sorted(
            p
            for p in self.log_dir.glob(f"{stage}-*.log")
            if p.stem.removeprefix(f"{stage}-").isdigit()
        )
        return ([single] if single.exists() else []) + replicas

    def _stream_of(self, path: Path) -> str:
        """One log stream per host, and per replica where a stage runs several."""
        replica = path.stem.rpartition("-")[2]
        return f"{self.stream}/{replica}" if replica.isdigit() else self.stream

    def _ship_file(self, stage: str, path: Path) -> None:
        key = path.stem
        stream = self._stream_of(path)
        offset = self._offsets.get(key, 0)
        if path.stat().st_size < offset:
            offset = 0  # rotated or truncated: start again
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next round
        if end == 0:
            return
        now = int(time.time() * 1000)
        lines = data[:end].decode(errors="replace").splitlines()
        events = [e for e in (event_for(line, now) for line in lines) if e is not None]
        if events:
            self._ensure(stage, stream)
            for batch in batches(events):
                self.client.put_log_events(
                    logGroupName=self.group(stage),
                    logStreamName=stream,
                    logEvents=[{"timestamp": e.timestamp, "message": e.message} for e in batch],
                )
                self.shipped += len(batch)
        self._offsets[key] = offset + end
        (self.log_dir / _OFFSETS).write_text(json.dumps(self._offsets))

    def _ensure(self, stage: str, stream: str) -> None:
        if (stage, stream) in self._ready:
            return
        group = self.group(stage)
        exists = self.client.exceptions.ResourceAlreadyExistsException
        with contextlib.suppress(exists):
            self.client.create_log_group(logGroupName=group)
        with contextlib.suppress(exists):
            self.client.create_log_stream(logGroupName=group, logStreamName=stream)
        self._ready.add((stage, stream))
