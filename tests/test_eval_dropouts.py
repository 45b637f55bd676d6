"""`healthsync eval`'s scoring of the engine's technical alarms against the labelled
dropouts: detections, delays and devices called offline while they were sending."""

from __future__ import annotations

from healthsync.domain.readings import Reading
from healthsync.evaluation.detectors import Alarm
from healthsync.evaluation.dropouts import score_dropouts
from healthsync.evaluation.generate import Artefact


def offline(patient: str, at: float, device: str | None = None) -> Alarm:
    device = device or f"mon-{patient}"
    return Alarm(patient, at, f"device_offline:{device}", "technical", device_id=device)


def dropout(start: float, end: float, patient: str = "P1") -> Artefact:
    return Artefact(patient, "dropout", None, start, end)


def reading(
    ts: float, received_at: float | None = None, patient: str = "P1", device: str | None = None
) -> Reading:
    return Reading(
        reading_id=f"r-{patient}-{ts}",
        device_id=device or f"mon-{patient}",
        patient_id=patient,
        ts=ts,
        received_at=ts if received_at is None else received_at,
        vitals={"heart_rate": 80.0},
    )


def test_an_offline_alarm_during_the_dropout_detects_it_with_its_delay_from_the_start() -> None:
    sent = [reading(95), reading(205)]
    result = score_dropouts([dropout(100, 200)], [offline("P1", 130)], sent, until=1000)
    assert (result.dropouts, result.detected, result.false_alerts) == (1, 1, 0)
    assert result.median_delay == 30
    # Another patient's device going offline says nothing about this one's dropout.
    other = score_dropouts([dropout(100, 200)], [offline("P2", 130)], sent, until=1000)
    assert (other.detected, other.false_alerts) == (0, 1)


def test_the_dropout_lasts_until_the_first_reading_after_it_arrives() -> None:
    # The device measured again at 205, but that reading spent 25 s on the network:
    # until it arrived, the ward saw nothing, and an alarm at 220 is right.
    readings = [reading(95), reading(205, received_at=230), reading(210, received_at=231)]
    late = score_dropouts([dropout(100, 200)], [offline("P1", 220)], readings, until=1000)
    assert (late.detected, late.false_alerts) == (1, 0)
    # Once it arrived the device was back: an alarm after that is a false one.
    after = score_dropouts([dropout(100, 200)], [offline("P1", 232)], readings, until=1000)
    assert (after.detected, after.false_alerts) == (0, 1)


def test_each_device_is_silent_until_its_own_first_reading_after_the_dropout_arrives() -> None:
    # A cuff measuring every 15 minutes lost one measurement to a 10-minute dropout: it
    # was silent until its next one, long after the monitor was back.
    readings = [
        reading(90),
        reading(0, device="cuff-P1"),
        reading(700, received_at=702),
        reading(1800, received_at=1810, device="cuff-P1"),
    ]
    alarms = [offline("P1", 130), offline("P1", 1805, device="cuff-P1")]
    result = score_dropouts([dropout(100, 700)], alarms, readings, until=3600)
    assert (result.detected, result.median_delay, result.false_alerts) == (1, 30, 0)
    # The monitor called offline then, once its own readings were arriving again, is false.
    late = [offline("P1", 130), offline("P1", 1805)]
    assert score_dropouts([dropout(100, 700)], late, readings, until=3600).false_alerts == 1


def test_dropouts_with_no_reading_between_them_are_one_silence() -> None:
    # Two labelled dropouts overlap, and the alarm opened in the first stays open
    # through the second: the device was silent throughout, and one alarm said so.
    sent = [reading(95), reading(245), reading(400)]
    alarms = [offline("P1", 130)]
    one = score_dropouts([dropout(100, 200), dropout(180, 240)], alarms, sent, until=1000)
    assert (one.dropouts, one.detected, one.false_alerts) == (1, 1, 0)
    # With a reading between them they are two, and the second needs an alarm of its own.
    two = score_dropouts([dropout(100, 200), dropout(300, 390)], alarms, sent, until=1000)
    assert (two.dropouts, two.detected) == (2, 1)


def test_a_dropout_past_the_end_of_the_run_is_cut_there() -> None:
    # 30 s of it fall inside a run that ends at 330: a short dropout, and a miss.
    result = score_dropouts([dropout(300, 500)], [], [reading(295)], until=330)
    assert (result.dropouts, result.long_dropouts, result.detected) == (1, 0, 0)
    # Late readings of other devices keep the replay going past the end: nothing came
    # back from this one, so an alarm then is still about its dropout.
    caught = score_dropouts([dropout(300, 500)], [offline("P1", 345)], [reading(295)], until=330)
    assert (caught.detected, caught.false_alerts) == (1, 0)


def test_long_dropouts_are_counted_apart_and_clinical_alarms_ignored() -> None:
    dropouts = [dropout(100, 120), dropout(400, 520), dropout(900, 1000)]
    clinical = Alarm("P1", 950, "threshold:spo2", vitals=frozenset({"spo2"}))
    alarms = [offline("P1", 130), offline("P1", 440), clinical]
    sent = [reading(t) for t in (95, 135, 395, 525, 895, 1005)]
    result = score_dropouts(dropouts, alarms, sent, until=2000, long_dropout_s=60)
    assert (result.dropouts, result.detected) == (3, 2)
    assert (result.long_dropouts, result.long_detected) == (2, 1)
    assert (result.median_delay, result.false_alerts) == (35, 0)
