// The retentive dashboard: polls the service's JSON API and draws it with plotly.js.
"use strict";

const REFRESH_MS = 5000;
const KEY_STORE = "retentive.apiKey";
const COLORS = ["#2463eb", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
  "#9c755f", "#ff9da7", "#4e79a7", "#86bcb6", "#8cd17d", "#bab0ac"];
const ALARM = "#d7263d";
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const BASE_LAYOUT = {
  margin: { t: 10, r: 10, b: 40, l: 50 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  font: { family: "system-ui, sans-serif", size: 12, color: "#1f2933" },
};

const $ = (id) => document.getElementById(id);
// What the user chose to plot (a set of probe names), or null for the worst N; the last data drawn.
const view = { pick: null, data: null, timer: null, busy: false, again: false };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The key lives in this tab only (sessionStorage) unless the user ticks "remember" (localStorage).
const storedKey = () => sessionStorage.getItem(KEY_STORE) ?? localStorage.getItem(KEY_STORE);

async function api(path, options = {}) {
  const key = storedKey();
  const headers = { ...options.headers, ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body?.error?.message ?? response.statusText);
  return body;
}

async function load() {
  const [model, forgetting, matrix, versions, snapshots, learner, probes] = await Promise.all(
    ["v1/model", "v1/forgetting", "v1/evaluations", "v1/versions", "v1/snapshots", "v1/learner", "v1/probes"]
      .map(api));
  return { model, forgetting, matrix, versions, snapshots, learner, probes };
}

async function refresh() {
  if (view.busy) {
    view.again = true;
    return;
  }
  view.busy = true;
  clearTimeout(view.timer);
  let polling = true;
  try {
    if (!document.hidden) {
      view.data = await load();
      banner(null);
      draw();
    }
  } catch (err) {
    polling = !explainFailure(err);
  } finally {
    view.busy = false;
  }
  if (view.again) {
    view.again = false;
    return refresh();
  }
  if (polling) view.timer = setTimeout(refresh, REFRESH_MS);
}

// Shows what went wrong; true when polling cannot help until the user gives a (better) key.
function explainFailure(err) {
  if (err.status === 401) {
    banner("This service needs an API key to show its data. Enter a key with the predict (or admin) " +
      "scope above: it is kept in this tab only (in this browser if you tick remember) and sent as " +
      "Authorization: Bearer.");
    return true;
  }
  if (err.status === 403) {
    banner("This API key lacks the predict scope. Enter a key with the predict (or admin) scope above.");
    return true;
  }
  if (!(err instanceof ApiError)) console.error(err);
  banner(`The dashboard could not refresh: ${err.message}. Retrying every ${REFRESH_MS / 1000} s.`, "error");
  return false;
}

function banner(text, kind = "") {
  $("banner").hidden = !text;
  $("banner").textContent = text ?? "";
  $("banner").className = `banner ${kind}`;
}

function draw() {
  const { model, forgetting, matrix, versions, snapshots, learner, probes } = view.data;
  $("empty").hidden = forgetting.probes.length > 0 || versions.length > 0;
  drawTiles(model, forgetting, learner);
  drawProbes(everyProbe(forgetting.probes, probes), matrix.alarms);
  drawMatrix(matrix);
  drawTimeline(versions, snapshots);
  drawSnapshots(snapshots);
  drawGate(learner);
  $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

const fixed = (value, digits = 3) => (value == null ? "–" : value.toFixed(digits));

// An ISO 8601 time as local wall-clock text, which plotly reads as a date without a time zone.
function local(iso) {
  const date = new Date(iso);
  return new Date(date - date.getTimezoneOffset() * 60000).toISOString().slice(0, 23).replace("T", " ");
}

function drawTiles(model, forgetting, learner) {
  const summary = forgetting.summary;
  $("model-line").textContent = `${model.base_model} · ${model.strategy} · ${model.labels.length} labels`;
  $("t-version").textContent = model.model_version ?? "none";
  const held = model.held_back;
  $("t-promotion").textContent = held ? "held back" : "served";
  $("t-promotion").className = held ? "alarm" : "ok";
  $("t-promotion").title = held ? `${held.reason} (after ${held.updates} updates)` : "";
  $("t-learner").textContent = learner.learner;
  $("t-learner").title = learner.paused_reason ?? "";
  $("t-updates").textContent = learner.updates ?? 0;
  $("t-rate").textContent = fixed(learner.examples_per_s, 1);
  $("t-lag").textContent = model.stream_lag;
  const live = forgetting.prequential;
  $("t-prequential").textContent = fixed(live?.last_1000);
  $("t-prequential").title = live ? `${fixed(live.cumulative)} over all ${live.scored} examples` : "";
  const served = forgetting.served;
  $("t-served").textContent = fixed(served?.last_1000.accuracy);
  $("t-served").title = served?.joined
    ? `${fixed(served.accuracy)} over all ${served.joined} answers with feedback; ` +
      `median delay ${fixed(served.last_1000.median_delay_s, 1)} s`
    : "no feedback has named a served prediction yet";
  $("t-coverage").textContent = fixed(served?.coverage);
  $("t-accuracy").textContent = fixed(summary.mean_accuracy);
  $("t-forgetting").textContent = fixed(summary.mean_forgetting);
  $("t-max-forgetting").textContent = fixed(summary.max_forgetting);
  $("t-bwt").textContent = fixed(summary.bwt);
  $("t-alarms").textContent = forgetting.alarms.length;
  $("t-alarms").className = forgetting.alarms.length ? "alarm" : "ok";
}

// Shows a panel's chart, or its placeholder when there is nothing to draw; true when there is.
function present(chartId, hasData, placeholder) {
  const chart = $(chartId);
  const note = chart.parentElement.querySelector(".placeholder");
  chart.hidden = !hasData;
  note.hidden = hasData;
  if (placeholder) note.textContent = placeholder;
  return hasData;
}

const worst = (a, b) =>
  b.forgetting - a.forgetting || a.accuracy - b.accuracy || a.name.localeCompare(b.name);

// The evaluated probes, and every other set the API lists (registered, not evaluated yet) with no figures.
function everyProbe(evaluated, listed) {
  const known = new Set(evaluated.map((probe) => probe.name));
  const waiting = listed.filter((probe) => !known.has(probe.name)).map((probe) => ({
    name: probe.name, source: probe.source, size: probe.size, accuracy: null, best_accuracy: null,
    forgetting: null, history: [],
  }));
  return [...evaluated, ...waiting];
}

function plotted(ranked) {
  const drawable = ranked.filter((probe) => probe.history.length > 0);
  if (view.pick) return drawable.filter((probe) => view.pick.has(probe.name));
  return drawable.slice(0, Math.max(1, Number($("worst-n").value) || 1));
}

function drawProbes(probes, alarms) {
  const ranked = [...probes].sort(worst);
  const shown = plotted(ranked).sort((a, b) => a.name.localeCompare(b.name));
  const color = new Map(shown.map((probe, i) => [probe.name, COLORS[i % COLORS.length]]));
  $("reset-pick").hidden = !view.pick;
  $("probe-table").parentElement.hidden = !ranked.length;
  $("worst-n").parentElement.parentElement.hidden = !ranked.length;
  $("probe-table").parentElement.parentElement.querySelector(".placeholder").hidden = ranked.length > 0;
  const alarmed = new Set(view.data.forgetting.alarms.map((alarm) => alarm.probe));
  $("probe-table").tBodies[0].replaceChildren(...ranked.map((probe) => probeRow(probe, color, alarmed)));
  if (!present("accuracy-chart", shown.length > 0)) return;

  const traces = shown.flatMap((probe) => probeTraces(probe, color.get(probe.name)));
  const fired = alarms.filter((alarm) => color.has(alarm.probe));
  traces.push({
    name: "alarm fired", x: fired.map((a) => a.updates), y: fired.map((a) => a.accuracy),
    text: fired.map((a) => a.probe), mode: "markers",
    marker: { symbol: "x-thin", size: 14, color: ALARM, line: { width: 3, color: ALARM } },
    hovertemplate: "alarm on %{text}<br>updates %{x}<br>accuracy %{y:.3f}<extra></extra>",
  });
  const legendRows = Math.ceil(traces.length / 2 / 4);
  Plotly.react("accuracy-chart", traces, {
    ...BASE_LAYOUT, height: 360 + 22 * legendRows, margin: { ...BASE_LAYOUT.margin, b: 50 },
    xaxis: { title: { text: "updates" }, zeroline: false },
    yaxis: { title: { text: "accuracy" }, range: [-0.02, 1.04], zeroline: false },
    legend: { orientation: "h", y: -0.16, yanchor: "top" }, hovermode: "closest",
  }, PLOT_CONFIG);
}

function probeTraces(probe, color) {
  const x = probe.history.map((point) => point.updates);
  const y = probe.history.map((point) => point.accuracy);
  let best = -Infinity;
  const bestSoFar = y.map((value) => (best = Math.max(best, value)));
  return [
    {
      name: probe.name, x, y, mode: "lines+markers", legendgroup: probe.name,
      line: { color, width: 2 }, marker: { size: 6 },
      hovertemplate: `${probe.name}<br>updates %{x}<br>accuracy %{y:.3f}<extra></extra>`,
    },
    {
      name: `${probe.name} best`, x, y: bestSoFar, mode: "lines", legendgroup: probe.name,
      showlegend: false, hoverinfo: "skip", line: { color, width: 1.5, dash: "dot", shape: "hv" },
    },
  ];
}

function probeRow(probe, color, alarmed) {
  const box = Object.assign(document.createElement("input"), { type: "checkbox" });
  box.checked = color.has(probe.name);
  box.style.accentColor = color.get(probe.name) ?? "";
  box.title = "plot this probe";
  box.addEventListener("change", () => {
    view.pick ??= new Set(color.keys());
    if (box.checked) view.pick.add(probe.name);
    else view.pick.delete(probe.name);
    draw();
  });
  const cells = [probe.name, probe.size ?? "–", fixed(probe.accuracy, 2), fixed(probe.best_accuracy, 2),
    fixed(probe.forgetting, 2)];
  const row = tableRow([box, ...cells]);
  row.cells[1].className = "name";
  row.cells[1].title = `${probe.name} (${probe.source ?? "probe"}${probe.history.length ? "" : ", not evaluated yet"})`;
  const interval = (range) => (range ? `95% interval ${fixed(range[0], 2)} to ${fixed(range[1], 2)}` : "");
  row.cells[3].title = interval(probe.accuracy_interval);
  row.cells[5].title = interval(probe.forgetting_interval) +
    (probe.forgetting_p_value == null ? "" : `, p = ${probe.forgetting_p_value.toPrecision(2)}`);
  if (alarmed.has(probe.name)) row.className = "alarm";
  return row;
}

function tableRow(cells) {
  const row = document.createElement("tr");
  for (const cell of cells) {
    const td = row.insertCell();
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell;
  }
  return row;
}

function drawMatrix(matrix) {
  const columns = matrix.evaluations;
  if (!present("matrix-chart", matrix.probes.length > 0 && columns.length > 0)) return;
  // Columns are evaluations in time order; updates can go back after a rollback, so ticks tell the time.
  const step = Math.ceil(columns.length / 10);
  const ticks = columns.map((_, i) => i).filter((i) => i % step === 0);
  const details = columns.map((e) => [e.updates, e.model_version, local(e.evaluated_at)]);
  let labels = ticks.map((i) => details[i][2].slice(11, 19));
  if (new Set(labels).size < labels.length) labels = ticks.map((i) => details[i][2].slice(11, 23));
  Plotly.react("matrix-chart", [{
    type: "heatmap", z: matrix.accuracy, y: matrix.probes, x: columns.map((_, i) => i),
    customdata: matrix.probes.map(() => details), zmin: 0, zmax: 1, hoverongaps: false, xgap: 1, ygap: 1,
    colorscale: [[0, "#c2313f"], [0.5, "#f6d55c"], [1, "#2f9e63"]],
    colorbar: { title: { text: "accuracy" }, thickness: 12 },
    hovertemplate: "%{y}<br>updates %{customdata[0]} · v%{customdata[1]}<br>%{customdata[2]}" +
      "<br>accuracy %{z:.3f}<extra></extra>",
  }], {
    ...BASE_LAYOUT, height: 90 + 16 * matrix.probes.length,
    xaxis: { title: { text: "evaluated at" }, tickvals: ticks, ticktext: labels,
      zeroline: false, showgrid: false },
    yaxis: { automargin: true, autorange: "reversed", tickfont: { size: 11 } },
  }, PLOT_CONFIG);
}

function drawTimeline(versions, snapshots) {
  if (!present("timeline-chart", versions.length > 0)) return;
  const events = [...versions].reverse();
  const versionOf = new Map([...events.map((e) => [e.snapshot_id, e.version]),
    ...snapshots.map((s) => [s.id, s.version])]);
  const points = (name, list, marker, extra = {}) => ({
    name, x: list.map((e) => local(e.published_at)), y: list.map((e) => e.version), mode: "markers", marker,
    text: list.map((e) => e.snapshot_id), hovertemplate: `${name} v%{y}<br>%{x}<br>%{text}<extra></extra>`,
    ...extra,
  });
  const rollbacks = events.filter((e) => e.rolled_back_to);
  const traces = [
    { x: events.map((e) => local(e.published_at)), y: events.map((e) => e.version), mode: "lines",
      line: { color: "#c3cad3", width: 1, shape: "hv" }, hoverinfo: "skip", showlegend: false },
    points("weights", events.filter((e) => e.kind === "weights" && !e.rolled_back_to),
      { size: 5, color: "#9aa5b1" }),
    points("snapshot", events.filter((e) => e.kind === "snapshot" && !e.rolled_back_to),
      { size: 9, color: COLORS[0] }),
    points("rollback", rollbacks, { size: 13, symbol: "diamond", color: ALARM }, {
      mode: "markers+text", textposition: "top center", textfont: { color: ALARM },
      text: rollbacks.map((e) => `↩ v${versionOf.get(e.rolled_back_to) ?? e.rolled_back_to.slice(0, 8)}`),
    }),
  ];
  Plotly.react("timeline-chart", traces, {
    ...BASE_LAYOUT, height: 320, xaxis: { type: "date" }, legend: { orientation: "h", y: 1.1, x: 0 },
    yaxis: { title: { text: "version" }, rangemode: "tozero" },
  }, PLOT_CONFIG);
}

function drawSnapshots(snapshots) {
  const any = snapshots.length > 0;
  $("snapshot-table").parentElement.hidden = !any;
  $("replay").parentElement.hidden = !any;
  $("snapshot-table").parentElement.parentElement.querySelector(".placeholder").hidden = any;
  $("snapshot-table").tBodies[0].replaceChildren(...snapshots.map((snapshot) => {
    const button = Object.assign(document.createElement("button"), { type: "button", className: "danger" });
    button.textContent = "Roll back";
    button.addEventListener("click", () => rollBack(snapshot));
    const written = local(snapshot.created_at);
    const row = tableRow([`v${snapshot.version}`, written.slice(11, 19), snapshot.updates ?? "–",
      fixed(snapshot.mean_accuracy, 2), button]);
    row.title = `${snapshot.id}, written ${written.slice(0, 19)}`;
    return row;
  }));
}

async function rollBack(snapshot) {
  const question = `Roll back to version ${snapshot.version}? The learner continues from snapshot ` +
    `${snapshot.id}, and every replica then serves it as a new version.`;
  if (!window.confirm(question)) return;
  const note = $("rollback-note");
  try {
    const accepted = await api(`v1/snapshots/${encodeURIComponent(snapshot.id)}/rollback`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ replay: $("replay").checked }),
    });
    note.textContent = `Rollback to version ${snapshot.version} requested; the learner ` +
      `(${accepted.learner}) writes it as a new version.`;
    note.className = "note done";
    refresh();
  } catch (err) {
    const denied = err.status === 401 || err.status === 403;
    note.textContent = denied ? `Rolling back needs an API key with the admin scope: ${err.message}.`
      : err.message;
    note.className = "note error";
  }
}

