"""A patient's alerts opened in any period: Redis for its retention, the archive before it.

Redis holds each alert's current state (with its acknowledgement) while the
alert is open and for the retention after it opened; the archive holds every
event of every alert (``identified/alerts/``). An alert from the archive is
as its last event up to the period's end left it; where Redis still holds an
alert, its copy wins, so none comes twice. Acknowledgements and an alert's
drivers are not archived: an archived alert has no ``acknowledged`` field.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from healthsync.store.archive.alerts import latest_alerts
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.queries import LiveReader
from healthsync.store.vitals_history import SEAM_MARGIN_S


class AlertHistory:
    def __init__(
        self,
        live: LiveReader,
        archive: ArchiveReader | None,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.live = live
        self.archive = archive
        self.retention_s = retention_s
        self.clock = clock

    async def alerts(self, patient_id: str, since: float, until: float) -> list[dict[str, Any]]:
        """The patient's alerts opened in [since, until], newest first by :func:`position`."""
        recent = await self.live.alerts_opened(patient_id, since, until)
        merged: dict[str, dict[str, Any]] = {}
        seam = self.clock() - self.retention_s + SEAM_MARGIN_S
        if self.archive is not None and since <= seam:
            # Events up to the period's end: an alert's later events are read too.
            table = await asyncio.to_thread(self.archive.alerts_table, patient_id, since, until)
            merged = {
                alert.alert_id: alert.to_dict()
                for alert in latest_alerts(table)
                if since <= alert.opened_at <= until
            }
        merged.update((alert["alert_id"], alert) for alert in recent)
        return sorted(merged.values(), key=position, reverse=True)


def position(alert: dict[str, Any]) -> tuple[int, str]:
    """Where an alert stands in a patient's history: its opening time to the millisecond
    (as the archive keeps it, and a page cursor holds it), then its id."""
    return round(alert["opened_at"] * 1000), str(alert["alert_id"])
