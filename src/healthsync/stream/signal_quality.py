"""Signal quality: which of a reading's vitals its device says it measured too poorly
to trust.

A pulse oximeter may report a signal quality index (``sqi``, 0-1) or the
perfusion index (``pi``, %) with its reading (docs/DESIGN.md, the wire
protocol). Below these limits its SpO2 and the pulse it counts from the same
probe are probable artefacts, which the engine sets aside at once.
"""

from __future__ import annotations

from collections.abc import Mapping

# Signal quality below this (``sqi``, 0-1) marks a pulse-oximeter sample as a probable artefact.
POOR_SQI = 0.5
# A perfusion index (%) below this makes SpO2 unreliable (motion, cold fingers).
POOR_PI = 0.3
# The vitals a pulse oximeter's signal quality speaks for: SpO2, and the pulse it counts
# from the same probe, unless the reading comes from a monitor whose ECG leads count it
# (one that also measures the respiratory rate, across those leads).
OXIMETRY = ("spo2", "heart_rate")
_PROBE_ONLY = ("spo2",)


def poor_signal(quality: Mapping[str, float], vitals: Mapping[str, float]) -> tuple[str, ...]:
    """The vitals of a reading whose pulse-oximetry signal the device says is too poor
    to trust (none if it says nothing of the kind)."""
    sqi, pi = quality.get("sqi"), quality.get("pi")
    if not ((sqi is not None and sqi < POOR_SQI) or (pi is not None and pi < POOR_PI)):
        return ()
    return _PROBE_ONLY if "resp_rate" in vitals else OXIMETRY
