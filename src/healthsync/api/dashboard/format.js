// How values are written on the page: units, ages, NEWS2 bands in words, alert reasons.

export const VITALS = [
  { key: "heart_rate", label: "HR", name: "Heart rate", unit: "/min" },
  { key: "spo2", label: "SpO2", name: "SpO2", unit: "%" },
  { key: "temp", label: "Temp", name: "Temperature", unit: "°C" },
  { key: "resp_rate", label: "RR", name: "Respiratory rate", unit: "/min" },
  { key: "bp", label: "BP", name: "Blood pressure", unit: "mmHg" },
];

// Colour always comes with these words, never alone.
export const BANDS = {
  low: "Low risk",
  "low-medium": "Low-medium risk (one parameter scores 3)",
  medium: "Medium risk",
  high: "High risk",
};

export function age(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function number(value) {
  return Number.isInteger(value) ? String(value) : Number(value).toFixed(1);
}

// The value of one tile row and its time, or null when the patient has none.
export function vitalValue(vitals, key) {
  if (key === "bp") {
    const sys = vitals.bp_sys;
    const dia = vitals.bp_dia;
    if (!sys && !dia) return null;
    const text = `${sys ? number(sys.value) : "–"}/${dia ? number(dia.value) : "–"}`;
    return { text, ts: Math.min(sys ? sys.ts : Infinity, dia ? dia.ts : Infinity) };
  }
  const entry = vitals[key];
  return entry ? { text: number(entry.value), ts: entry.ts } : null;
}

export function duration(seconds) {
  if (!seconds) return "at once";
  if (seconds < 120) return `for ${Math.round(seconds)} s`;
  return `for ${Math.round(seconds / 60)} min`;
}

// Why an alert fired: the rule, how long it held, and the values that met it.
export function reason(alert) {
  const values = (alert.evidence || []).map(([, v]) => number(v));
  const shown = values.length ? values.slice(-5).join(", ") : number(alert.value);
  const rule = alert.rule || `outside ${alert.band}`;
  return `${rule}, ${duration(alert.window_s)}; values ${shown}`;
}

export function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
