"""The clinical rules the anomaly engine applies, as settings: defaults, and per-patient overrides.

Every number here is a default a deployment can change (``[anomaly]`` in the
TOML file, ``HEALTHSYNC_ANOMALY_*`` in the environment, or per patient through
the API). Where a default comes from:

- Threshold bands (``DEFAULT_LIMITS``, with a patient's overrides, in
  :mod:`healthsync.domain.bands`): the warning band is where NEWS2 (Royal
  College of Physicians 2017) scores a single parameter 2 or 3; the critical
  limits are the values at which the RCP chart's 3-point band is well passed
  (SpO2 <= 85, HR <= 40 or >= 140, RR <= 6 or >= 30, ...).
- Persistence (10 s and 2 readings): delaying alarms by 14-19 s removed
  50-67% of the alarms nobody acted on (Görges et al., Anesth Analg 2009); a
  bedside monitor's usual alarm delay is 15 s. The engine sets probable
  artefacts aside before persistence starts, so it can wait less: with 10 s
  the median delay on ``scenarios/`` fell from 16-17 s to 12-13 s (the monitor's
  is 18-19 s), with no more false threshold alerts on the stable cohort.
- A warning whose samples lie, by their median, less far past the limit than
  the vital's hysteresis margin (systolic 86-89, SpO2 89) must hold
  ``marginal_persist_s`` (15 s, a monitor's alarm delay, so never later than
  one, and all of it: no jitter slack, which on a 10 s monitor made 12.5 s
  count and alarmed where a monitor does not): three noisy samples of a
  patient sitting at 93 mmHg made most false systolic alerts. False
  threshold alerts on ``stable.toml`` and ``deterioration.toml``, each file's
  seed and seeds 1-8: 12 -> 2; the median delay rose by 0-1.3 s (0.3 s on
  most draws).
- Critical values are confirmed by two samples at least 10 s apart: sooner
  than a monitor's 15 s alarm delay, yet past the 1-2 sample probe and lead
  artefacts (5-10 s) that, opened at once, made 183 of the engine's 185
  false alerts on ``scenarios/artefacts.toml`` (all of them critical).
  Görges et al. found that most false alarms last under 10 s; a 10 s
  confirmation keeps the engine ahead of the monitor on every critical episode.
- Hysteresis (back inside the band by a margin, for 30 s): stops an alert from
  flapping open/resolved while a value hovers at a limit.
- Trends: a fall in SpO2 of 4 points within 5 minutes, a rise in heart rate of
  30/min within 10 minutes, a rise in respiratory rate of 8/min within 10 minutes.
- Trend levels: the current level is the median of the last 5 samples and a
  time bucket holding one sample is no reference; a rise from within the
  hysteresis margin of the low limit (or a fall from near the high one) is a
  recovery, not a trend. With 3 samples and single-sample buckets, two noisy
  samples made 4-point SpO2 "falls" on stable patients, and the climb back
  after a bradycardia read as a tachycardia coming on (false trend alerts on
  ``scenarios/``, each file's seed and seeds 1-3: 33 -> 12).
- A trend must be sustained: the reference is a level held for 30 s (the mean
  of as many neighbouring buckets as span it, so not one 15 s bucket at a noise
  peak), the change must hold for ``trend_persist_s`` (20 s), and a change in a
  window that held a sample beyond the band on the side it comes from is the
  way back from an episode (bucket means that mix a short bradycardia with the
  samples either side are inside the band). False trend alerts on
  ``scenarios/``, each file's seed and seeds 1-8: 26 -> 1; no episode later.
- A change that leaves a vital nearer the patient's own learnt baseline than
  the level it came from (once that baseline is trusted) is the way back to
  their normal, not a trend: the climb back after a bradypnoea, slower than
  the trend's 10 minutes, read as a rise of 8/min from its middle once the
  samples below the band had left the window, while the patient breathed at
  their usual 18-20/min. On ``deterioration.toml`` seeds 61 and 65 (found
  there) false alerts 1 -> 0 each (the monitor's 0); over each file's seed
  and seeds 1-8 and 20-31 one alert fewer (one that opened within an
  episode's window, so not counted false), nothing else changed; nothing else
  changed on seeds 60-69 either.
- A baseline learns only from samples inside the patient's band, none while
  the vital's threshold or level alert is open (it learnt a watched recovery,
  and missed the next fall), and time spent outside their normal adds no
  weight to the next sample it learns. It
  learnt every sample within four of its deviations, which grew as it learnt:
  a bradypnoea creeping from 19 to 6/min took it down to 14/min, so the climb
  back to 21-22 read as a rise away from the patient's own rate
  (``deterioration.toml`` seed 89, where it was found: false alerts 1 -> 0).
  Slow deteriorations now stand out from it sooner: over each file's seed
  and seeds 1-8 and 20-31 ten episodes were raised 3-175 s sooner, none
  later, and no false alert was added.
- Artefacts: jumps larger than a vital can physiologically change between two
  samples a few seconds apart (a probe moved, a cuff knocked), held until the
  new level has stood for 10 s, or a sample comes back nearer the old one. The
  10 s allow for the device's timing jitter (a quarter of its interval), so a
  5 s monitor's third sample at 9.8 s ends the hold: lead, talking and cuff
  spikes last 1-2 samples, so none stands sooner, and the median delay on
  ``scenarios/`` fell 0.4-1.3 s with no false alert more (each file's seed and
  seeds 1-2). The SpO2 hold below takes no slack: with it, clustered probe dips
  four samples long stood and made false critical alerts. A held run stands
  only as a level: the samples that show its last hold (from the latest one a
  full hold before the newest) must lie within ``steady_spread`` (half the vital's
  ``max_jump``; SpO2 4, an oximeter's +-2) of
  each other (a changed rhythm or pressure reads alike
  sample after sample; lead and probe artefacts scatter). Two spikes back to
  back outlasted the hold; false alerts on ``scenarios/artefacts.toml`` (its
  seed and seeds 1-2) 8 -> 4 (seeds 4-5: 2 -> 0), no episode detected later.
  A held heart or respiratory rate stands after the hold only within
  ``level_spread`` (10/min, 3/min: a changed rhythm or breathing pattern reads
  alike on a monitor's averaged samples); wider, though within the steady
  spread, it stands after ``scattered_hold_s`` (15 s, a monitor's alarm delay,
  so never later than a monitor). Two lead or talking spikes back to back
  (158, 165, 175/min over 10 s) stood as a new rhythm and opened critical
  alerts that a monitor does not raise; a rapid irregular rhythm is raised
  with the monitor, not 5 s before it. Not for pressures, which swing with
  each breath (a real hypotension read 68, 67, 80), nor SpO2.
- A jump up of the respiratory rate is held ``rise_hold_s`` (15 s, without the
  jitter slack): talking lasts longer than the 10 s hold (docs/ALARMS.md).
- A pending warning (threshold or baseline) on a heart or respiratory rate
  whose samples spread wider than the vital's steady spread (20/min, 6/min)
  holds ``scattered_hold_s`` too: two talking spikes back to back (29, 39,
  28/min over 9 s), none of them a jump, made three samples past the band
  over the persistence and opened a warning that a monitor, needing a fourth
  sample, does not raise (``artefacts.toml`` seeds 140 and 141 of a sixth
  held-out set, where it was found: false alerts 1 -> 0 each, the monitor's
  1 and 0). Over each file's seed and seeds 1-8, 20-31, 40-49, 60-69, 80-89,
  100-109, 120-129 and 140-149 (324 draws) false alerts 315 -> 311, no draw's
  median or p90 delay changed. With the level spread (3/min) instead, two real
  bradypnoeas reading 4, 5, 8 and 3, 7, 5/min waited 5-9 s longer.
- A pending heart rate warning whose samples agree within the vital's
  ``level_spread`` (10/min) holds ``steady_persist_s`` (5 s: the second sample
  of a 5 s monitor) instead of ``persist_s``: a monitor's heart rate is averaged
  over beats, and the lead artefacts that scatter it are jumps, held before.
  Over each file's seed and seeds 1-8, 20-31 and 140-149, and seeds 40-49,
  60-69 and 80-89 of ``artefacts.toml`` and ``deterioration.toml``: draws
  with a median of at most 15 s 41 -> 49 and 23 -> 37 of 64; one false alert
  more (42; two lead spikes, 153 and 162, on a patient at 116, no jump). Not
  the respiratory rate, which talking moves alike: false alerts 5 -> 38.
- A marginal heart or respiratory rate warning (41-44/min, 7-8/min) waits
  ``marginal_persist_s`` only while the patient's trusted baseline lies within
  ``moved_baseline_margins`` (3) of its margins of the limit: a patient at 75
  whose rate now reads 42 has moved there, not sat near it, and holds the usual
  persistence. Over 81 draws of ``artefacts.toml`` and ``deterioration.toml``
  (each file's seed and seeds 1-8, 20-31, 40-49, 60-69, 80-89, 100-109,
  120-129, 140-149): draws with a median of at most 15 s 66 -> 72 and 49 -> 61,
  no false alert more. A systolic of 86-89 from 5 margins (a baseline of 115
  or more): 58 hypotensions sooner, no false alert more (at 3, 3 more).
- A respiratory rate below the band whose samples agree within its
  ``level_spread``, on such a moved patient, holds ``steady_fall_persist_s``
  (5 s): talking raises the rate, it does not make it fall (docs/ALARMS.md).
- A sample more than ``max_jump`` from the last kept sample but within it of
  the vital's level (the median of its last 15 s of kept samples) is back
  where the patient was, and is not held: a probe dip kept because a talking
  spike of the respiratory rate rose in the same reading made the 95 after it
  a jump, set aside when the next dip came, and the two dips a critical run
  across it (``artefacts.toml`` seed 67, where it was found: false alerts
  1 -> 0, the monitor's 1). Over each file's seed and seeds 1-8, 20-31 and
  60-69 nothing else changed but two alerts more that are not false, and one
  episode raised sooner (``deterioration.toml`` seed 65: a 36 s hypoxaemia,
  26.5 -> 18.2 s), none later.
- A sample nearer the vital's level than a held run is back, as one nearer
  the level before the jump is: the run was held as a jump from a kept sample
  that was itself away from the level. A probe dip of three samples (74, 85,
  83) whose first came with the respiratory rate 4/min up was kept as
  corroborated, the next two were held as a jump up from 74, and the 95 after
  them read as more of that run, away from 74: the run stood 20 s later and
  opened an SpO2 alert for a dip the patient had left 11 s before
  (``artefacts.toml`` seed 107, where it was found: false alerts 1 -> 0, the
  monitor's 0). Over each file's seed and seeds 1-8, 20-31, 40-49, 60-69,
  80-89 and 100-109 nothing else changed: no alert more or fewer, no episode
  raised sooner or later.
- A sudden fall in SpO2 is held 15 s instead (``desaturation_hold_s``): a
  slipping probe dips for up to three samples (10 s at 5 s samples), and those
  made 9-15 false critical alerts per run of ``scenarios/artefacts.toml`` (now
  1-5). Not held when, in the same reading, the heart rate rose by 10/min and
  the respiratory rate by 4/min (``corroborating_rise``; the pulse alone from an
  oximeter that measures no breathing): hypoxaemia drives both, a probe artefact
  neither. Either alone made probe dips stand: a respiratory rate of 18 against
  its 14 by noise released a 3-sample dip (77, 76, 75) as a critical
  desaturation (``artefacts.toml`` seeds 44 and 63, where it was found: false
  alerts 1 -> 0 each, the monitor's 0). Over each file's seed and seeds 1-8,
  20-31, 140-149, 40-49, 60-69 and 80-89: false alerts on ``artefacts.toml`` 42
  -> 37 (the monitor's 98), on ``slow_devices.toml`` 202 -> 199 (246); one
  draw's median 0.2 s later. An uncorroborated fall is then raised at the sample
  that completes a monitor's 15 s alarm delay, never later. The fall must be a
  jump below SpO2's level and the rise is measured from the other vital's 15 s
  median; a rise larger than that vital's ``max_jump`` is an artefact itself and
  corroborates nothing (an ECG lead spike in the reading where a probe dip ended
  confirmed the dip; false SpO2 alerts on ``scenarios/artefacts.toml``, its seed
  and seeds 1-2: 9 -> 6).
- A fall in SpO2 is sudden past 6 points between two samples (``max_jump``; it
  was 10). An oximeter reports a saturation averaged over several seconds, which
  does not drop that far in one 5 s step without the heart or the breathing
  showing it, while a slipping probe on a patient at 93-94 reads 80-87 for a few
  samples. Below 10 points such dips were no jump, so three of them opened an
  alert at 10 s. A real fall of 7-10 points is still raised no later than a
  monitor would (the 15 s hold above), sooner if corroborated. False alerts on
  ``scenarios/artefacts.toml``, its seed and seeds 1-6: 12 -> 5 with SpO2's
  ``steady_spread`` of 4 (the monitor's: 11); median delay unchanged there, up
  0-0.4 s on ``deterioration.toml``; ``stable.toml`` and ``slow_devices.toml``
  (seeds 1-3) unchanged.
- A desaturation that the heart AND the respiratory rate both corroborate (each
  risen by its ``corroborating_rise`` above its 15 s median, within its
  ``max_jump``, with SpO2 at least ``corroborated_fall`` (3 points) below its
  own) needs ``persist_readings`` samples, not ``persist_s``: the oximeter, the
  ECG and the impedance lead agree, which no single probe, lead or talking
  artefact makes them do. Hypoxaemia driving the heart and the breathing is
  the physiology NEWS2 itself scores (RCP 2017). Median delay over each file's
  seed and seeds 1-8 of ``scenarios/artefacts.toml`` and
  ``scenarios/deterioration.toml`` down 0-2.5 s (hypoxaemia on
  ``deterioration.toml``'s seed 12 -> 7 s), no false alert more.
- NEWS2: a medium score without a red part (the sum of several amber ones)
  must hold 5 minutes (``news2_aggregate_persist_s``); a single red score or a
  high score keeps 30 s. The chart is for observations minutes apart; a patient
  drifting through 5 for half a minute made up to 7 false NEWS2 alerts per
  scenario file (27 -> 7 over each file's seed and seeds 1-3); sitting there
  for 5 minutes is what the score is for. An open NEWS2 alert resolves only
  once the score has been low (0-4) for 5 minutes (``news2_resolve_hold_s``):
  a patient whose amber parts sum to 4-7 for hours kept resolving and
  reopening it (6 false NEWS2 alerts on one patient of
  ``scenarios/deterioration.toml`` seed 6, now 1), and a clinician wants one
  alert for one concern, not a flapping one. No episode detected later. A red
  part at its vital's limit (SpO2 89-91, systolic 86-90) counts once a second
  sample near the limit confirms it, as marginal values wait: false alerts on
  81 draws of ``slow_devices.toml`` 250 -> 222 (docs/ALARMS.md).
- A late sample measured before a pending condition began does not end it:
  the network reorders readings, the patient did not recover. Persistence is
  judged in measurement order, as a monitor at the bedside judges its own
  samples: a late sample begins a run earlier, breaks it where it was measured,
  or completes a run that a sample back inside ended after it; critical samples
  count as consecutive in measurement order too, a late sample less than 1.5
  device intervals before a run's first begins it, and one measured before a
  sample known back inside begins a run that is over. Two critical fevers on
  1 s monitors were raised with the monitor, not 51 s after it; the figures
  and the cases found are in docs/ALARMS.md.
- A device that sends ``spot_check_s`` (4 minutes) apart or more, a blood
  pressure cuff on its 15-minute cycle, takes measurements, not a signal: a
  threshold sample of it clearly past the limit opens at once, as a bedside
  monitor alarms on each non-invasive pressure it completes, since the next
  one is a cycle away. One within the vital's margin of the limit (systolic
  86-89, inside a cuff's own +-5 mmHg, ISO 81060-2) waits for the next, as
  marginal values do. The alert resolves at the first measurement back inside
  by the margin, not 30 s later: that is a cycle later. Monitors send every
  1-60 s, so none is taken for one.
  On ``scenarios/slow_devices.toml`` seed 3 a 32-minute hypotension that only
  one cuff measurement (80) showed was missed by the engine and the monitor;
  over each file's seed and seeds 1-8 episodes caught 224/225 -> 225/225, no
  false alert more (treating every cuff sample so, the marginal ones too, made
  6 more).
- A jump is judged against the vital's last kept sample however long ago it was
  taken, on a monitor; a spot-check device's measurements are not screened for
  jumps. A jump used to count only between samples at most the jump window
  apart (15 s, or 2.5 of the device's intervals), which went wrong both ways.
  The first sample after a dropout became the level unjudged: when it was a
  probe dip, the sample back at the patient's level was held as a jump from
  it, and the next dip continued a critical run across that sample (a 60 s
  monitor's SpO2 83, 99, 82 opened an alert a monitor does not raise). And a
  cuff's window is 2.5 cycles, so a measurement 50 mmHg below the one 15
  minutes before was held as a knocked cuff until the next cycle: a
  hypotension coming on between two measurements was raised a cycle late.
  Over each file's seed and seeds 1-8, 20-31 and 40-49: 19 hypotensions on
  ``slow_devices.toml`` raised 880-920 s sooner (seed 8: 1202 -> 320 s), its
  false alerts on seeds 40-49 33 -> 31 (the monitor's 39), nothing else
  changed. A sudden fall after a dropout is held as any jump is: a 5 s
  monitor's 8-point desaturation after two minutes without data is raised at
  15 s, with a monitor, not at 10 s.
- A vital whose level, the mean of its kept samples over the last minute (at
  least 6; on a device too slow for 6 there, its last 3), has been past its
  warning limit for ``level_persist_s`` (30 s), with the newest sample not
  back inside by the margin, opens a ``level:<vital>`` warning, unless its
  threshold or trend alert, or a NEWS2 alert it scores in, is open; while it
  is open its threshold rule raises only a critical value. A bradypnoea whose
  true rate was 8 read 9, 9, 9, 10, 8, 8, 9, 11, 8, ... for 172 s, and no run
  past the limit lasted as long as the engine or a monitor waits
  (``deterioration.toml`` seed 142: now raised at 100.5 s); on a 60 s monitor,
  8, 9, 7, 9. SpO2, the heart and the respiratory rate only: a systolic
  hovering between 85 and 101 is a patient who is well. Over 324 draws
  episodes of 60 s or more missed 4 -> 1, one false alert more (docs/ALARMS.md).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, NonNegativeFloat, PositiveFloat, model_validator

from healthsync.domain.bands import PatientRules
from healthsync.domain.readings import VITALS
from healthsync.domain.rule_defaults import (
    DEFAULT_BASELINES,
    DEFAULT_LEVEL_SPREAD,
    DEFAULT_MARGIN,
    DEFAULT_MAX_JUMP,
    DEFAULT_MOVED_BASELINE_MARGINS,
    DEFAULT_RISE_HOLD,
    DEFAULT_STEADY_FALL_PERSIST,
    DEFAULT_STEADY_PERSIST,
    DEFAULT_STEADY_SPREAD,
    DEFAULT_TRENDS,
    BaselineRule,
    TrendRule,
)


class AnomalySettings(BaseModel):
    """The anomaly engine: persistence, hysteresis, trends, baselines, artefacts, devices."""

    # A condition must hold this long AND for this many consecutive readings before
    # its alert opens. 0 / 1 turn either part off.
    persist_s: float = Field(10.0, ge=0)
    persist_readings: int = Field(2, ge=1)
    # A warning whose samples lie, by their median, less far past the limit than the
    # vital's margin must hold this long instead; on a vital named in
    # moved_baseline_margins, not while a monitored patient's trusted baseline lies that
    # many of its margins or more inside the limit (they have moved there).
    marginal_persist_s: float = Field(15.0, ge=0)
    moved_baseline_margins: dict[str, PositiveFloat] = Field(
        default_factory=lambda: dict(DEFAULT_MOVED_BASELINE_MARGINS)
    )
    # A critical value opens (or escalates to) a critical alert once two consecutive
    # critical samples span this long; 0 opens at once.
    critical_confirm_s: float = Field(10.0, ge=0)
    # A device that sends this far apart or more (a BP cuff, a spot-check thermometer)
    # takes measurements, not a signal: each of its threshold samples is judged alone.
    spot_check_s: float = Field(240.0, gt=0)
    # A pending condition whose readings stop for this long (or 2.5 of the device's
    # intervals, if longer) starts over.
    pending_gap_s: float = Field(60.0, gt=0)
    # An alert resolves once back inside its band by the margin this long (less the jitter).
    resolve_hold_s: float = Field(30.0, ge=0)
    margins: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MARGIN))
    trends: tuple[TrendRule, ...] = DEFAULT_TRENDS
    # A trend must hold this long (and persist_readings samples) before its alert opens.
    trend_persist_s: float = Field(20.0, ge=0)
    # A vital with a trend rule whose level (the mean of its kept samples over the last
    # minute) has been past its warning limit this long, though its samples never stayed
    # past it for the persistence, opens a warning (``level:<vital>``); None turns it off.
    level_persist_s: float | None = Field(30.0, ge=0)
    baselines: tuple[BaselineRule, ...] = DEFAULT_BASELINES
    # Samples before a patient's baseline is trusted, and how fast it follows (time constant).
    baseline_min_samples: int = Field(30, ge=2)
    baseline_tau_s: float = Field(1800.0, gt=0)
    # A monitor's sample beyond max_jump from the vital's last kept sample (however long
    # ago) is held as a probable artefact: it stands once the new level has held for
    # artefact_hold_s (it then counts from its own time), and is set aside if a sample
    # comes back nearer the old level than the new; silence decides nothing. A run set
    # aside may still stand on a late sample for artefact_window_s (or 2.5 of the
    # device's intervals, if longer). A spot-check device's measurements are not
    # screened for jumps.
    max_jump: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MAX_JUMP))
    # A held run stands only once the samples that show its last hold lie within this
    # much of each other (per vital; a vital not named here: half its max_jump).
    steady_spread: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STEADY_SPREAD))
    artefact_window_s: float = Field(15.0, gt=0)
    artefact_hold_s: float = Field(10.0, ge=0)
    # A held run of a vital named here stands after artefact_hold_s only if the samples that
    # show that hold lie within this much of each other, as a changed rhythm or breathing
    # pattern reads; wider, though within steady_spread (an irregular rhythm, or two lead or
    # talking spikes back to back), only after scattered_hold_s, a monitor's alarm delay. A
    # pending warning on such a vital whose samples spread wider than its steady_spread
    # (those spikes, none of them a jump) also waits scattered_hold_s. On a device sending
    # more often than scattered_hold_s, any held run needs two samples after its jump.
    level_spread: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_LEVEL_SPREAD))
    scattered_hold_s: float = Field(15.0, ge=0)
    # A pending threshold warning on a vital named here whose samples lie within its
    # level_spread (its steady_spread if it has none) of each other holds this long instead
    # of persist_s, if that is shorter, and persist_readings samples still.
    steady_persist_s: dict[str, NonNegativeFloat] = Field(
        default_factory=lambda: dict(DEFAULT_STEADY_PERSIST)
    )
    # The same for a vital named here only below the band, on a patient whose trusted
    # baseline lies moved_baseline_margins of its margins or more inside the low limit.
    steady_fall_persist_s: dict[str, NonNegativeFloat] = Field(
        default_factory=lambda: dict(DEFAULT_STEADY_FALL_PERSIST)
    )
    # A sudden fall in SpO2 is held this long instead: a slipping probe dips for up to
    # three samples. Not held at all when, in the same reading, every vital named here that
    # the reading carries rose by at least its amount above its 15 s median (and by no
    # more than its max_jump): hypoxaemia drives the heart and the breathing, a probe
    # artefact neither.
    desaturation_hold_s: float = Field(15.0, ge=0)
    # A jump up of a vital named here is held this long instead of artefact_hold_s (if not
    # shorter), as a monitor waits (no jitter slack): talking raises the breathing rate.
    rise_hold_s: dict[str, NonNegativeFloat] = Field(
        default_factory=lambda: dict(DEFAULT_RISE_HOLD)
    )
    corroborating_rise: dict[str, float] = Field(
        default_factory=lambda: {"heart_rate": 10.0, "resp_rate": 4.0}
    )
    # An SpO2 fall of at least this much below its level, with every vital of
    # corroborating_rise risen by its amount in the same reading, needs only
    # persist_readings samples, not persist_s.
    corroborated_fall: float = Field(3.0, gt=0)
    # NEWS2 alerts: medium (5-6) or a single red score opens a warning once it has held
    # news2_persist_s (new confusion at once), high (>= 7) a critical alert.
    news2_alerts: bool = True
    news2_persist_s: float = Field(30.0, ge=0)
    # A medium score without a single red part (the sum of amber parts) needs this long.
    news2_aggregate_persist_s: float = Field(300.0, ge=0)
    # A NEWS2 alert resolves once the score has been low (0-4) this long.
    news2_resolve_hold_s: float = Field(300.0, ge=0)
    # A device is offline after max(factor x its usual interval, minimum) without data.
    offline_factor: float = Field(3.0, ge=1)
    offline_min_s: float = Field(30.0, gt=0)
    # A patient none of whose devices has sent for this long has left: the engine forgets
    # them, and the live sink removes their live records. None: the live cache's history
    # retention (the processor's wiring fills it in); the engine alone then forgets nobody.
    forget_after_s: float | None = Field(None, gt=0)
    # Rules per patient id, on top of what the API sets.
    patients: dict[str, PatientRules] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_vitals(self) -> AnomalySettings:
        named = {r.vital for r in self.trends} | {r.vital for r in self.baselines}
        spreads = set(self.steady_spread) | set(self.level_spread) | set(self.steady_persist_s)
        spreads |= set(self.moved_baseline_margins) | set(self.steady_fall_persist_s)
        spreads |= set(self.rise_hold_s)
        vitals = named | set(self.margins) | set(self.max_jump) | spreads
        unknown = sorted(vitals - set(VITALS))
        if unknown:
            raise ValueError(f"unknown vital(s) {unknown}; expected some of {sorted(VITALS)}")
        return self
