"""A held jump stands once it has lasted its hold, give or take the device's jitter (one
sampling interval's share, screening.JITTER_SLACK); a sudden fall in SpO2 and a rise held
as long as a monitor waits count without it. Which holds have the slack is decided by
the kind of jump, never by the length of the hold."""

from __future__ import annotations

from dataclasses import replace

import pytest

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.rules import AnomalySettings
from tests.stream.engine_cases import T0, Run, reading


@pytest.mark.parametrize(
    "settings",
    [
        AnomalySettings(),
        # Another vital's hold set to the artefact hold's 10 s: the systolic's jump keeps
        # its slack all the same. It was decided by the hold's length, and a rise hold or
        # desaturation hold equal to the artefact hold took the slack from every jump.
        AnomalySettings(rise_hold_s={"resp_rate": 10.0}),
        AnomalySettings(desaturation_hold_s=10.0),
    ],
    ids=["defaults", "rise-hold-10", "desaturation-hold-10"],
)
def test_a_sudden_hypotension_swinging_with_each_breath_stands_after_the_hold(
    settings: AnomalySettings,
) -> None:
    # Recorded: systolic 135 -> 68, 67, 80 over 9.1 s. A pressure swings with breathing by
    # up to about 10 mmHg even when steady, so a real new pressure scatters as widely as
    # that: it stands after the 10 s artefact hold, given a device's jitter of up to one
    # interval, as a rhythm that reads alike does.
    run = Run(settings)
    for before, bp_sys in [(-14.6, 127), (-10.1, 126), (-4.5, 133), (-0.3, 135)]:
        run.send(reading(before, bp_sys=bp_sys))
    events: list[AlertEvent] = []
    for t, bp_sys in [(5.0, 68), (9.0, 67), (14.1, 80)]:
        events += run.send(reading(t, bp_sys=bp_sys))
    opened = [(e.alert.kind, round(e.alert.opened_at - T0, 1)) for e in events]
    assert opened == [("threshold:bp_sys", 14.1)]


def test_a_jump_set_aside_keeps_its_jitter_slack_for_a_late_sample_across_a_restart() -> None:
    # The same hypotension, its third sample (78) delayed past the pressure's return to 130:
    # the run was set aside, and the late sample shows it lasted its hold, given the
    # jitter. The processor restarts in between, so the run comes back from the saved
    # state; a rise hold of the artefact hold's length elsewhere changes nothing.
    settings = AnomalySettings(rise_hold_s={"resp_rate": 10.0})
    run = Run(settings)
    events: list[AlertEvent] = []
    before = [(-14.6, 127), (-10.1, 126), (-4.5, 133), (-0.3, 135)]
    for t, bp_sys in [*before, (5.0, 68), (9.0, 67), (19.2, 130)]:
        events += run.send(reading(t, bp_sys=bp_sys))
    assert events == [], "set aside: back at 130, with only 4 s of the fall seen"
    saved = dict(run.states)
    run = Run(settings, load_states=lambda patients: {p: saved[p] for p in (patients or saved)})
    events += run.send(replace(reading(14.1, bp_sys=78), received_at=T0 + 20.5))
    opened = [(e.alert.kind, round(e.alert.opened_at - T0, 1)) for e in events]
    assert opened == [("threshold:bp_sys", 14.1)]


@pytest.mark.parametrize(
    ("settings", "opened"),
    [
        # By its length, the 10 s artefact hold has the slack: the late 78 makes it stand.
        (AnomalySettings(), [("threshold:bp_sys", 14.1)]),
        # With a rise hold of 10 s as well, the length alone cannot tell them apart: the run
        # is judged without the slack, as it was before the kind was saved.
        (AnomalySettings(rise_hold_s={"resp_rate": 10.0}), []),
    ],
    ids=["defaults", "rise-hold-10"],
)
def test_a_run_set_aside_in_a_state_saved_without_its_slack_is_judged_by_its_holds_length(
    settings: AnomalySettings, opened: list[tuple[str, float]]
) -> None:
    run = Run(settings)
    for t, bp_sys in [(-14.6, 127), (-10.1, 126), (-4.5, 133), (-0.3, 135)]:
        run.send(reading(t, bp_sys=bp_sys))
    for t, bp_sys in [(5.0, 68), (9.0, 67), (19.2, 130)]:
        run.send(reading(t, bp_sys=bp_sys))
    saved = {p: dict(state) for p, state in run.states.items()}
    [(vital, aside)] = saved["P-1"]["aside"].items()
    assert (vital, len(aside)) == ("bp_sys", 4)
    saved["P-1"]["aside"] = {vital: aside[:3]}  # as saved before the slack was kept
    run = Run(settings, load_states=lambda patients: {p: saved[p] for p in (patients or saved)})
    events = run.send(replace(reading(14.1, bp_sys=78), received_at=T0 + 20.5))
    assert [(e.alert.kind, round(e.alert.opened_at - T0, 1)) for e in events] == opened