// Layer names without the prefix they all share, keeping its last part ("layer.0.attention.self.query").
function shortNames(names) {
  const parts = names.map((name) => name.split("."));
  let common = 0;
  while (parts.every((p) => p.length > common + 1 && p[common] === parts[0][common])) common += 1;
  return parts.map((p) => p.slice(Math.max(common - 1, 0)).join("."));
}

function drawGate(learner) {
  const gated = learner.strategy.includes("migu");
  const why = gated ? "No gated update since the learner started or rolled back."
    : `The ${learner.strategy} strategy does not gate updates.`;
  if (!present("gate-chart", learner.layers.length > 0, why)) return;
  const expected = 1 - learner.quantile;
  Plotly.react("gate-chart", [{
    type: "bar", x: shortNames(learner.layers.map((l) => l.layer)), y: learner.layers.map((l) => l.keep_rate),
    marker: { color: COLORS[0] }, hovertemplate: "%{x}<br>keep-rate %{y:.3f}<extra></extra>",
  }], {
    ...BASE_LAYOUT, height: 300, bargap: 0.25,
    xaxis: { tickangle: -40, automargin: true, tickfont: { size: 10 } },
    yaxis: { title: { text: "rows updated" }, range: [0, 1] },
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: expected, y1: expected,
      line: { dash: "dash", color: "#6b7785", width: 1 } }],
  }, PLOT_CONFIG);
}

