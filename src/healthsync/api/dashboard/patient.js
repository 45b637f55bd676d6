// One patient: charts of the last hour, the last 24 hours and the last 7 days (hourly
// trends over the live store and the archive), the NEWS2 history and the alert timeline.
// The patient is held in memory, never in the page's URL.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { request } from "./api.js";
import { VITALS, clock, element, reason } from "./format.js";

const LIMIT = 10000;
const HOUR_S = 3600;
const WEEK_S = 7 * 24 * HOUR_S;
const NEWS2_CODE = "1104051000000101";
const COLOURS = ["#b3261e", "#1565c0", "#6a1b9a", "#2e7d32", "#e65100", "#00695c"];
const CHARTED = [
  ["heart_rate"],
  ["spo2"],
  ["resp_rate"],
  ["temp"],
  ["bp_sys", "bp_dia"],
];
const NAMES = {
  ...Object.fromEntries(VITALS.map((v) => [v.key, `${v.name} (${v.unit})`])),
  bp_sys: "Systolic (mmHg)",
  bp_dia: "Diastolic (mmHg)",
};

function history(id, seconds) {
  const now = Date.now() / 1000;
  const path = `/v1/patients/${encodeURIComponent(id)}/vitals`;
  return request(`${path}?since=${now - seconds}&until=${now}&limit=${LIMIT}`);
}

// Hourly buckets of one vital over the last 7 days: count, min, max, mean, median.
function weekTrends(id, vital) {
  const now = Date.now() / 1000;
  const path = `/v1/patients/${encodeURIComponent(id)}/trends`;
  return request(`${path}?vital=${vital}&since=${now - WEEK_S}&until=${now}&bucket=1h`);
}

function chart(target, title, xs, columns, labels, options = {}) {
  const width = Math.max(280, Math.min(target.clientWidth || 600, 900));
  const series = [{}, ...labels.map((label, i) => ({ label, stroke: COLOURS[i], width: 2 }))];
  const box = element("div", "chart");
  target.append(box);
  new uPlot(
    { title, width, height: 160, series, scales: { x: { time: true } }, ...options },
    [xs, ...columns],
    box,
  );
  return box;
}

function vitalCharts(target, readings) {
  target.replaceChildren();
  for (const keys of CHARTED) {
    const rows = readings.filter((r) => keys.some((k) => k in r.vitals));
    if (!rows.length) continue;
    const xs = rows.map((r) => r.ts);
    const columns = keys.map((k) => rows.map((r) => r.vitals[k] ?? null));
    chart(target, keys.map((k) => NAMES[k]).join(" / "), xs, columns, keys.map((k) => NAMES[k]));
  }
  if (!target.childElementCount) target.append(element("p", "hint", "No readings in this period."));
}

// An empty hour after each run of hours, so no line is drawn across hours with no readings.
function withGaps(xs) {
  return xs.flatMap((x, i) => (i + 1 < xs.length && xs[i + 1] > x + HOUR_S ? [x, x + HOUR_S] : [x]));
}

// One chart per vital group: each vital's hourly mean as a line with points, and its
// min and max as thin lines with the band between them filled.
function weekCharts(target, trends) {
  target.replaceChildren();
  for (const keys of CHARTED) {
    const buckets = keys.map((k) => new Map(trends[k].buckets.map((b) => [b.start, b])));
    const xs = [...new Set(buckets.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    if (!xs.length) continue;
    const hours = withGaps(xs);
    const columns = [];
    const series = [{}];
    const bands = [];
    keys.forEach((k, i) => {
      const colour = COLOURS[i];
      const at = (field) => hours.map((x) => buckets[i].get(x)?.[field] ?? null);
      const first = series.length;
      columns.push(at("mean"), at("min"), at("max"));
      series.push(
        { label: `${NAMES[k]} mean`, stroke: colour, width: 2, points: { show: true, size: 6 } },
        { label: "min", stroke: colour, width: 1, dash: [4, 4], points: { show: false } },
        { label: "max", stroke: colour, width: 1, dash: [4, 4], points: { show: false } },
      );
      bands.push({ series: [first + 2, first + 1], fill: `${colour}22` });
    });
    const title = `${keys.map((k) => NAMES[k]).join(" / ")}, hourly`;
    const box = chart(target, title, hours, columns, [], { series, bands });
    box.dataset.vital = keys.join(" ");
    box.dataset.buckets = String(xs.length);
  }
  if (!target.childElementCount) target.append(element("p", "hint", "No readings in the last 7 days."));
}

export class PatientView {
  constructor(nodes) {
    this.nodes = nodes;
    this.current = null;
  }

  async open(id, tileNow) {
    this.current = id;
    const { title, now, hour, day, dayNote, week, news2, timeline } = this.nodes;
    title.textContent = `Patient ${id}`;
    now.replaceChildren(tileNow);
    for (const node of [hour, day, week, news2, timeline]) {
      node.replaceChildren(element("p", "hint", "Loading…"));
    }
    dayNote.textContent = "";
    const vitals = CHARTED.flat();
    const [lastHour, lastDay, scores, alerts, ...trends] = await Promise.all([
      history(id, 3600),
      history(id, 86400),
      request(`/fhir/Observation?patient=${encodeURIComponent(id)}&code=${NEWS2_CODE}&_count=1000&_sort=date`),
      request(`/v1/alerts?status=all&patient_id=${encodeURIComponent(id)}`),
      ...vitals.map((vital) => weekTrends(id, vital)),
    ]);
    if (this.current !== id) return;
    vitalCharts(hour, lastHour.readings);
    vitalCharts(day, lastDay.readings);
    weekCharts(week, Object.fromEntries(vitals.map((v, i) => [v, trends[i]])));
    if (lastDay.readings.length >= LIMIT) {
      dayNote.textContent = `Showing the first ${LIMIT} readings of the period.`;
    }
    this.news2Chart(news2, scores.entry || []);
    this.timeline(timeline, alerts.alerts);
  }

  news2Chart(target, entries) {
    target.replaceChildren();
    const points = entries
      .map((e) => e.resource)
      .filter((r) => r && typeof r.valueInteger === "number")
      .map((r) => [Date.parse(r.effectiveDateTime) / 1000, r.valueInteger])
      .sort((a, b) => a[0] - b[0]);
    if (!points.length) {
      target.append(element("p", "hint", "No NEWS2 score yet."));
      return;
    }
    chart(target, "NEWS2 total", points.map((p) => p[0]), [points.map((p) => p[1])], ["NEWS2"]);
  }

  timeline(target, alerts) {
    const items = [...alerts]
      .sort((a, b) => b.opened_at - a.opened_at)
      .map((alert) => {
        const item = element("li", `alert severity-${alert.severity}`);
        item.dataset.alertKind = alert.kind;
        const ended = alert.resolved_at ? `resolved ${clock(alert.resolved_at)}` : "open";
        item.textContent = `${clock(alert.opened_at)} ${alert.severity} ${alert.kind}: ${reason(alert)} (${ended})`;
        return item;
      });
    target.replaceChildren(...items);
    if (!items.length) target.append(element("li", "hint", "No alerts in the last 24 hours."));
  }
}
