"""Paced sending: each device at its own steady rate, all of them from one loop.

What the latency phase offers the pipeline is one write per reading, as devices
send. What it must not do is take the CPU the pipeline needs to answer them:
the driver shares the machine with everything it measures. py-spy on the bench
process at 10,000 readings/s paced (2026-12-07) put a fifth of it in asyncio's
own work for a coroutine per device (a timer and a future for every reading)
and another 7% in the HMAC of each reading's id as it was sent. So one loop
keeps a heap of when each device's next reading is due, and the ids that the
latency watcher awaits are computed before sending starts.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Sequence

from pipeline_bench.driver import Device, Link

# Bytes a connection may hold unsent before its device waits for it (asyncio's default
# high-water mark, where `drain` would wait): a device that fell behind then sends what
# fell due meanwhile in one write, once the connection has room.
BUFFER_LIMIT = 1 << 16
# How long a device whose connection is full waits before it is looked at again.
_FULL_RETRY_S = 0.001

Sent = Callable[[int, range, float], None]


async def send_paced(
    links: Sequence[Link], offered: float, start: float, stop_at: float, on_sent: Sent
) -> None:
    """Send `offered` readings a second over `links` from `start` until `stop_at`.

    Each device sends offered / len(links) a second, and the devices' sends are
    spread evenly over each interval (device i's first at start + i / offered).
    A device writes the readings that fell due since its last write in one write,
    usually one; `on_sent(i, seqs, sent_at)` is told what device i sent, and when.
    """
    if not links:
        return
    per_device = offered / len(links)
    firsts = [start + i / offered for i in range(len(links))]
    sent = [0] * len(links)
    due = [(first, i) for i, first in enumerate(firsts)]
    heapq.heapify(due)
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        while due[0][0] <= now:
            _, i = heapq.heappop(due)
            link = links[i]
            if link.buffered() >= BUFFER_LIMIT:
                heapq.heappush(due, (now + _FULL_RETRY_S, i))
                continue
            n = readings_due(now, firsts[i], per_device, sent[i])
            data, seqs = link.device.lines(n)
            on_sent(i, seqs, link.write(data, n))
            sent[i] += n
            heapq.heappush(due, (firsts[i] + sent[i] / per_device, i))
        await asyncio.sleep(max(0.0, min(due[0][0], stop_at) - time.perf_counter()))


def readings_due(now: float, first: float, per_device: float, sent: int) -> int:
    """How many of a device's readings fell due by `now`, once reading number `sent` (due
    at first + sent / per_device) has: at least that one, which the rounding of its due
    time can put a hair past `now` when counted back from it."""
    return max(1, math.floor((now - first) * per_device) + 1 - sent)


class Awaited:
    """The readings sent and not yet found visible, per patient: reading id -> send time.

    Each device's ids for the phase (as the pipeline names its readings: keyed with
    `id_key` when encryption at rest is on) are computed up front; a reading past
    them, which a phase that overruns may send, is named as it is sent.
    """

    def __init__(self, devices: Sequence[Device], per_device: int, id_key: bytes | None) -> None:
        self.devices = devices
        self.id_key = id_key
        self.firsts = [d.next_seq for d in devices]
        self.ids = [
            [d.reading_id(seq, id_key) for seq in range(d.next_seq, d.next_seq + per_device)]
            for d in devices
        ]
        self.waiting: dict[str, dict[str, float]] = {d.patient_id: {} for d in devices}
        self._pending = [self.waiting[d.patient_id] for d in devices]

    def note_sent(self, i: int, seqs: range, sent_at: float) -> None:
        ids, first, pending = self.ids[i], self.firsts[i], self._pending[i]
        for seq in seqs:
            k = seq - first
            rid = ids[k] if k < len(ids) else self.devices[i].reading_id(seq, self.id_key)
            pending[rid] = sent_at

    @property
    def left(self) -> int:
        """How many are still awaited."""
        return sum(len(w) for w in self.waiting.values())
