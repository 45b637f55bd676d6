// The ward: one tile per patient, sorted by NEWS2. An update touches only its own tile's
// text; the order is recomputed at most once per frame, and only moves tiles if it changed.

import { BANDS, VITALS, age, element, reason, vitalValue } from "./format.js";

// Handling time per update, from the Performance API clock; read by the benchmark.
export const stats = { updates: 0, updateMs: 0, sorts: 0, sortMs: 0 };
window.healthsyncStats = stats;

function offline(patient) {
  for (const alert of patient.alerts.values()) {
    if (alert.kind.startsWith("device_offline")) return true;
  }
  return false;
}

// Indices (into `values`) of a longest increasing subsequence.
function increasingRun(values) {
  const tails = [];
  const previous = new Array(values.length);
  for (let i = 0; i < values.length; i += 1) {
    let lo = 0;
    let hi = tails.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (values[tails[mid]] < values[i]) lo = mid + 1;
      else hi = mid;
    }
    previous[i] = lo > 0 ? tails[lo - 1] : -1;
    tails[lo] = i;
  }
  const run = new Set();
  for (let i = tails.length ? tails[tails.length - 1] : -1; i >= 0; i = previous[i]) run.add(i);
  return run;
}

// Put `nodes` in this order moving as few as possible: the longest run already in order
// stays, the rest are inserted around it. Moving every tile on each change costs a frame.
function reorder(container, nodes) {
  const position = new Map([...container.children].map((node, i) => [node, i]));
  const stay = increasingRun(nodes.map((node) => position.get(node) ?? -1));
  for (let i = nodes.length - 1; i >= 0; i -= 1) {
    if (stay.has(i) && position.has(nodes[i])) continue;
    container.insertBefore(nodes[i], nodes[i + 1] || null);
  }
}

export class Ward {
  constructor(container, countNode, onOpen) {
    this.container = container;
    this.countNode = countNode;
    this.onOpen = onOpen;
    this.patients = new Map();
    this.freshnessS = 900;
    this.order = [];
    this.sortPending = false;
  }

  clear() {
    this.patients.clear();
    this.order = [];
    this.container.replaceChildren();
    this.countNode.textContent = "";
  }

  load(rows, alerts) {
    this.clear();
    for (const row of rows) {
      const patient = this.patient(row.patient_id);
      patient.vitals = row.vitals || {};
      patient.news2 = row.news2;
    }
    for (const alert of alerts) this.patient(alert.patient_id).alerts.set(alert.alert_id, alert);
    for (const patient of this.patients.values()) this.render(patient);
    this.sort();
  }

  patient(id) {
    let patient = this.patients.get(id);
    if (!patient) {
      patient = { id, vitals: {}, news2: null, alerts: new Map() };
      patient.tile = this.tile(patient);
      this.patients.set(id, patient);
      this.container.append(patient.tile.root);
      this.countNode.textContent = `(${this.patients.size})`;
    }
    return patient;
  }

  tile(patient) {
    const root = element("article", "tile");
    root.dataset.patientId = patient.id;
    const head = element("header", "tile-head");
    const open = element("button", "open", patient.id);
    open.type = "button";
    open.title = "Charts and alert timeline";
    open.addEventListener("click", () => this.onOpen(patient.id));
    const news2 = element("span", "news2");
    const offlineMark = element("span", "offline", "Device offline");
    offlineMark.hidden = true;
    head.append(open, news2, offlineMark);
    const list = element("dl", "vitals");
    const cells = {};
    for (const vital of VITALS) {
      const row = element("div", "vital");
      row.dataset.vital = vital.key;
      const value = element("span", "value", "–");
      const unit = element("span", "unit", vital.unit);
      const when = element("span", "age");
      const dd = element("dd");
      dd.append(value, " ", unit, " ", when);
      row.append(element("dt", "", vital.label), dd);
      list.append(row);
      cells[vital.key] = { row, value, when, ts: null };
    }
    const alerts = element("ul", "tile-alerts");
    root.append(head, list, alerts);
    return { root, news2, offlineMark, cells, alerts };
  }

  render(patient) {
    this.renderVitals(patient);
    this.renderScore(patient);
    this.renderAlerts(patient);
  }

  renderVitals(patient, now = Date.now() / 1000) {
    for (const vital of VITALS) {
      const shown = vitalValue(patient.vitals, vital.key);
      const cell = patient.tile.cells[vital.key];
      cell.value.textContent = shown ? shown.text : "–";
      cell.ts = shown ? shown.ts : null;
      this.renderAge(cell, now);
    }
  }

  renderAge(cell, now) {
    if (cell.ts === null) {
      cell.when.textContent = "";
      cell.row.classList.remove("stale");
      return;
    }
    cell.when.textContent = age(now - cell.ts);
    cell.row.classList.toggle("stale", now - cell.ts > this.freshnessS);
  }

  renderScore(patient) {
    const score = patient.news2;
    const node = patient.tile.news2;
    node.className = `news2 band-${score ? score.band : "none"}`;
    node.textContent = score ? `NEWS2 ${score.total} · ${BANDS[score.band]}` : "NEWS2 –";
    patient.tile.root.dataset.band = score ? score.band : "none";
  }

  renderAlerts(patient) {
    const items = [...patient.alerts.values()].map((alert) => {
      const item = element("li", `alert severity-${alert.severity}`);
      item.dataset.alertKind = alert.kind;
      item.dataset.alertId = alert.alert_id;
      item.append(
        element("strong", "severity", alert.severity === "critical" ? "Critical" : "Warning"),
        ` ${alert.kind}: ${reason(alert)}`,
      );
      return item;
    });
    patient.tile.alerts.replaceChildren(...items);
    patient.tile.offlineMark.hidden = !offline(patient);
  }

  vitals(id, values, news2) {
    const start = performance.now();
    const patient = this.patient(id);
    for (const [key, entry] of Object.entries(values)) {
      // A reading that arrived late does not replace a value measured after it.
      const held = patient.vitals[key];
      if (!held || held.ts <= entry.ts) patient.vitals[key] = entry;
    }
    this.renderVitals(patient);
    if (news2) {
      const moved = !patient.news2 || patient.news2.total !== news2.total;
      patient.news2 = news2;
      this.renderScore(patient);
      if (moved) this.scheduleSort();
    }
    stats.updates += 1;
    stats.updateMs += performance.now() - start;
  }

  alert(alert) {
    const patient = this.patient(alert.patient_id);
    if (alert.status === "open") patient.alerts.set(alert.alert_id, alert);
    else patient.alerts.delete(alert.alert_id);
    this.renderAlerts(patient);
  }

  tick() {
    const now = Date.now() / 1000;
    for (const patient of this.patients.values()) {
      for (const cell of Object.values(patient.tile.cells)) this.renderAge(cell, now);
    }
  }

  scheduleSort() {
    if (this.sortPending) return;
    this.sortPending = true;
    requestAnimationFrame(() => {
      this.sortPending = false;
      this.sort();
    });
  }

  sort() {
    const start = performance.now();
    const score = (p) => (p.news2 ? p.news2.total : -1);
    const order = [...this.patients.values()].sort(
      (a, b) => score(b) - score(a) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
    const changed = order.length !== this.order.length || order.some((p, i) => p !== this.order[i]);
    if (changed) {
      reorder(this.container, order.map((p) => p.tile.root));
      this.order = order;
    }
    stats.sorts += 1;
    stats.sortMs += performance.now() - start;
  }
}
