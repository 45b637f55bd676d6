"""One simulated device's connection to ingest: pacing its sends, reading the replies.

A device keeps every line the server has not answered yet. A dropped connection
is reopened with backoff and those lines are resent: a resend carries the same
device and seq, so the server treats it as the same reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from dataclasses import dataclass
from itertools import repeat
from ssl import SSLContext
from typing import Final

from healthsync.simulate.patient import SimulatedDevice
from healthsync.simulate.stats import SimulationStats

# Lines per write: large enough that a fast device spends its time generating
# readings rather than in the event loop, small enough to keep writes ~100 KB.
_MAX_BURST: Final = 1000
# Shortest sleep between bursts: a device due more often than this sends the
# readings that fell due in one write instead of waking for each.
_MIN_TICK: Final = 0.005
# Sleeps longer than this also wake on the stop event; shorter ones not worth it.
_INTERRUPTIBLE_SLEEP: Final = 0.05
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_READ_CHUNK: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class Plan:
    """What every device of one run is to do, and where."""

    host: str
    port: int
    rate: float
    count: int | None
    deadline: float | None  # loop time
    ssl: SSLContext | None
    window: int
    reply_timeout: float
    retry_for: float
    connect_timeout: float


@dataclass(frozen=True, slots=True)
class Shared:
    """What the devices of one run share: the tally, the stop signal, the connect gate."""

    stats: SimulationStats
    stopped: asyncio.Task[object]
    # A burst of simultaneous connects overflows a server's listen backlog.
    connect_gate: asyncio.Semaphore


class DeviceConnection:
    """One device's connection, its unanswered lines, and the pacing of its sends."""

    def __init__(self, device: SimulatedDevice, plan: Plan, shared: Shared, t0: float) -> None:
        self.device = device
        self.plan = plan
        self.stats = shared.stats
        self.stopped = shared.stopped
        self.connect_gate = shared.connect_gate
        self.t0 = t0
        self.sent = 0
        # (line, loop time written) for every line not yet answered, in send order:
        # the server answers in order, so each reply belongs to the leftmost entry.
        self.pending: deque[tuple[bytes, float]] = deque()
        self.room = asyncio.Event()
        self.idle = asyncio.Event()
        self.drain_until: float | None = None
        self.backoff = _BACKOFF_MIN
        self.failing_since: float | None = None

    def sending_done(self, now: float) -> bool:
        plan = self.plan
        return (
            self.stopped.done()
            or (plan.deadline is not None and now >= plan.deadline)
            or (plan.count is not None and self.sent >= plan.count)
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        connected_before = False
        try:
            while not self._finished(loop.time()):
                try:
                    reader, writer = await self._connect()
                except (OSError, TimeoutError) as exc:
                    if await self._retry_after(exc):
                        continue
                    return
                self.failing_since = None
                self.backoff = _BACKOFF_MIN
                self.stats.connections += 1
                if connected_before:
                    self.stats.reconnects += 1
                connected_before = True
                if not await self._session(reader, writer):
                    return
        finally:
            self.stats.unanswered += len(self.pending)
            self.pending.clear()

    def _finished(self, now: float) -> bool:
        """Done sending, and every reply is in or no longer worth waiting for."""
        if not self.sending_done(now):
            return False
        if not self.pending:
            return True
        if self.drain_until is None:
            self.drain_until = now + self.plan.reply_timeout
        return now >= self.drain_until

    async def _retry_after(self, exc: OSError | TimeoutError) -> bool:
        """Count a failed connect and back off; False once it has failed for retry_for."""
        self.stats.connect_failures += 1
        self.stats.last_connect_error = str(exc) or type(exc).__name__
        now = asyncio.get_running_loop().time()
        if self.failing_since is None:
            self.failing_since = now
        if now - self.failing_since >= self.plan.retry_for:
            return False
        delay = self.backoff * random.uniform(0.5, 1.0)
        if self.drain_until is not None:
            delay = min(delay, max(0.0, self.drain_until - now))
        await self._sleep(delay)
        self.backoff = min(self.backoff * 2, _BACKOFF_MAX)
        return True

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        plan = self.plan
        async with self.connect_gate:
            return await asyncio.wait_for(
                asyncio.open_connection(plan.host, plan.port, ssl=plan.ssl, limit=_READ_CHUNK),
                plan.connect_timeout,
            )

    async def _sleep(self, delay: float) -> None:
        if delay > _INTERRUPTIBLE_SLEEP:
            await asyncio.wait((self.stopped,), timeout=delay)
        else:
            await asyncio.sleep(delay)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Use one connection until done; True if it was lost and should be replaced."""
        loop = asyncio.get_running_loop()
        if self.pending:
            # Their replies were lost with the old connection. A resend carries the
            # same device and seq, so the server treats it as the same reading.
            lines = [line for line, _ in self.pending]
            now = loop.time()
            self.pending = deque(zip(lines, repeat(now)))
            self.stats.resent += len(lines)
            writer.write(b"".join(lines))
        self.room.set()
        replies = asyncio.create_task(self._read_replies(reader))
        try:
            try:
                await writer.drain()
                await self._send(writer, replies)
            except OSError:
                return True
            if replies.done():
                return bool(self.pending) or not self.sending_done(loop.time())
            return await self._await_replies(replies)
        finally:
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replies
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, replies: asyncio.Task[None]) -> None:
        """Write readings as they fall due until sending is done or the connection drops."""
        loop = asyncio.get_running_loop()
        plan = self.plan
        next_line = self.device.next_line
        while not replies.done():
            now = loop.time()
            if self.sending_done(now):
                return
            due = math.floor((now - self.t0) * plan.rate) + 1 - self.sent
            if plan.count is not None:
                due = min(due, plan.count - self.sent)
            if due <= 0:
                delay = max(self.t0 + self.sent / plan.rate - now, _MIN_TICK)
                if plan.deadline is not None:
                    delay = min(delay, plan.deadline - now)
                await self._sleep(delay)
                continue
            room = plan.window - len(self.pending)
            if room <= 0:
                await self._wait_for_room(now)
                continue
            n = min(due, room, _MAX_BURST)
            lines = [next_line() for _ in range(n)]
            self.pending.extend(zip(lines, repeat(loop.time())))
            writer.write(b"".join(lines))
            self.sent += n
            self.stats.sent += n
            await writer.drain()
            if n < due:
                # Still behind: yield so replies are read and other devices run.
                await asyncio.sleep(0)

    async def _wait_for_room(self, now: float) -> None:
        # Bounded by the deadline and the stop event: a server that stops
        # answering must not hold the simulation past its end.
        self.room.clear()
        room = asyncio.create_task(self.room.wait())
        deadline = self.plan.deadline
        try:
            await asyncio.wait(
                (room, self.stopped),
                timeout=None if deadline is None else max(0.0, deadline - now),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            room.cancel()

    async def _await_replies(self, replies: asyncio.Task[None]) -> bool:
        loop = asyncio.get_running_loop()
        if self.drain_until is None:
            self.drain_until = loop.time() + self.plan.reply_timeout
        while self.pending:
            remaining = self.drain_until - loop.time()
            if remaining <= 0:
                return False
            if replies.done():
                return True
            self.idle.clear()
            idle = asyncio.create_task(self.idle.wait())
            try:
                await asyncio.wait(
                    (replies, idle), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                idle.cancel()
        return False

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    return
                buffer += data
                if b"\n" not in data:
                    continue
                *lines, buffer = buffer.split(b"\n")
                self._take_replies(lines, loop.time())
        except OSError:
            return
        finally:
            # Wake a sender waiting for room, so it notices the connection is gone.
            self.room.set()
            self.idle.set()

    def _take_replies(self, lines: list[bytes], now: float) -> None:
        """Match replies to the oldest unanswered lines and count what they say."""
        stats = self.stats
        pending = self.pending
        for line in lines:
            if not pending:
                stats.add_error("unexpected reply")
                continue
            _, written = pending.popleft()
            stats.add_latency(now - written)
            if line.startswith(b"OK "):
                stats.ok += 1
            elif line.startswith(b"ERR "):
                stats.add_error(_error_key(line))
            else:
                stats.add_error("malformed reply")
        if len(pending) < self.plan.window:
            self.room.set()
        if not pending:
            self.idle.set()


def _error_key(line: bytes) -> str:
    """``ERR 422 out_of_range: temp ...`` -> ``422 out_of_range``."""
    head = line[4:].split(b":", 1)[0].decode("utf-8", "replace").strip()
    return head or "ERR"
