"""Stages that give way: a lower CPU priority, for the session `up` starts them in only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from healthsync.config import Settings

PROBE = """
import os
from healthsync.priority import give_way
give_way({nice})
print(os.getpriority(os.PRIO_PROCESS, 0))
print((open("/proc/self/autogroup").read().split() or ["none"])[-1])
"""


def run_probe(nice: int, *, own_session: bool) -> tuple[int, int | None]:
    """The child's nice and its autogroup's nice after give_way(nice).

    None for the autogroup when the child is in the kernel's default group,
    whose file reads empty: a session that never called setsid (a process
    tree started straight from init, as some CI runners are) has no autogroup
    of its own to give away.
    """
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(nice=nice)],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
    )
    priority, autogroup = result.stdout.split()
    return int(priority), None if autogroup == "none" else int(autogroup)


def autogroup_nice() -> int | None:
    """This process's autogroup nice, None in the kernel's default group."""
    fields = Path("/proc/self/autogroup").read_text().split()
    return int(fields[-1]) if fields else None


def test_a_stage_in_its_own_session_gives_way_with_its_autogroup() -> None:
    """As `up` starts a stage: its own nice and its session's share of the CPU both drop."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert run_probe(7, own_session=True) == (min(base + 7, 19), 7)


def test_a_stage_started_from_a_terminal_leaves_the_terminal_session_alone() -> None:
    before = autogroup_nice()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert run_probe(7, own_session=False) == (min(base + 7, 19), before)
    assert autogroup_nice() == before


def test_nothing_changes_with_zero() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert run_probe(0, own_session=True) == (base, 0)


def test_the_defaults_put_the_processor_first() -> None:
    settings = Settings()
    assert 0 < settings.ingest.nice < settings.archive.nice


def test_a_priority_outside_nice_s_range_is_refused() -> None:
    with pytest.raises(ValueError, match="nice"):
        Settings(archive={"nice": 20})
