// The page's wiring: sign in, then the live ward (clinical tokens) or the de-identified
// summary (viewer tokens).

import {
  ApiError,
  allAlerts,
  forgetToken,
  probeAccess,
  request,
  saveToken,
  savedToken,
} from "./api.js";
import { AlertsPanel } from "./alerts.js";
import { element } from "./format.js";
import { PatientView } from "./patient.js";
import { LiveStream } from "./sse.js";
import { Ward } from "./ward.js";

const $ = (id) => document.getElementById(id);
const SUMMARY_EVERY_MS = 5000;

const ward = new Ward($("tiles"), $("patient-count"), (id) => openPatient(id));
const panel = new AlertsPanel($("alert-list"), $("alert-count"), $("alerts-error"));
const patientView = new PatientView({
  title: $("patient-title"),
  now: $("patient-now"),
  hour: $("chart-hour"),
  day: $("chart-day"),
  dayNote: $("chart-day-note"),
  week: $("chart-week"),
  news2: $("chart-news2"),
  timeline: $("timeline"),
});

let stream = null;
let summaryTimer = null;
let ticker = null;
let loaded = false;
let queued = [];

function show(view) {
  $("sign-in").hidden = view !== "sign-in";
  $("summary").hidden = view !== "summary";
  $("ward-view").hidden = view !== "ward";
  $("patient-view").hidden = view !== "patient";
  $("sign-out").hidden = view === "sign-in";
}

function setConnection(text) {
  $("connection").textContent = text ? `Updates: ${text}` : "";
  $("connection").dataset.state = text;
}

async function loadSnapshot() {
  loaded = false;
  const [patients, alerts] = await Promise.all([
    request("/v1/patients?limit=10000"),
    allAlerts("status=open"),
  ]);
  ward.load(patients.patients, alerts);
  panel.load(alerts);
  loaded = true;
  const pending = queued;
  queued = [];
  for (const [event, data] of pending) apply(event, data);
}

function apply(event, data) {
  if (event.startsWith("alert.")) {
    ward.alert(data.data);
    panel.update(data.data);
  } else if (event === "vitals") {
    ward.vitals(data.patient_id, data.data, data.news2);
  }
}

function onEvent(event, data) {
  if (event === "hello") {
    ward.freshnessS = data.freshness_s;
    if (!loaded) loadSnapshot().catch(failed);
  } else if (event === "reset") {
    loadSnapshot().catch(failed);
  } else if (event === "overflow" || event === "error") {
    setConnection("catching up");
  } else if (!loaded) {
    queued.push([event, data]);
  } else {
    apply(event, data);
  }
}

function failed(error) {
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    signOut("Your access token is no longer accepted.");
  } else {
    setConnection("unavailable");
  }
}

function startWard() {
  show("ward");
  loaded = false;
  queued = [];
  stream = new LiveStream({ onEvent, onState: setConnection, onRefused: failed });
  stream.start();
  ticker = setInterval(() => ward.tick(), 1000);
}

async function refreshSummary() {
  const summary = await request("/v1/summary");
  const rows = [
    ["Patients", summary.patients],
    ["Open alerts", summary.open_alerts.total],
    ...Object.entries(summary.open_alerts.by_severity).map(([k, v]) => [`Alerts: ${k}`, v]),
    ...Object.entries(summary.news2_bands).map(([k, v]) => [`NEWS2 ${k}`, v]),
  ];
  $("summary-counts").replaceChildren(
    ...rows.flatMap(([label, value]) => [element("dt", "", label), element("dd", "", String(value))]),
  );
}

function startSummary() {
  show("summary");
  refreshSummary().catch(failed);
  summaryTimer = setInterval(() => refreshSummary().catch(failed), SUMMARY_EVERY_MS);
}

async function begin() {
  const access = await probeAccess();
  $("who").textContent = access === "clinical" ? "Clinical view" : "Summary view";
  if (access === "clinical") startWard();
  else startSummary();
}

function stop() {
  stream?.stop();
  stream = null;
  clearInterval(summaryTimer);
  clearInterval(ticker);
  ward.clear();
  panel.load([]);
  loaded = false;
}

function signOut(message = "") {
  stop();
  forgetToken();
  $("who").textContent = "";
  setConnection("");
  $("sign-in-error").textContent = message;
  $("token").value = "";
  show("sign-in");
}

async function openPatient(id) {
  const tile = ward.patients.get(id)?.tile.root.cloneNode(true);
  tile?.querySelector("button.open")?.remove();
  show("patient");
  try {
    await patientView.open(id, tile || element("p", "", ""));
  } catch (error) {
    $("chart-hour").replaceChildren(element("p", "error", `Cannot load the charts: ${error.message}`));
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("sign-in-error").textContent = "";
  if (!token) return;
  saveToken(token);
  try {
    await begin();
    $("token").value = "";
  } catch (error) {
    forgetToken();
    const refused = error instanceof ApiError && (error.status === 401 || error.status === 403);
    $("sign-in-error").textContent = refused
      ? `This access token was refused: ${error.message}`
      : `The server cannot be reached: ${error.message}`;
    show("sign-in");
  }
});

$("sign-out").addEventListener("click", () => signOut());
$("back").addEventListener("click", () => {
  patientView.current = null;
  show("ward");
});

if (savedToken()) {
  begin().catch(() => signOut("Please sign in again."));
} else {
  show("sign-in");
}
