"""FHIR R4 (4.0.1): resources built from readings, alerts and NEWS2 scores; profiles; EHR push.

Every id is derived from what the resource describes (reading, alert, patient,
device, NEWS2 time), so a replayed reading maps to the same resources.
"""
