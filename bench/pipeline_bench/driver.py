"""The load driver: simulated devices, one TCP connection each, and what ingest answered.

Each device's line is built once with `wire.format_line` (normal vitals, so no
alerts are raised) and only the `seq` changes per reading, so the driver costs a
few microseconds a line and the pipeline is what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from healthsync.domain.readings import reading_id_for
from healthsync.wire import format_line

_READ_CHUNK = 1 << 16
_BODIES_PER_DEVICE = 32
_REPLY_DRAIN_TIMEOUT_S = 20.0


class Device:
    """One simulated monitor: a fixed line template with the seq filled in per reading.

    The vitals cycle through a few normal sets (no alerts are raised), so the
    sender spends microseconds per line and the pipeline, not the driver, is
    what is measured.
    """

    def __init__(self, index: int, rng: random.Random, first_seq: int) -> None:
        self.device_id = f"bench-{index:04d}"
        self.patient_id = f"P-{20000 + index}"
        self.next_seq = first_seq
        self._heads: list[bytes] = []
        self._tails: list[bytes] = []
        for _ in range(_BODIES_PER_DEVICE):
            systolic = rng.randint(105, 140)
            line = format_line(
                {
                    "device_id": self.device_id,
                    "patient_id": self.patient_id,
                    "seq": 0,
                    "heart_rate": rng.randint(60, 100),
                    "spo2": rng.randint(95, 99),
                    "temp": round(rng.uniform(36.4, 37.3), 1),
                    "resp_rate": rng.randint(12, 20),
                    "bp": f"{systolic}/{systolic - rng.randint(35, 50)}",
                }
            )
            head, sep, tail = line.partition(b" seq=0 ")
            if not sep:
                raise RuntimeError(f"unexpected line layout: {line!r}")
            self._heads.append(head + b" seq=")
            self._tails.append(b" " + tail)

    def lines(self, n: int) -> tuple[bytes, range]:
        """`n` consecutive readings as one buffer, and their seq numbers."""
        first = self.next_seq
        self.next_seq = first + n
        heads, tails, k = self._heads, self._tails, _BODIES_PER_DEVICE
        data = b"".join(
            heads[seq % k] + str(seq).encode() + tails[seq % k] for seq in range(first, first + n)
        )
        return data, range(first, first + n)

    def reading_id(self, seq: int, key: bytes | None) -> str:
        """The id the pipeline gives the reading: keyed with the keyring's id key when
        encryption at rest is on (`Codec.id_key`), as ingest does."""
        return reading_id_for(self.device_id, seq, 0, key=key)


@dataclass
class Tally:
    """What the ingest server answered on all connections of one phase."""

    sent: int = 0
    ok: int = 0
    err: int = 0
    first_err: str | None = None
    # Write -> reply time of the last line of each write (usually one line when paced).
    ack: list[float] = field(default_factory=list)
    record_ack: bool = True


class Link:
    """One device's TCP connection to ingest; replies are read by a background task."""

    def __init__(
        self, device: Device, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.device = device
        self.reader = reader
        self.writer = writer
        self.tally = Tally()
        self.sent = 0
        self.answered = 0
        # (value of `sent` after a write, perf_counter at the write), oldest first.
        self.writes: deque[tuple[int, float]] = deque()
        self.room = asyncio.Event()
        self.reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, device: Device, host: str, port: int) -> Link:
        reader, writer = await asyncio.open_connection(host, port, limit=_READ_CHUNK)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = cls(device, reader, writer)
        link.reader_task = asyncio.create_task(link._read_replies())
        return link

    def use(self, tally: Tally) -> None:
        self.tally = tally

    def write(self, data: bytes, n: int) -> float:
        now = time.perf_counter()
        self.sent += n
        self.tally.sent += n
        self.writes.append((self.sent, now))
        self.writer.write(data)
        return now

    def buffered(self) -> int:
        """Bytes written and not yet handed to the kernel."""
        return self.writer.transport.get_write_buffer_size()

    @property
    def unanswered(self) -> int:
        return self.sent - self.answered

    async def _read_replies(self) -> None:
        tail = b""
        reader = self.reader
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return
            n = data.count(b"\n")
            if n == 0:
                tail += data
                continue
            buf = tail + data if tail else data
            cut = buf.rfind(b"\n") + 1
            complete, tail = buf[:cut], buf[cut:]
            errors = complete.count(b"\nERR ") + complete.startswith(b"ERR ")
            tally = self.tally
            if errors:
                tally.err += errors
                if tally.first_err is None:
                    start = 0 if complete.startswith(b"ERR ") else complete.find(b"\nERR ") + 1
                    end = complete.find(b"\n", start)
                    tally.first_err = complete[start:end].decode("utf-8", "replace")
            tally.ok += n - errors
            self.answered += n
            now = time.perf_counter()
            writes, answered = self.writes, self.answered
            while writes and writes[0][0] <= answered:
                _, written = writes.popleft()
                if tally.record_ack:
                    tally.ack.append(now - written)
            self.room.set()

    async def wait_answered(self, deadline: float) -> None:
        while self.unanswered > 0 and time.perf_counter() < deadline:
            if self.reader_task is not None and self.reader_task.done():
                return
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), max(0.01, deadline - time.perf_counter()))

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self.reader_task
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


async def open_links(devices: list[Device], host: str, port: int) -> list[Link]:
    return list(await asyncio.gather(*(Link.open(d, host, port) for d in devices)))


async def close_links(links: Iterable[Link]) -> None:
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


async def drain_replies(links: list[Link]) -> None:
    deadline = time.perf_counter() + _REPLY_DRAIN_TIMEOUT_S
    await asyncio.gather(*(link.wait_answered(deadline) for link in links))


def merge(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.sent += t.sent
        total.ok += t.ok
        total.err += t.err
        total.ack.extend(t.ack)
        total.first_err = total.first_err or t.first_err
    return total
