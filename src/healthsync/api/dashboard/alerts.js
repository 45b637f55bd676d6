// The alerts panel: every open alert, why it fired, and who acknowledged it.

import { ApiError, request } from "./api.js";
import { clock, element, reason } from "./format.js";

const RANK = { critical: 0, warning: 1 };

export class AlertsPanel {
  constructor(list, countNode, errorNode) {
    this.list = list;
    this.countNode = countNode;
    this.errorNode = errorNode;
    this.alerts = new Map();
  }

  load(alerts) {
    this.alerts = new Map(alerts.map((a) => [a.alert_id, a]));
    this.render();
  }

  update(alert) {
    // The processor's events know nothing of acknowledgements: keep the one already shown.
    const known = this.alerts.get(alert.alert_id);
    if (known?.acknowledgement && !alert.acknowledgement) {
      alert = { ...alert, acknowledgement: known.acknowledgement };
    }
    if (alert.status === "open") this.alerts.set(alert.alert_id, alert);
    else this.alerts.delete(alert.alert_id);
    this.render();
  }

  render() {
    const ordered = [...this.alerts.values()].sort(
      (a, b) => RANK[a.severity] - RANK[b.severity] || b.opened_at - a.opened_at,
    );
    this.list.replaceChildren(...ordered.map((alert) => this.item(alert)));
    this.countNode.textContent = `(${ordered.length})`;
  }

  item(alert) {
    const item = element("li", `alert severity-${alert.severity}`);
    item.dataset.alertKind = alert.kind;
    item.dataset.alertId = alert.alert_id;
    item.dataset.patientId = alert.patient_id;
    const severity = alert.severity === "critical" ? "Critical" : "Warning";
    item.append(
      element("strong", "severity", severity),
      element("span", "patient", ` ${alert.patient_id} `),
      element("span", "kind", alert.kind),
      element("p", "reason", `${reason(alert)}; opened ${clock(alert.opened_at)}`),
    );
    if (alert.acknowledgement) {
      const ack = alert.acknowledgement;
      item.append(element("p", "acknowledged", `Acknowledged by ${ack.by} at ${clock(ack.at)}`));
    } else {
      const button = element("button", "ack", "Acknowledge");
      button.type = "button";
      button.addEventListener("click", () => this.acknowledge(alert.alert_id, button));
      item.append(button);
    }
    return item;
  }

  async acknowledge(alertId, button) {
    button.disabled = true;
    this.errorNode.textContent = "";
    try {
      const alert = await request(`/v1/alerts/${encodeURIComponent(alertId)}/ack`, {
        method: "POST",
      });
      this.update(alert);
    } catch (error) {
      button.disabled = false;
      const denied = error instanceof ApiError && error.status === 403;
      this.errorNode.textContent = denied
        ? "This token may not acknowledge alerts."
        : `The acknowledgement failed: ${error.message}`;
    }
  }
}
