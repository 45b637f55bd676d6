"""`reprocess`: what a candidate rule set would have raised over archived readings.

``--option rules=PATH`` names a TOML file in the ``[anomaly]`` format of the
settings (the table itself, or a file whose ``[anomaly]`` table it is). The
job replays the period's readings through the anomaly engine with those rules
(the engine's ``replay``, as the processor runs it) and compares the alerts it
would have opened with the alerts that were raised. Alert ids are derived from
the patient, the kind and the reading that opened the alert (keyed with the
keyring's id key, as the processor keys them, when encryption at rest is on),
so the same alert has the same id in both.

It prints one line per alert added (``+``) or removed (``-``): time, kind,
severity and alert id, never a patient. ``diff.json`` holds the counts by
kind; ``alerts.json`` (sealed, it names patients) the alerts themselves.
"""

from __future__ import annotations

import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.readings import Reading, isoformat_ms
from healthsync.domain.rules import AnomalySettings
from healthsync.jobs.base import JobContext, JobError

Replay = Callable[[Iterable[Reading], AnomalySettings], list[AlertEvent]]


def load_rules(path: Path) -> AnomalySettings:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise JobError(f"cannot read the rules file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"the rules file {path} is not TOML: {exc}") from None
    table = doc.get("anomaly", doc)
    try:
        return AnomalySettings.model_validate(table)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise JobError(f"the rules file {path} is not valid: {where}: {first['msg']}") from None


def _line(sign: str, alert: Alert) -> str:
    return f"{sign} {isoformat_ms(alert.opened_at)} {alert.kind} {alert.severity} {alert.alert_id}"


def _public(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "opened_at": alert.opened_at,
    }


class Reprocess:
    name = "reprocess"
    description = "replay a candidate [anomaly] rule set and list the alerts it adds or removes"

    def __init__(self, replay: Replay, out: TextIO | None = None) -> None:
        self.replay = replay
        self.out = out

    def run(self, ctx: JobContext) -> dict[str, Any]:
        params = ctx.params
        path = params.options.get("rules")
        if not path:
            raise JobError("reprocess needs --option rules=PATH (a TOML file in [anomaly] format)")
        candidate = load_rules(Path(path))
        readings = sorted(
            ctx.reader.readings(params.since, params.until, params.patients),
            key=lambda r: (r.received_at, r.reading_id),
        )
        raised = {
            row.alert.alert_id: row.alert
            for row in ctx.reader.alerts(params.since, params.until, params.patients)
        }
        would = {
            e.alert.alert_id: e.alert
            for e in self.replay(readings, candidate)
            if e.type == "opened" and params.since <= e.alert.opened_at < params.until
        }
        added = sorted((would[i] for i in would.keys() - raised.keys()), key=_order)
        removed = sorted((raised[i] for i in raised.keys() - would.keys()), key=_order)
        out = self.out or sys.stdout
        for sign, alerts in (("+", added), ("-", removed)):
            for alert in alerts:
                print(_line(sign, alert), file=out)
        by_kind: dict[str, Counter[str]] = {}
        for label, alerts in (
            ("raised", list(raised.values())),
            ("would_raise", list(would.values())),
            ("added", added),
            ("removed", removed),
        ):
            for alert in alerts:
                by_kind.setdefault(alert.kind, Counter())[label] += 1
        summary = {
            "readings": len(readings),
            "raised": len(raised),
            "would_raise": len(would),
            "added": len(added),
            "removed": len(removed),
        }
        ctx.output.write_json(
            "diff.json",
            summary
            | {
                "rules": Path(path).name,
                "by_kind": {k: dict(sorted(c.items())) for k, c in sorted(by_kind.items())},
                "added_alerts": [_public(a) for a in added],
                "removed_alerts": [_public(a) for a in removed],
            },
        )
        ctx.output.write_sealed(
            "alerts.json",
            {"added": [a.to_dict() for a in added], "removed": [a.to_dict() for a in removed]},
            ctx.codec,
        )
        return summary


def _order(alert: Alert) -> tuple[float, str]:
    return alert.opened_at, alert.alert_id
