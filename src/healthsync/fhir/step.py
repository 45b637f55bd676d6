"""The FHIR step of the processor: adds each batch's FHIR resources to it."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import islice
from typing import Any

from healthsync.domain.alerts import DEFAULT_THRESHOLDS, Threshold
from healthsync.domain.batch import Batch, ReadingBundle
from healthsync.domain.readings import Reading
from healthsync.fhir.alerts import alert_resources
from healthsync.fhir.bundle_json import BundleEncoder
from healthsync.fhir.ids import fhir_id
from healthsync.fhir.news2 import news2_resources
from healthsync.fhir.observations import ObservationBuilder
from healthsync.fhir.patients import demographics_of, device_for, patient_for
from healthsync.fhir.terminology import Resource, ResourceLoader

# Patients and devices remembered per processor; beyond this the oldest are forgotten
# (and read back from the store when they come again).
_CACHE_LIMIT = 100_000


def _bound(cache: dict[str, Any]) -> None:
    excess = len(cache) - _CACHE_LIMIT
    if excess > 0:
        for key in list(islice(cache, excess)):
            del cache[key]


class FhirResources:
    """A Step: adds the batch's FHIR resources to it, keyed by patient id.

    To ``batch.observations``, in order: Patient and Device resources that are
    new or changed, and per patient a NEWS2 Observation and RiskAssessment when
    the score changed. To ``batch.bundles``: per reading a collection Bundle of
    its Observations (:func:`~healthsync.fhir.observations.reading_bundle`),
    encoded as JSON (:class:`BundleEncoder`). To
    ``batch.alert_resources``: per alert event the alert's Communication and
    Flag. Which patients and devices were emitted, with what, is remembered;
    a patient or device not remembered is looked up in the store first (`load`)
    so a restart does not overwrite a Patient with fewer demographics. A patient
    who left (``batch.departed``) is forgotten, as the store forgets their Patient.
    `id_key` (the codec's id key) keys the ``h-`` ids of patient and device
    ids that are no FHIR ids, and NEWS2 ids (see :func:`fhir_id`).
    """

    def __init__(
        self,
        mrn_system: str,
        load: ResourceLoader | None = None,
        thresholds: Iterable[Threshold] = DEFAULT_THRESHOLDS,
        id_key: bytes | None = None,
    ) -> None:
        self.mrn_system = mrn_system
        self.load = load
        self.id_key = id_key
        self.builder = ObservationBuilder(thresholds, id_key)
        self.encoder = BundleEncoder(self.builder)
        self.patients: dict[str, dict[str, str]] = {}
        self.devices: set[str] = set()
        self.news2: dict[str, tuple[int, str, bool]] = {}

    def on_assign(self, partitions: Collection[int]) -> None:
        # Another processor may have changed these while the partitions were elsewhere.
        self.patients.clear()
        self.devices.clear()
        self.news2.clear()

    def process(self, batch: Batch) -> None:
        readings = batch.readings
        self._load_unknown(readings)  # the only part that can fail: before any change
        for patient in batch.departed:
            # The store removes their Patient: should they come back, it is written again.
            self.patients.pop(patient, None)
            self.news2.pop(patient, None)
        out = batch.observations
        self._patients_and_devices(readings, out)
        encode, bundles = self.encoder.encode, batch.bundles
        for reading in readings:
            bundle = encode(reading)
            if bundle is not None:  # a nurse's ACVPU or oxygen status alone makes none
                bundles.append(ReadingBundle(reading.patient_id, reading.reading_id, bundle))
        for patient, score in batch.scores.items():
            signature = (score.total, score.band, score.complete)
            if self.news2.get(patient) != signature:
                self.news2[patient] = signature
                out.extend((patient, r) for r in news2_resources(patient, score, self.id_key))
        _bound(self.news2)
        for event in batch.alert_events:
            alert = event.alert
            batch.alert_resources.extend(
                (alert.patient_id, r) for r in alert_resources(alert, self.id_key)
            )

    def _load_unknown(self, readings: list[Reading]) -> None:
        if self.load is None:
            return
        known_patients, known_devices, id_key = self.patients, self.devices, self.id_key
        patients = {
            fhir_id(r.patient_id, id_key): r.patient_id
            for r in readings
            if r.patient_id not in known_patients
        }
        devices = {
            fhir_id(r.device_id, id_key): r.device_id
            for r in readings
            if r.device_id not in known_devices
        }
        stored_patients = self.load("Patient", list(patients)) if patients else {}
        stored_devices = self.load("Device", list(devices)) if devices else {}
        for key, stored in stored_patients.items():
            self.patients[patients[key]] = demographics_of(stored)
        self.devices.update(devices[key] for key in stored_devices)

    def _patients_and_devices(
        self, readings: list[Reading], out: list[tuple[str, Resource]]
    ) -> None:
        changed: dict[str, float] = {}
        new_devices: dict[str, tuple[str, float]] = {}
        for reading in readings:
            patient = reading.patient_id
            known = self.patients.get(patient)
            if known is None or (reading.patient and not reading.patient.items() <= known.items()):
                self.patients[patient] = {**(known or {}), **reading.patient}
                changed[patient] = max(changed.get(patient, reading.ts), reading.ts)
            if reading.device_id not in self.devices:
                self.devices.add(reading.device_id)
                new_devices[reading.device_id] = (patient, reading.ts)
        for patient, updated in changed.items():
            demographics = self.patients[patient]
            resource = patient_for(patient, demographics, self.mrn_system, updated, self.id_key)
            out.append((patient, resource))
        for device, (patient, first_seen) in new_devices.items():
            out.append((patient, device_for(device, first_seen, self.id_key)))
        _bound(self.patients)
        if len(self.devices) > _CACHE_LIMIT:
            self.devices.clear()
