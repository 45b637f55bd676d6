"""Devices that go quiet: the technical ``device_offline:<device>`` alert.

A device is offline once it has sent nothing for ``offline_factor`` times its
usual interval (the one it measures at, however its readings arrive), widened by
half the range of its recent delays (at most doubled, and doubled for its first
readings; at least ``offline_min_s``), on the receive clock. It is back with its
next reading. A device that starts sending for another patient was moved: the
old patient forgets it, and its offline alert there resolves.

A patient none of whose devices has sent for the live cache's retention has
left (discharged, or the monitor went to another bed unannounced): the engine
forgets them and the live sink removes their live records (:func:`forget_departed`).
"""

from __future__ import annotations

from collections.abc import Callable

from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.clock import DeviceClock
from healthsync.stream.lifecycle import Lifecycle
from healthsync.stream.state import PatientState


def offline_kind(device_id: str) -> str:
    return f"device_offline:{device_id}"


def heard(state: PatientState, device_id: str, at: float, ts: float) -> None:
    """A reading from the device, received `at` and measured at `ts`."""
    clock = state.devices.get(device_id)
    if clock is None:
        state.devices[device_id] = DeviceClock(at, measured=ts)
    else:
        clock.heard(at, ts)


def back_online(
    open_alerts: dict[tuple[str, str], Alert], patient: str, device_id: str, at: float
) -> list[AlertEvent]:
    alert = open_alerts.pop((patient, offline_kind(device_id)), None)
    if alert is None:
        return []
    alert.status = "resolved"
    alert.resolved_at = alert.updated_at = at
    alert.value = 0.0
    return [AlertEvent("resolved", alert.snapshot())]


# How much of a device's recent delay range widens its offline limit (at most doubling it).
# The silence before a reading is its interval plus how much longer it was delayed than
# the reading before it. On slow_devices.toml's 15 s monitors, delayed 0-30 s with 2 s of
# jitter, a 45 s limit was passed 10-16 times a draw by readings that came (45.4 s after
# the one before, for one measured 19.5 s after it and delayed 28.6 s). Over seeds 1-3,
# chosen on: 38 of 146 offline alerts outside every dropout with no widening, 0 with half
# the range or all of it, while the dropouts alerted fell from 110 of 125 to 107 and 102.
# Checked on seeds 20-25: 43 -> 2 outside dropouts, 224 -> 220 of 265 dropouts alerted.
DELAY_SHARE = 0.5
# Until a device has sent this many readings, its limit is widened all the way (doubled):
# its interval is learnt from a few jittered gaps and its delays from fewer. A 15 s
# monitor whose first gap measured 10.6 s and whose third reading spent 25 s on the
# network was called offline 35 s after its first reading arrived, while sending. On
# slow_devices.toml (81 draws, 3,321 dropouts, docs/ALARMS.md) every offline alert
# raised while a device was sending came within its first seven readings: 13 with no
# warm-up, 2 with 3 readings, 1 with 4, none with 5 or 10. The cost is dropouts in a
# device's first minutes, alerted at twice the usual silence: 2,752 detected -> 2,748,
# 2,745, 2,740 and 2,699; with 5, the 12 lost began 67-267 s into the run. A 5 s
# monitor's limit is mostly offline_min_s (30 s) either way.
WARMUP_READINGS = 5


def offline_limit(cfg: AnomalySettings, clock: DeviceClock) -> float | None:
    """How long the device may be silent, on the receive clock, before it is offline
    (None while one reading has said nothing about how often it sends)."""
    if clock.interval is None:
        return None
    usual = cfg.offline_factor * clock.interval
    learnt = clock.count >= WARMUP_READINGS
    widening = min(DELAY_SHARE * clock.delay_range, usual) if learnt else usual
    return max(usual + widening, cfg.offline_min_s)


def gone_quiet(
    cfg: AnomalySettings,
    life: Lifecycle,
    patient: str,
    state: PatientState,
    now: float,
) -> list[AlertEvent]:
    events: list[AlertEvent] = []
    for device_id, clock in state.devices.items():
        limit = offline_limit(cfg, clock)
        if limit is None:
            continue
        kind = offline_kind(device_id)
        silent = now - clock.last
        if silent <= limit or (patient, kind) in life.open:
            continue
        alert = Alert(
            alert_id=life.alert_id(patient, kind, f"{clock.last:.3f}"),
            patient_id=patient,
            kind=kind,
            vital=None,
            severity="warning",
            status="open",
            opened_at=now,
            updated_at=now,
            value=round(silent, 1),
            band=f"<= {limit:.0f} s",
            reading_id="",
            category="technical",
            rule=(
                f"no data from device {device_id} for {silent:.0f} s "
                f"(usual interval {clock.interval:.1f} s, limit {limit:.0f} s)"
            ),
            window_s=round(silent, 1),
            device_id=device_id,
        )
        life.open[(patient, kind)] = alert
        events.append(AlertEvent("opened", alert.snapshot()))
    return events


def forget_departed(
    states: dict[str, PatientState],
    device_patient: dict[str, str],
    owns: Callable[[PatientState], bool],
    now: float,
    after_s: float,
) -> list[str]:
    """Forget the owned patients not heard from for `after_s` at `now` (receive clock).

    Their open alerts stay, and resolve as ever if they come back; their state
    then starts afresh.
    """
    horizon = now - after_s
    gone = [
        patient
        for patient, state in states.items()
        if owns(state) and (heard := state.last_heard()) is not None and heard < horizon
    ]
    for patient in gone:
        for device in states.pop(patient).devices:
            if device_patient.get(device) == patient:
                del device_patient[device]
    return gone
