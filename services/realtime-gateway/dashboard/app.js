// Relais live dashboard. Talks to the gateway like any other client: REST with a bearer
// token, the WebSocket feed with the token offered as a subprotocol, and resume after every
// reconnect using the last event id per partition.
"use strict";

const TOKEN_KEY = "relais.token";
const MAX_ROWS = 50;
const CHART_SECONDS = 120;

const state = {
  token: null,
  socket: null,
  position: new Map(),      // partition -> last offset seen
  backoffMs: 500,
  perSecond: new Map(),     // epoch second -> { events, errors }
  circuits: new Map(),      // upstream -> state, updated live from events
};

const $ = (id) => document.getElementById(id);

function takeTokenFromFragment() {
  // `#token=...` lets a link open the dashboard signed in; the fragment never reaches a server.
  const match = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

// A GET with the token; a refused token sends the user back to the login form.
async function authorized(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The token was refused.");
    throw new Error("unauthorized");
  }
  return response;
}

async function api(path) {
  const response = await authorized(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function setConnection(label, stateName) {
  const badge = $("connection");
  badge.textContent = label;
  badge.dataset.state = stateName;
}

function notice(text) {
  const element = $("notice");
  element.textContent = text;
  element.hidden = !text;
}

function resumeParameter() {
  return [...state.position.entries()].map(([partition, offset]) => `${partition}:${offset}`).join(",");
}

function adoptPosition(ids) {
  for (const id of ids || []) {
    const [partition, offset] = id.split(":").map(Number);
    if (!(state.position.get(partition) >= offset)) state.position.set(partition, offset);
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = resumeParameter();
  const url = `${scheme}://${location.host}/ws${resume ? `?resume=${resume}` : ""}`;
  const socket = new WebSocket(url, ["relais.v1", `relais.bearer.${state.token}`]);
  state.socket = socket;
  setConnection(resume ? "resuming" : "connecting", "connecting");
  socket.onmessage = (message) => handleFrame(JSON.parse(message.data));
  socket.onclose = () => {
    setConnection("reconnecting", "reconnecting");
    const wait = state.backoffMs;
    state.backoffMs = Math.min(state.backoffMs * 2, 10000);
    setTimeout(connect, wait);
  };
}

function handleFrame(frame) {
  switch (frame.type) {
    case "welcome":
      adoptPosition(frame.position);
      state.backoffMs = 500;
      setConnection("live", "live");
      if (!frame.resumed) notice("");
      break;
    case "gap":
      notice(`Some events were missed while disconnected (${frame.gaps.length} partition(s)); figures below are complete, the live table is not.`);
      break;
    case "replayed":
      adoptPosition(frame.position);
      break;
    case "position":
      adoptPosition(frame.position);
      break;
    case "lagged":
      notice("The dashboard fell behind the feed and is catching up.");
      break;
    case "event":
      adoptPosition([frame.id]);
      onEvent(frame.event);
      break;
  }
}

function onEvent(event) {
  const second = Math.floor(Date.parse(event.decided_at) / 1000);
  const bucket = state.perSecond.get(second) || { events: 0, errors: 0 };
  bucket.events += 1;
  if (event.outcome === "failed" || event.outcome === "dead_lettered") bucket.errors += 1;
  state.perSecond.set(second, bucket);
  if (event.upstream && event.circuit_state !== "unknown") {
    if (state.circuits.get(event.upstream) !== event.circuit_state) {
      state.circuits.set(event.upstream, event.circuit_state);
      renderCircuitState(event.upstream, event.circuit_state);
    }
  }
  const tbody = $("events").tBodies[0];
  const row = tbody.insertRow(0);
  row.dataset.id = event.id;
  row.dataset.message = event.message_id;
  row.title = `message ${event.message_id}: click to find every decision on it`;
  const cells = [
    event.decided_at.slice(11, 23),
    event.outcome,
    event.event_type,
    event.upstream || "—",
    String(event.attempts),
    event.attempts ? event.delivery_latency_ms.toFixed(1) : "",
    event.trace_id,
  ];
  cells.forEach((text, index) => {
    const cell = row.insertCell();
    cell.textContent = text;
    if (index === 1) cell.className = `outcome-${event.outcome}`;
    if (index === 6) cell.className = "trace";
  });
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
}

// One row of the lookup's table, from an audit record or, while the audit-service has not
// stored the message yet (or cannot be asked), from a buffered event.
function decisionCells(decision, fromAudit) {
  const attempts = fromAudit ? decision.attempts : null;
  const lastStatus = fromAudit ? (attempts.length ? attempts[attempts.length - 1].status_code : 0) : decision.last_status_code;
  return [
    (decision.decided_at || "").replace("T", " ").slice(0, 23),
    decision.outcome,
    decision.reason_code || "—",
    decision.upstream || "—",
    String(fromAudit ? attempts.length : decision.attempts),
    lastStatus ? String(lastStatus) : "—",
    decision.worker_id || "—",
  ];
}

async function findMessage(id) {
  const status = $("lookup-status");
  const table = $("decisions");
  table.hidden = true;
  status.textContent = `Looking for ${id}…`;
  const response = await authorized(`/api/v1/messages/${encodeURIComponent(id)}`);
  if (response.status === 404) {
    status.textContent = `Nothing is known of ${id} in the last 24 hours.`;
    return;
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    status.textContent = answer.detail || `The lookup failed (${response.status}).`;
    return;
  }
  const fromAudit = answer.audit.length > 0;
  const decisions = fromAudit ? answer.audit : answer.events;
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const decision of decisions) {
    const row = tbody.insertRow();
    decisionCells(decision, fromAudit).forEach((text, index) => {
      const cell = row.insertCell();
      cell.textContent = text;
      if (index === 1) cell.className = `outcome-${decision.outcome}`;
    });
  }
  table.hidden = decisions.length === 0;
  const source = fromAudit ? `${decisions.length} audit record(s)` : `${decisions.length} buffered event(s), not in the audit trail yet`;
  const partial = answer.partial ? ` Partial: ${answer.partial_reason}.` : "";
  status.textContent = `${id}: ${source}.${partial}`;
}

function stateBadge(stateName) {
  const span = document.createElement("span");
  span.className = "state";
  span.dataset.state = stateName;
  span.textContent = stateName.replace("_", "-");
  return span;
}

function circuitRow(upstream) {
  const tbody = $("circuits").tBodies[0];
  for (const row of tbody.rows) if (row.dataset.upstream === upstream) return row;
  const row = tbody.insertRow();
  row.dataset.upstream = upstream;
  row.insertCell().textContent = upstream;
  row.insertCell();
  row.insertCell();
  return row;
}

function renderCircuitState(upstream, stateName, workers) {
  const row = circuitRow(upstream);
  row.dataset.state = stateName;
  row.cells[1].replaceChildren(stateBadge(stateName));
  if (workers !== undefined) row.cells[2].textContent = workers;
}

async function refreshCircuits() {
  const { circuits } = await api("/api/v1/circuits");
  for (const circuit of circuits) {
    state.circuits.set(circuit.upstream, circuit.state);
    const workers = circuit.workers.map((w) => `${w.worker_id}: ${w.state}`).join(", ") || "—";
    renderCircuitState(circuit.upstream, circuit.state, workers);
  }
}

const fmt = (value) => (value === null || value === undefined ? "–" : value.toFixed(value < 10 ? 2 : 0));

async function refreshStats() {
  const stats = await api("/api/v1/stats");
  const minute = stats.windows.find((w) => w.window === "1m");
  const overall = minute.overall;
  $("rate").textContent = overall.rate_per_second.toFixed(1);
  $("error-ratio").textContent = `${(overall.error_ratio * 100).toFixed(2)} %`;
  const latency = overall.latency_ms;
  $("latency").textContent = `${fmt(latency.p50)} / ${fmt(latency.p95)} / ${fmt(latency.p99)}`;
  $("retries").textContent = `${overall.retries} · ${overall.timeouts}`;
  const tbody = $("upstreams").tBodies[0];
  tbody.replaceChildren();
  for (const [name, figures] of Object.entries(minute.upstreams)) {
    const row = tbody.insertRow();
    const errors = figures.failed + figures.dead_lettered;
    for (const text of [name, figures.events, errors, fmt(figures.latency_ms.p50), fmt(figures.latency_ms.p95), fmt(figures.latency_ms.p99)]) {
      row.insertCell().textContent = String(text);
    }
  }
}

async function refreshWorkers() {
  const { workers } = await api("/api/v1/workers");
  const tbody = $("workers").tBodies[0];
  tbody.replaceChildren();
  for (const worker of workers) {
    const row = tbody.insertRow();
    row.dataset.worker = worker.worker_id;
    const status = worker.connected ? (worker.stale ? "stale" : "reporting") : "disconnected";
    for (const text of [worker.worker_id, status, worker.in_flight, worker.total_lag, `${worker.last_seen_seconds_ago.toFixed(0)} s ago`]) {
      row.insertCell().textContent = String(text);
    }
  }
}

function drawChart(canvas, values, color, maxFloor) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const max = Math.max(maxFloor, ...values);
  context.strokeStyle = "#2a3540";
  context.fillStyle = "#8a96a3";
  context.font = "11px system-ui";
  for (const fraction of [0.5, 1]) {
    const y = height - fraction * (height - 14);
    context.beginPath(); context.moveTo(0, y); context.lineTo(width, y); context.stroke();
    context.fillText((max * fraction).toFixed(max < 10 ? 1 : 0), 4, y + 12);
  }
  context.strokeStyle = color;
  context.lineWidth = 2;
  context.beginPath();
  values.forEach((value, index) => {
    const x = (index / (values.length - 1)) * width;
    const y = height - (value / max) * (height - 14);
    if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.stroke();
}

function drawCharts() {
  const now = Math.floor(Date.now() / 1000) - 1; // the current second is still filling
  const events = [];
  const errors = [];
  for (let second = now - CHART_SECONDS + 1; second <= now; second += 1) {
    const bucket = state.perSecond.get(second) || { events: 0, errors: 0 };
    events.push(bucket.events);
    errors.push(bucket.events ? (100 * bucket.errors) / bucket.events : 0);
  }
  for (const second of state.perSecond.keys()) if (second < now - CHART_SECONDS) state.perSecond.delete(second);
  drawChart($("throughput-chart"), events, "#58a6ff", 1);
  drawChart($("error-chart"), errors, "#f85149", 1);
}

function every(milliseconds, task) {
  const run = () => task().catch(() => {}).finally(() => setTimeout(run, milliseconds));
  run();
}

function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  connect();
  every(2000, refreshStats);
  every(2000, refreshCircuits);
  every(5000, refreshWorkers);
  setInterval(drawCharts, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("lookup").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const id = $("message-id").value;
    if (id) findMessage(id).catch((error) => { $("lookup-status").textContent = String(error); });
  });
  $("events").tBodies[0].addEventListener("click", (clicked) => {
    const row = clicked.target.closest("tr");
    if (!row || !row.dataset.message) return;
    $("message-id").value = row.dataset.message;
    $("lookup").requestSubmit();
  });
  $("login").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    start();
  });
  state.token = takeTokenFromFragment();
  if (state.token) start(); else showLogin();
});
