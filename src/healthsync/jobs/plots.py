"""HTML reports with matplotlib plots, embedded as PNG data so one file opens anywhere.

matplotlib is the ``jobs`` extra; without it the report says so instead of plots.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def _figure_png(draw: Any) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or an EC2 worker
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(png: str | None, alt: str) -> str:
    if png is None:
        hint = "install matplotlib (healthsync[jobs]) for plots"
        return f"<p><em>{html.escape(alt)}: {hint}.</em></p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def _table(rows: dict[str, dict[str, Any]], header: str) -> str:
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['alerts']}</td>"
        f"<td>{'' if v['per_patient_hour'] is None else v['per_patient_hour']}</td></tr>"
        for k, v in rows.items()
    )
    return (
        f"<table><tr><th>{html.escape(header)}</th><th>alerts</th>"
        f"<th>per patient-hour</th></tr>{body}</table>"
    )


def alarm_report_html(report: dict[str, Any], ack_delays: list[float]) -> bytes:
    kinds = report["by_kind"]

    def by_kind(ax: Any) -> None:
        names = list(kinds)
        ax.barh(names, [kinds[k]["alerts"] for k in names], color="#c0392b")
        ax.set_xlabel("alerts")
        ax.set_title("Alerts by kind")

    def ack_hist(ax: Any) -> None:
        ax.hist([d / 60 for d in ack_delays], bins=20, color="#2c7fb8")
        ax.set_xlabel("minutes to acknowledge")
        ax.set_ylabel("alerts")
        ax.set_title("Time to acknowledge")

    quick = report["resolved_unacknowledged_quickly"]
    ack = report["time_to_acknowledge_s"]
    ack_text = (
        "none acknowledged"
        if ack is None
        else f"median {ack['median'] / 60:.1f} min, 90th percentile {ack['p90'] / 60:.1f} min"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Alarm burden</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;"
        "text-align:left}</style></head><body>",
        "<h1>Alarm burden</h1>",
        f"<p>{report['alerts']} alerts over {report['patient_hours']} monitored patient-hours"
        f" ({report['alerts_per_patient_hour']} per patient-hour).</p>",
        f"<p>Acknowledged: {report['acknowledged']} ({html.escape(ack_text)}).</p>",
        f"<p>Resolved within {quick['within_s'] / 60:g} min with nobody acknowledging: "
        f"{quick['alerts']} (likely not actionable).</p>",
        _table(kinds, "kind"),
        _table(report["by_severity"], "severity"),
        _img(_figure_png(by_kind), "alerts by kind") if kinds else "",
        _img(_figure_png(ack_hist), "time to acknowledge") if ack_delays else "",
        "</body></html>",
    ]
    return "".join(parts).encode()
