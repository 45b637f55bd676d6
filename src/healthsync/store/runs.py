"""Job run records and the per-job lock, in Redis.

A run record says what a job run is doing or did: queued, running, succeeded
or failed, when, on which runner, its exit status, a short summary and where
its output is. The API, the dashboard and the AWS launcher read and write the
same records. They hold no patient data (a run that was limited to some
patients records how many, not which), so they are stored unsealed. This
module needs only redis-py and the standard library, because the Lambda
launcher's deployment zip carries it.

The lock (``{p}:jobs:lock:{job}``) holds the run id that owns the job and
expires after a TTL, so a crashed run never blocks its job for good. Whoever
starts a run (the scheduler, the Lambda launcher, `healthsync job run`) takes
it for that run id; the run itself takes it again with the same id, which
succeeds, so the lock passes from launcher to worker without a gap. A
launcher claims it only while it is free: two schedulers that named the
same slot's run at once, or a retried launch, start it once.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

from redis import Redis

from healthsync.names import RedisKeys

Status = Literal["queued", "running", "succeeded", "failed"]
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_KEEP_RUNS = 1000

# Take the lock if it is free or already ours; refresh its TTL either way.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Release only our own lock: a run that outlived its TTL must not free a newer run's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ttl_ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))


def valid_run_id(run_id: str) -> bool:
    return re.fullmatch(RUN_ID_PATTERN, run_id) is not None


def new_run_id(job: str, at: float | None = None) -> str:
    """A run id from the job and a UTC time: the scheduler's runs are named by their slot."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if at is None else at))
    return f"{job}-{stamp}"


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    job: str
    status: Status
    runner: str  # local, aws, cli
    trigger: str  # schedule, api, cli, lambda
    created_at: float
    params: dict[str, Any] = field(default_factory=dict)  # since, until, patient count
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    output: str | None = None  # where the run's files are
    worker: str | None = None  # the EC2 instance id, or the local process id

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunRecord:
        return cls(**json.loads(raw))

    def update(self, **changes: Any) -> RunRecord:
        return replace(self, **changes)


class JobBusyError(Exception):
    """The job is already running under another run id."""

    def __init__(self, job: str, holder: str) -> None:
        super().__init__(f"job {job} is already running (run {holder})")
        self.job = job
        self.holder = holder


class RunExistsError(Exception):
    """A run with this id was recorded already."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"job run {run_id} exists already; ask with another run_id")
        self.run_id = run_id


class RunStore:
    """Run records and locks under one key prefix (a synchronous Redis client)."""

    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def save(self, record: RunRecord) -> None:
        pipe = self.client.pipeline()
        pipe.hset(self.keys.job_runs, record.run_id, record.to_json())
        pipe.zadd(self.keys.job_recent, {record.run_id: record.created_at}, nx=True)
        pipe.execute()
        self._trim()

    def get(self, run_id: str) -> RunRecord | None:
        raw = cast("bytes | None", self.client.hget(self.keys.job_runs, run_id))
        return None if raw is None else RunRecord.from_json(raw)

    def recent(self, limit: int = 100, job: str | None = None) -> list[RunRecord]:
        ids = cast(
            "list[bytes]", self.client.zrevrange(self.keys.job_recent, 0, -1 if job else limit - 1)
        )
        if not ids:
            return []
        raws = cast("list[bytes | None]", self.client.hmget(self.keys.job_runs, ids))
        records = [RunRecord.from_json(raw) for raw in raws if raw is not None]
        if job is not None:
            records = [r for r in records if r.job == job]
        return records[:limit]

    def _trim(self) -> None:
        excess = int(self.client.zcard(self.keys.job_recent)) - _KEEP_RUNS
        if excess > 0:
            old = self.client.zrange(self.keys.job_recent, 0, excess - 1)
            pipe = self.client.pipeline()
            pipe.zrem(self.keys.job_recent, *old)
            pipe.hdel(self.keys.job_runs, *old)
            pipe.execute()

    def acquire(self, job: str, run_id: str, ttl_s: float) -> None:
        """Hold the job's lock for `run_id`, or raise JobBusyError naming the holder."""
        key = self.keys.job_lock(job)
        if not self.client.eval(_ACQUIRE, 1, key, run_id, _ttl_ms(ttl_s)):
            raise JobBusyError(job, self.holder(job) or "unknown")

    def claim(self, job: str, run_id: str, ttl_s: float) -> None:
        """Take the job's lock for `run_id` only if nobody holds it, or raise JobBusyError:
        how a launcher starts a run, where :meth:`acquire` lets a run take itself over."""
        key = self.keys.job_lock(job)
        if not self.client.set(key, run_id, px=_ttl_ms(ttl_s), nx=True):
            raise JobBusyError(job, self.holder(job) or "unknown")

    def holder(self, job: str) -> str | None:
        raw = cast("bytes | None", self.client.get(self.keys.job_lock(job)))
        return None if raw is None else raw.decode()

    def release(self, job: str, run_id: str) -> None:
        self.client.eval(_RELEASE, 1, self.keys.job_lock(job), run_id)

    def request(self, record: RunRecord) -> None:
        """Queue a run for the scheduler to start (the API's way to start one), or raise
        RunExistsError if its run id is taken: a retried request starts nothing twice."""
        if not self.client.hsetnx(self.keys.job_runs, record.run_id, record.to_json()):
            raise RunExistsError(record.run_id)
        pipe = self.client.pipeline()
        pipe.zadd(self.keys.job_recent, {record.run_id: record.created_at}, nx=True)
        pipe.rpush(self.keys.job_requests, record.run_id)
        pipe.execute()

    def next_request(self) -> RunRecord | None:
        """The oldest queued request, taken off the queue; None when there is none."""
        while (raw := cast("bytes | None", self.client.lpop(self.keys.job_requests))) is not None:
            record = self.get(raw.decode())
            if record is not None:
                return record
        return None

    def last_slot(self, job: str) -> float | None:
        raw = cast("bytes | None", self.client.hget(self.keys.job_schedule, job))
        return None if raw is None else float(raw)

    def set_last_slot(self, job: str, slot: float) -> None:
        self.client.hset(self.keys.job_schedule, job, repr(slot))
