"""The soak mode: one long paced phase, and every process's memory and CPU over time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from healthsync.recycle import BrokerRecycler, Outcome
from pipeline_bench.figures import ms, percentile, rate
from pipeline_bench.latency import LatencyResult
from pipeline_bench.report import RunFacts, header
from pipeline_bench.usage import cpu_seconds, vm_status


@dataclass
class ProcessSamples:
    """VmRSS in KiB and CPU seconds used so far of each named process, at each
    sample's seconds since the start."""

    times: list[float] = field(default_factory=list)
    kib: dict[str, list[int | None]] = field(default_factory=dict)
    cpu_s: dict[str, list[float | None]] = field(default_factory=dict)


class ProcessSampler:
    """Reads every process's resident set and CPU time every `interval` seconds, on a thread
    of its own.

    `pids` is asked at each sample: a stage restarted meanwhile (as a broker recycle
    restarts the consumers) is followed under its name.
    """

    def __init__(self, pids: Callable[[], dict[str, int]], interval: float) -> None:
        self.pids = pids
        self.interval = interval
        names = pids()
        self.samples = ProcessSamples(kib={n: [] for n in names}, cpu_s={n: [] for n in names})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()

    def _sample(self) -> None:
        self.samples.times.append(time.perf_counter() - self._started)
        pids = self.pids()
        for name, values in self.samples.kib.items():
            pid = pids.get(name)
            values.append(None if pid is None else vm_status(pid, "VmRSS"))
            self.samples.cpu_s[name].append(None if pid is None else cpu_seconds(pid))

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> ProcessSamples:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.samples


class Recycling:
    """What `up` does once a second to bound the embedded broker (healthsync.recycle)."""

    def __init__(self, recycler: BrokerRecycler) -> None:
        self.recycler = recycler
        self.done: list[tuple[float, Outcome]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recycling", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            outcome = self.recycler.check()
            if outcome is not None:
                self.done.append((time.perf_counter() - self._started, outcome))

    def stop(self) -> list[tuple[float, Outcome]]:
        self._stop.set()
        self._thread.join()
        return self.done


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def _growth(values: list[int | None], times: list[float]) -> str:
    """Growth per minute from the second sample (the warm-up past) to the last."""
    known = [(t, v) for t, v in zip(times, values, strict=True) if v is not None][1:]
    if len(known) < 2 or known[-1][0] <= known[0][0]:
        return "n/a"
    (t0, v0), (t1, v1) = known[0], known[-1]
    return f"{(v1 - v0) / 1024 / ((t1 - t0) / 60):+.1f} MiB/min"


def _cpu_percent(samples: ProcessSamples, name: str, i: int) -> str:
    """CPU of `name` between samples i-1 and i, 100 = one core (-: unknown or restarted)."""
    if i == 0:
        return "-"
    before, after = samples.cpu_s[name][i - 1], samples.cpu_s[name][i]
    elapsed = samples.times[i] - samples.times[i - 1]
    if before is None or after is None or after < before or elapsed <= 0:
        return "-"
    return f"{100 * (after - before) / elapsed:.0f}"


def render_soak(
    facts: RunFacts,
    soak: LatencyResult,
    samples: ProcessSamples,
    recycles: list[tuple[float, Outcome]],
) -> str:
    out = header(facts)
    add = out.append
    args = facts.args
    add("")
    add(
        f"Soak: {soak.offered_rate:.0f} readings/s offered (paced over {args.devices} "
        f"connections, achieved {soak.achieved_rate:.0f}/s) for {soak.duration:.0f} s; "
        f"processor stored {soak.processed_rate:.0f} readings/s over the window; "
        f"{soak.tally.ok} OK, {soak.tally.err} ERR"
        + (f"; {soak.not_visible} never visible" if soak.not_visible else "")
    )
    add(
        f"   steady state: {soak.steady_rate:.0f} readings/s became visible from "
        f"{soak.duration / 6:.0f} s to the end of sending (counted by when they became "
        f"visible), the last {soak.last_visible_after:.1f} s after sending stopped"
    )
    add("   device send -> visible in Redis, per interval of the run:")
    step = max(args.sample_every, 1.0)
    buckets: dict[int, list[float]] = {}
    for at, latency in soak.timeline:
        buckets.setdefault(int(at // step), []).append(latency)
    for index in sorted(buckets):
        ordered = sorted(buckets[index])
        add(
            f"     {index * step:5.0f}-{(index + 1) * step:<5.0f} s  "
            f"{rate(len(ordered), step):6.0f}/s visible  p50 {ms(percentile(ordered, 0.5))}  "
            f"p99 {ms(percentile(ordered, 0.99))}  max {ms(percentile(ordered, 1.0))}"
        )
    add("")
    add("   RSS (VmRSS, MiB) of every process over the run:")
    names = [n for n, v in samples.kib.items() if any(x is not None for x in v)]
    add("     " + f"{'t (s)':>7s} " + " ".join(f"{n[:10]:>10s}" for n in names))
    for i, at in enumerate(samples.times):
        add("     " + f"{at:7.0f} " + " ".join(f"{_mib(samples.kib[n][i]):>10s}" for n in names))
    add(
        "     growth "
        + ", ".join(f"{n} {_growth(samples.kib[n], samples.times)}" for n in names)
        + " (from the second sample to the last)"
    )
    add("")
    add("   CPU (% of one core) of every process since the previous sample:")
    add("     " + f"{'t (s)':>7s} " + " ".join(f"{n[:10]:>10s}" for n in names))
    for i, at in enumerate(samples.times[1:], start=1):
        cells = " ".join(f"{_cpu_percent(samples, n, i):>10s}" for n in names)
        add("     " + f"{at:7.0f} " + cells)
    limit = facts.settings.kafka.embedded_max_mb
    add(
        f"   broker recycles (kafka.embedded_max_mb {limit}, as `up` does them): {len(recycles)}"
        " (lines sent while ingest is held wait for it; past ingest.hold_wait_s they get"
        " ERR, which this driver does not resend)"
    )
    for at, outcome in recycles:
        add(
            f"     at {at:5.0f} s: {outcome.before_mib:.0f} -> {outcome.after_mib:.0f} MiB, "
            f"ingest held {outcome.held_s:.1f} s"
        )
    add("")
    add(f"total bench time {facts.total_s:.0f} s")
    return "\n".join(out)
