"""CPU per process and peak memory, sampled from /proc."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """CPU time the process has used so far (all threads), or None if it is gone."""
    ticks = _proc_cpu_ticks(pid)
    return None if ticks is None else ticks / _CLK_TCK


def _proc_cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def _proc_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:4] if a]
    return " ".join(words)[:60] or "?"


def cpu_snapshot() -> dict[int, int]:
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            value = _proc_cpu_ticks(int(entry))
            if value is not None:
                ticks[int(entry)] = value
    return ticks


def cpu_percent(before: dict[int, int], after: dict[int, int], seconds: float) -> dict[int, float]:
    """CPU use per process over the interval, 100 = one core busy all the time."""
    return {
        pid: 100.0 * (ticks - before.get(pid, 0)) / _CLK_TCK / seconds
        for pid, ticks in after.items()
        if ticks > before.get(pid, 0)
    }


@dataclass
class Usage:
    """CPU per process over an interval (100 = one core) and the names of the busy ones."""

    cpu: dict[int, float]
    names: dict[int, str]

    def of(self, pid: int) -> float:
        return self.cpu.get(pid, 0.0)

    def others(self, exclude: Iterable[int], floor: float = 3.0) -> str:
        skip = set(exclude)
        busy = sorted(
            ((pct, pid) for pid, pct in self.cpu.items() if pid not in skip and pct >= floor),
            reverse=True,
        )
        return (
            ", ".join(f"{self.names.get(pid, '?')} (pid {pid}) {pct:.0f}%" for pct, pid in busy[:4])
            or f"none >= {floor:.0f}%"
        )


class UsageMeter:
    """Measures CPU use of every process from construction until :meth:`stop`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.before = cpu_snapshot()

    def stop(self) -> Usage:
        after = cpu_snapshot()
        cpu = cpu_percent(self.before, after, time.perf_counter() - self.started)
        return Usage(cpu, {pid: _proc_name(pid) for pid, pct in cpu.items() if pct >= 1.0})


def vm_status(pid: int, key: str) -> int | None:
    """A /proc/<pid>/status field in KiB (VmHWM: peak resident set)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def busy_others(exclude: set[int], seconds: float = 1.0) -> str:
    """Other processes using more than 5% of a core right now."""
    meter = UsageMeter()
    time.sleep(seconds)
    return meter.stop().others(exclude, floor=5.0)
