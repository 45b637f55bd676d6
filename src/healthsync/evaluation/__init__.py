"""Measured alarm quality: labelled scenarios, the engine against a naive baseline.

``healthsync eval`` loads scenario files (:mod:`.scenario`), generates labelled
readings in virtual time (:mod:`.generate`), runs the clinical anomaly engine
and a naive per-sample threshold over them (:mod:`.detectors`), scores both
against the labels (:mod:`.scoring`, pure functions) and prints the figures
with the targets met or missed (:mod:`.report`).
"""
