"""Holding ingest while `healthsync up` recycles the embedded broker's topics.

On SIGUSR1 the vitals topic is held: devices' new lines are left unread
(in ingest's buffer, then in the socket's) while the readings already in
flight get their answers. Once none is left, ingest writes
``ingest.hold_file``: from then on nothing it acknowledged can be missing
from the topic. On SIGUSR2 it removes the file, takes a fresh producer and
handles the lines that waited, so a device that sent during the hold gets its
``OK`` a few seconds late instead of an error: a bash device that does not
resend loses nothing. A hold that outlasts ``ingest.hold_wait_s`` (the
broker slow to come back, or no release) answers the waiting lines, and
those sent after, ``ERR 503 kafka_unavailable``: devices send them again
later, and the same ``seq`` keeps its reading id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from healthsync.ingest.publisher import Publisher
from healthsync.ingest.server import IngestServer

log = logging.getLogger(__name__)

_POLL_S = 0.01


class Hold:
    """Holds and releases one ingest process on the supervisor's signals."""

    def __init__(self, server: IngestServer, publisher: Publisher, hold_file: Path) -> None:
        self.server = server
        self.publisher = publisher
        self.hold_file = hold_file
        self._task: asyncio.Task[None] | None = None
        self._limit: asyncio.TimerHandle | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self.hold_file.unlink(missing_ok=True)  # a file left by a crashed run means nothing
        loop.add_signal_handler(signal.SIGUSR1, self.hold)
        loop.add_signal_handler(signal.SIGUSR2, self.release)

    def hold(self) -> None:
        if self._task is not None:
            return
        self.publisher.held = frozenset({self.server.settings.kafka.vitals_topic})
        loop = asyncio.get_running_loop()
        wait_s = self.server.settings.ingest.hold_wait_s
        if wait_s > 0:
            self.server.hold_lines()
            self._limit = loop.call_later(wait_s, self._outlasted)
        waiting = "wait until released" if wait_s > 0 else "get ERR 503 until released"
        log.info(f"holding: new readings {waiting}", extra={"wait_s": wait_s})
        self._task = loop.create_task(self._settle(), name="hold")

    def _outlasted(self) -> None:
        self._limit = None
        waited = self.server.answer_waiting()  # the topic is still held: ERR 503, resend
        log.warning("hold outlasted ingest.hold_wait_s: ERR 503", extra={"waited": waited})

    async def _settle(self) -> None:
        """Wait until every reading taken before the hold has its answer, then say so."""
        while self.server.inflight or self.publisher.queued:
            await asyncio.sleep(_POLL_S)
        temporary = self.hold_file.with_suffix(".tmp")
        temporary.write_text("held\n", encoding="ascii")
        temporary.replace(self.hold_file)
        log.info("held: nothing in flight")

    def release(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        self.hold_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.hold_file.with_suffix(".tmp").unlink(missing_ok=True)
        self.publisher.renew()
        self.publisher.held = frozenset()
        if self._limit is not None:
            self._limit.cancel()
            self._limit = None
        waited = self.server.answer_waiting()
        log.info("released: accepting readings again", extra={"waited": waited})
