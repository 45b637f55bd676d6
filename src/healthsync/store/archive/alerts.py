"""Alert events as Arrow tables: the identified alert history's schema.

One row per event on the alerts topic (opened, escalated, resolved), with the
alert as it was then; ``ts`` is the event's time (the alert's ``updated_at``),
which places it in the archive's hour directories. Sorted by patient, then time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from healthsync.domain.alerts import Alert
from healthsync.store.archive.columns import TS

ALERT_SCHEMA = pa.schema(
    [
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("status", pa.string()),
        pa.field("vital", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("band", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("window_s", pa.float64()),
        pa.field("opened_at", TS),
        pa.field("resolved_at", TS),
        pa.field("reading_id", pa.string()),
        pa.field("device_id", pa.string()),
        # The (time, value) samples that fired it, as JSON.
        pa.field("evidence", pa.string()),
    ]
)


_DEFAULTED = frozenset({"category", "rule", "window_s"})


def _seconds(stamp: Any) -> float | None:
    return None if stamp is None else stamp.timestamp()


def latest_alerts(table: pa.Table) -> list[Alert]:
    """Each alert of a table of events as its last event left it (drivers are not archived)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in table.sort_by([("ts", "ascending")]).to_pylist():
        latest[row["alert_id"]] = row
    alerts = []
    for row in latest.values():
        doc = {k: v for k, v in row.items() if k not in ("ts", "event", "evidence")}
        doc = {k: v for k, v in doc.items() if v is not None or k not in _DEFAULTED}
        doc["opened_at"] = _seconds(row["opened_at"])
        doc["resolved_at"] = _seconds(row["resolved_at"])
        doc["updated_at"] = _seconds(row["ts"])
        doc["evidence"] = orjson.loads(row["evidence"]) if row["evidence"] else []
        alerts.append(Alert.from_dict(doc))
    return alerts


def _ms(epoch: float | None) -> int | None:
    return None if epoch is None else round(epoch * 1000)


def alerts_table(events: Sequence[tuple[str, Alert]]) -> pa.Table:
    """(event type, alert snapshot) pairs as a table of :data:`ALERT_SCHEMA`."""
    rows: dict[str, list[Any]] = {name: [] for name in ALERT_SCHEMA.names}
    for event, alert in events:
        values = {
            "patient_id": alert.patient_id,
            "ts": _ms(alert.updated_at),
            "event": event,
            "alert_id": alert.alert_id,
            "kind": alert.kind,
            "category": alert.category,
            "severity": alert.severity,
            "status": alert.status,
            "vital": alert.vital,
            "value": alert.value,
            "band": alert.band,
            "rule": alert.rule,
            "window_s": alert.window_s,
            "opened_at": _ms(alert.opened_at),
            "resolved_at": _ms(alert.resolved_at),
            "reading_id": alert.reading_id,
            "device_id": alert.device_id,
            "evidence": orjson.dumps(alert.evidence).decode(),
        }
        for name, value in values.items():
            rows[name].append(value)
    table = pa.Table.from_pydict(rows, schema=ALERT_SCHEMA)
    return table.take(
        pc.sort_indices(table, sort_keys=[("patient_id", "ascending"), ("ts", "ascending")])
    )
