"""The pipeline bench's paced sending: each device at its own rate, over real sockets.

The latency figures are only as good as the pacing behind them: a device that
sends late, or in bursts, or never waits for a full connection, measures the
driver rather than the pipeline.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from pipeline_bench.driver import Device, close_links, open_links
from pipeline_bench.pacing import BUFFER_LIMIT, Awaited, readings_due, send_paced

_KEY = b"k" * 32


class Receiver:
    """A TCP server that records when each line arrived, per connection; or, `stalled`,
    one that reads nothing until told to, as an ingest that stopped reading would."""

    def __init__(self, stalled: bool = False) -> None:
        self.arrivals: list[list[tuple[float, bytes]]] = []
        self.reading = asyncio.Event()
        if not stalled:
            self.reading.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mine: list[tuple[float, bytes]] = []
        self.arrivals.append(mine)
        await self.reading.wait()
        while line := await reader.readline():
            mine.append((time.perf_counter(), line))
        writer.close()


def _seq(line: bytes) -> int:
    return int(line.split(b" seq=")[1].split()[0])


async def _run(
    receiver: Receiver,
    devices: int,
    offered: float,
    seconds: float,
    writes: list[int] | None = None,
) -> tuple[list[Device], Awaited, float, list[int]]:
    """Send paced to `receiver`; the fleet, what is awaited, the start and, per device,
    the bytes left unsent. `writes` gets the number of readings of each write."""
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rng = random.Random(3)
    fleet = [Device(i, rng, 1_000) for i in range(devices)]
    links = await open_links(fleet, "127.0.0.1", port)
    awaited = Awaited(fleet, int(offered / devices * seconds) + 2, _KEY)
    start = time.perf_counter() + 0.02

    def sent(i: int, seqs: range, sent_at: float) -> None:
        if writes is not None:
            writes.append(len(seqs))
        awaited.note_sent(i, seqs, sent_at)

    await send_paced(links, offered, start, start + seconds, sent)
    unsent = [link.buffered() for link in links]
    receiver.reading.set()
    await asyncio.sleep(0.3)
    await close_links(links)
    server.close()
    await server.wait_closed()
    return fleet, awaited, start, unsent


def test_each_device_sends_its_share_at_a_steady_pace() -> None:
    receiver = Receiver()
    fleet, awaited, start, _unsent = asyncio.run(_run(receiver, 5, 500.0, 1.0))

    assert len(receiver.arrivals) == 5
    for arrivals in receiver.arrivals:
        seqs = [_seq(line) for _at, line in arrivals]
        # 100 a second for a second: the readings due before the stop, in order, no gaps.
        assert 90 <= len(seqs) <= 101
        assert seqs == list(range(1_000, 1_000 + len(seqs)))
        times = [at for at, _line in arrivals]
        assert start <= times[0] < start + 0.2
        # Paced, not in bursts: each half second holds about its half.
        first_half = sum(1 for at in times if at < start + 0.5)
        assert 40 <= first_half <= 60
    # Every reading sent is awaited under the id the pipeline will give it.
    assert awaited.left == sum(len(a) for a in receiver.arrivals)
    for device in fleet:
        pending = awaited.waiting[device.patient_id]
        sent = range(1_000, device.next_seq)
        assert list(pending) == [device.reading_id(seq, _KEY) for seq in sent]


def test_a_device_whose_connection_is_full_waits_for_room() -> None:
    """An ingest that reads nothing: once the kernel's buffers are full (a few MB on
    loopback), the device stops writing when its connection holds `BUFFER_LIMIT`,
    rather than queue the rest of what falls due in the bench's memory."""
    receiver = Receiver(stalled=True)
    writes: list[int] = []
    _fleet, awaited, _start, unsent = asyncio.run(_run(receiver, 1, 100_000.0, 1.0, writes))

    (arrivals,) = receiver.arrivals
    seqs = [_seq(line) for _at, line in arrivals]
    line_size = len(arrivals[0][1])
    # What was sent arrived, in order, once the server read; far less than offered was.
    assert seqs == list(range(1_000, 1_000 + len(seqs)))
    assert awaited.left == len(seqs)
    assert len(seqs) < 90_000
    # At most the limit and one write was left unsent: what fell due since the write
    # before, a millisecond's worth on a quiet machine, several on a busy one (146,679
    # bytes held once, in a full run of the suite on a slow evening). Ignoring the
    # limit would leave most of the second's 100,000 readings (about 10 MB) unsent.
    (held,) = unsent
    assert 0 < held <= BUFFER_LIMIT + max(writes) * line_size
    assert max(writes) < 50_000, "half the second in one write is no pacing"


def test_a_reading_past_the_ids_computed_up_front_is_named_as_it_is_sent() -> None:
    fleet = [Device(1, random.Random(5), 7)]
    awaited = Awaited(fleet, 2, _KEY)
    awaited.note_sent(0, range(7, 10), 1.5)
    assert awaited.waiting[fleet[0].patient_id] == {
        fleet[0].reading_id(seq, _KEY): 1.5 for seq in (7, 8, 9)
    }


def test_a_reading_due_now_is_sent_whatever_the_rounding_of_its_time() -> None:
    """Counted back from its own due time, the reading was often not due (0 readings): it
    went back on the heap at the same time, and the loop spun there without end (a device
    at 100,000/s from this start hung the test above until its timeout)."""
    start, per_device = 1773.443782626, 100_000.0
    for sent in range(1, 20_000):
        assert readings_due(start + sent / per_device, start, per_device, sent) == 1
    assert readings_due(start + 0.5, start, per_device, 100) == 49_901