function showKeyState() {
  const key = storedKey();
  const remembered = localStorage.getItem(KEY_STORE) !== null;
  $("remember-key").checked = remembered;
  $("key-note").textContent = !key ? "kept in this tab only, unless remembered"
    : remembered ? "key set, remembered in this browser" : "key set, kept in this tab only";
  const auth = key ? " \\\n     -H 'Authorization: Bearer YOUR_KEY'" : "";
  $("empty-example").textContent = `curl -X POST ${location.origin}/v1/feedback${auth} \\\n` +
    "     -H 'content-type: application/json' \\\n" +
    "     -d '{\"examples\": [{\"text\": \"the striker scored twice\", \"label\": \"sports\"}]}'";
}

function plotWorst() {
  view.pick = null;
  if (view.data) draw();
}

function useKey(key) {
  sessionStorage.removeItem(KEY_STORE);
  localStorage.removeItem(KEY_STORE);
  if (key) ($("remember-key").checked ? localStorage : sessionStorage).setItem(KEY_STORE, key);
  $("api-key").value = "";
  showKeyState();
  refresh();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  useKey($("api-key").value.trim());
});
$("forget-key").addEventListener("click", () => useKey(""));

$("worst-n").addEventListener("input", plotWorst);
$("reset-pick").addEventListener("click", plotWorst);
document.addEventListener("visibilitychange", () => document.hidden || refresh());
showKeyState();
refresh();
