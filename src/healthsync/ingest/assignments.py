"""The ingest side of device-to-patient assignment: whether a device may send for a patient.

The settings' ``ingest.device_patients`` and the API's assignments (in Redis,
re-read every second; an API assignment overrides the settings for that
device). A device with neither is not restricted. Until the API's assignments
have been read once, no reading is accepted (`known` is False): any device may
be restricted there, and a Redis away when ingest starts must not lift that.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from healthsync.security.crypto import DecryptError
from healthsync.store.assignments import Assignments

log = logging.getLogger(__name__)


class DevicePatients:
    def __init__(self, configured: dict[str, list[str]], from_api: bool = False) -> None:
        self.configured = {device: frozenset(p) for device, p in configured.items()}
        self.assigned: dict[str, frozenset[str]] = {}
        # Whether the API's assignments are known: read once, or none to read (no Redis).
        self.known = not from_api

    def allows(self, device_id: str, patient_id: str) -> bool:
        patients = self.assigned.get(device_id, self.configured.get(device_id))
        return patients is None or patient_id in patients

    async def refresh(self, store: Assignments | None) -> None:
        """Re-read the API's assignments; on failure the last ones stay in force."""
        if store is None:
            return
        try:
            self.assigned = await store.all()
            self.known = True
        except (RedisError, DecryptError, ValueError) as exc:
            log.warning("keeping the previous device assignments", extra={"error": str(exc)})
