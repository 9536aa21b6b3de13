// The dashboard: one HTML page and one script, served by the API's own app under a strict
// Content-Security-Policy (no inline script, no eval: the charts are Vega-Lite, compiled in the
// page and run by Vega's expression interpreter, from /vendor/). It logs in once (the token
// becomes an HttpOnly SameSite=Strict cookie), lists runs with their hyperparameters (sortable,
// filterable), overlays the selected runs' loss, learning rate, gradient norm, throughput,
// validation loss and scores over steps, live from each run's Server-Sent Events; starts runs,
// evaluates and analyses finished ones; and draws a sweep's learning–forgetting plane with each
// method's frontier and the findings as its checkpoints are scored.

export const DASHBOARD_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** Most runs shown at once, the ticked and the opened together: each live one holds a stream
 *  open, the sweep page one more, and a browser opens at most 6 connections to one origin (the
 *  rest, fetches included, wait); this leaves room for the page's own requests. */
export const MAX_OVERLAY = 4;

export function dashboardHtml(): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>loralab</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 0 2rem 2rem; color: #222 }
h1 { font-size: 20px } h2 { font-size: 16px; margin-top: 1.5rem }
nav a { margin-right: 1rem; cursor: pointer; color: #27c } nav a.on { font-weight: 600; color: #222 }
table { border-collapse: collapse } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap }
th[data-key] { cursor: pointer; user-select: none } th.sorted-asc::after { content: " ▲" } th.sorted-desc::after { content: " ▼" }
tr.run, tr.sweep { cursor: pointer } tr.run:hover, tr.sweep:hover { background: #f4f8ff } tr.open { background: #eef4ff }
.status-completed { color: #2a7 } .status-failed { color: #c33 } .status-running { color: #27c } .status-cancelled { color: #a70 }
textarea { width: 100%; max-width: 760px; height: 140px; font: 12px monospace }
.charts { display: flex; flex-wrap: wrap; gap: 12px } .chart { border: 1px solid #eee; padding: 4px; min-height: 40px }
.hidden { display: none } .err { color: #c33 } .muted { color: #777 }
.held { color: #2a7 } .refuted { color: #c33 } .not-yet { color: #777 }
</style></head>
<body>
<h1>loralab <small>LoRA vs full fine-tuning</small></h1>
<section id="login" class="hidden">
  <p>Paste the token <code>loralab serve</code> printed (also in <code>~/.config/loralab/token</code>).</p>
  <form id="login-form"><input id="token" type="password" size="50" autocomplete="off"> <button>Log in</button></form>
  <p id="login-error" class="err"></p>
</section>
<section id="app" class="hidden">
  <nav><a id="nav-runs" class="on">Runs</a><a id="nav-sweeps">Sweeps</a></nav>
  <p id="charts-error" class="err"></p>
  <section id="runs-view">
    <h2>Runs</h2>
    <p><input id="filter" placeholder="filter: any text of a row (lora, completed, 0.001…)" size="50">
      <span class="muted">tick runs to overlay them and click a row to open one: up to ${MAX_OVERLAY} shown at once</span></p>
    <table><thead><tr><th></th><th data-key="id">run</th><th data-key="name">name</th><th data-key="method">method</th><th data-key="rank">rank</th><th data-key="targets">targets</th><th data-key="lr">lr</th><th data-key="steps">steps</th><th data-key="seed">seed</th><th data-key="status">status</th><th data-key="created">created</th></tr></thead><tbody id="runs"></tbody></table>
    <section id="detail" class="hidden">
      <h2>Run <span id="d-id"></span>: <span id="d-status"></span></h2>
      <p id="d-progress"></p>
      <p><button id="evaluate">Evaluate</button> <button id="analyze">Analyze</button> <button id="cancel">Cancel</button> <span id="d-job"></span></p>
    </section>
    <section id="overlay" class="hidden">
      <h2>Over steps: <span id="shown"></span></h2>
      <div class="charts" id="charts"></div>
      <div id="d-eval"></div>
      <div id="d-spectra"></div>
    </section>
    <h2>Start a run</h2>
    <textarea id="config" spellcheck="false"></textarea><br>
    <button id="start">Start</button> <span id="start-msg"></span>
  </section>
  <section id="sweeps-view" class="hidden">
    <h2>Sweeps</h2>
    <table><thead><tr><th>sweep</th><th>name</th><th>grid</th><th>created</th></tr></thead><tbody id="sweeps"></tbody></table>
    <section id="sweep" class="hidden">
      <h2>Sweep <span id="s-id"></span> <span id="s-name"></span>: <span id="s-progress"></span></h2>
      <div class="charts"><div class="chart" id="chart-pareto"></div></div>
      <h2>Findings so far</h2>
      <ul id="findings"></ul>
      <table><thead><tr><th>run</th><th>params</th><th>status</th></tr></thead><tbody id="s-runs"></tbody></table>
    </section>
    <h2>Start a sweep</h2>
    <textarea id="sweep-config" spellcheck="false"></textarea><br>
    <button id="start-sweep">Start sweep</button> <span id="sweep-msg"></span>
  </section>
</section>
<script src="/vendor/vega.js"></script>
<script src="/vendor/vega-lite.js"></script>
<script src="/vendor/vega-interpreter.js"></script>
<script src="/dashboard.js"></script>
</body></html>
`;
}

export function dashboardJs(): string {
  return `"use strict";
const $ = (id) => document.getElementById(id);
const MAX_OVERLAY = ${MAX_OVERLAY};
const MAX_SHOWN = "at most " + MAX_OVERLAY + " runs shown at once (ticked and opened together): untick one first";
const METRICS = [["loss", "training loss"], ["val_loss", "validation loss"], ["lr", "learning rate"], ["grad_norm", "gradient norm"], ["tokens_per_s", "tokens / s"]];
// what the page knows: runs by id, each shown run's series (metric name → [step, value]) and
// scores, the charts (a Vega view each, readable by tests as window.loralab.charts)
const state = { runs: new Map(), selected: new Set(), open: null, data: new Map(), streams: new Map(), sort: ["created", -1], sweep: null, sweepStream: null };
const charts = {};
window.loralab = { charts, state };

async function api(path, init) {
  const r = await fetch(path, { credentials: "same-origin", ...init, headers: { "Content-Type": "application/json", ...(init && init.headers) } });
  if (r.status === 401) { show(false); throw new Error("unauthorized"); }
  return r;
}
function show(authed) { $("login").classList.toggle("hidden", authed); $("app").classList.toggle("hidden", !authed); }
function el(tag, text, cls) { const e = document.createElement(tag); if (text != null) e.textContent = text; if (cls) e.className = cls; return e; }

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await fetch("/api/session", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: $("token").value }) });
  if (r.status === 204) { $("login-error").textContent = ""; start(); } else $("login-error").textContent = "wrong token";
});

// ---------------------------------------------------------------- charts (Vega-Lite)

const STEP_AXIS = { field: "step", type: "quantitative", title: "step", axis: { tickMinStep: 1, format: "d" } };
const NO_CHARTS = "the charts need vega, vega-lite and vega-interpreter installed beside the server (hint: bun install)";
const chartsOk = () => typeof vega !== "undefined" && typeof vegaLite !== "undefined" && typeof vegaExpressionInterpreter !== "undefined";

/** A Vega-Lite spec compiled here and run by the interpreter (the CSP allows no eval); its rows
 *  come through the named dataset "table". */
async function chart(key, container, spec) {
  if (charts[key]) return charts[key];
  const vl = { $schema: "https://vega.github.io/schema/vega-lite/v6.json", data: { name: "table" }, width: 380, height: 200, ...spec };
  const view = new vega.View(vega.parse(vegaLite.compile(vl).spec, null, { ast: true }), { expr: vegaExpressionInterpreter, renderer: "svg", container, hover: true });
  charts[key] = view;
  await view.runAsync();
  return view;
}
async function setRows(view, rows) {
  // resize(): autosize lays the axes and legend out again for the new rows
  await view.change("table", vega.changeset().remove(() => true).insert(rows)).resize().runAsync();
}

/** A run as the legends name it: the end of its id (names repeat, ids are long), then its name. */
function label(id) { const r = state.runs.get(id); return id.slice(-6) + (r ? " · " + r.name : ""); }
// the scores taken while a run trains are the base's (step 0) and its checkpoints' (step-N)
const stepOf = (checkpoint) => (checkpoint === "base" ? 0 : Number(checkpoint.slice("step-".length)));

let drawing = null;
function redraw() { drawing ??= setTimeout(() => { drawing = null; drawCharts().catch(chartError); }, 60); }
function chartError(e) { $("charts-error").textContent = "charts: " + e.message; }

async function drawCharts() {
  const shown = [...state.data.keys()];
  $("overlay").classList.toggle("hidden", !shown.length);
  $("shown").textContent = shown.join(", ");
  if (!chartsOk()) { $("charts-error").textContent = NO_CHARTS; return; }
  const box = $("charts");
  for (const [name, title] of METRICS) {
    const rows = [];
    for (const [run, d] of state.data) for (const [step, value] of d.metrics[name] || []) rows.push({ run, label: label(run), step, value });
    let div = $("chart-" + name);
    if (!rows.length) { if (div) div.classList.add("hidden"); continue; }
    if (!div) { div = el("div", null, "chart"); div.id = "chart-" + name; box.append(div); }
    div.classList.remove("hidden");
    const view = await chart(name, div, {
      title,
      mark: { type: "line", point: name === "val_loss" },
      encoding: {
        x: STEP_AXIS,
        y: { field: "value", type: "quantitative", title, scale: { zero: false } },
        color: { field: "label", type: "nominal", title: "run", legend: { labelLimit: 320 } },
      },
    });
    await setRows(view, rows);
  }
  // scores over steps: the forgetting score and the learning metric of each scored checkpoint
  const scores = [];
  for (const [run, d] of state.data)
    // the scores taken while it trained (a later job's, job:*, are on other tasks or documents)
    for (const r of d.eval) if (r.metric === "score" && (r.task === "forgetting" || r.task === "learning") && !r.checkpoint.startsWith("job:")) scores.push({ run, label: label(run), step: stepOf(r.checkpoint), score: r.task, value: r.value, checkpoint: r.checkpoint });
  let div = $("chart-eval");
  if (scores.length) {
    if (!div) { div = el("div", null, "chart"); div.id = "chart-eval"; box.append(div); }
    div.classList.remove("hidden");
    const view = await chart("eval", div, {
      title: "scores (forgetting: retained source skill; learning: target metric)",
      mark: { type: "line", point: true },
      encoding: {
        x: STEP_AXIS,
        y: { field: "value", type: "quantitative", title: "score", scale: { zero: false } },
        color: { field: "label", type: "nominal", title: "run", legend: { labelLimit: 320 } },
        strokeDash: { field: "score", type: "nominal", title: "score" },
      },
    });
    await setRows(view, scores.sort((a, b) => a.step - b.step));
  } else if (div) div.classList.add("hidden");
}

// ---------------------------------------------------------------- runs table

const cfg = (r) => r.config || {};
function params(r) {
  const c = cfg(r), m = c.method || {}, t = c.train || {}, o = c.optim || {};
  return { id: r.id, name: r.name, method: r.method, rank: m.kind === "lora" ? m.rank : "", targets: m.kind === "lora" ? [].concat(m.targets || []).join(",") : "", lr: o.lr ?? "", steps: t.steps ?? "", seed: c.seed ?? "", status: r.status, created: r.createdAt.replace("T", " ").slice(0, 19) };
}
function renderRuns() {
  const q = $("filter").value.trim().toLowerCase();
  const [key, dir] = state.sort;
  const rows = [...state.runs.values()].map(params).filter((p) => !q || Object.values(p).join(" ").toLowerCase().includes(q));
  rows.sort((a, b) => { const x = a[key], y = b[key]; const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)); return c * dir; });
  $("runs").replaceChildren(...rows.map((p) => {
    const tr = el("tr", null, "run" + (p.id === state.open ? " open" : "")); tr.dataset.id = p.id;
    const box = el("input"); box.type = "checkbox"; box.className = "select"; box.checked = state.selected.has(p.id);
    box.addEventListener("click", (e) => { e.stopPropagation(); toggle(p.id, box.checked); box.checked = state.selected.has(p.id); });
    const td0 = el("td"); td0.append(box); tr.append(td0);
    for (const k of ["id", "name", "method", "rank", "targets", "lr", "steps", "seed", "status", "created"]) { const td = el("td", String(p[k])); td.dataset.key = k; if (k === "status") td.className = "status-" + p.status; tr.append(td); }
    tr.addEventListener("click", () => open(p.id));
    return tr;
  }));
  for (const th of document.querySelectorAll("th[data-key]")) { th.classList.toggle("sorted-asc", th.dataset.key === key && dir === 1); th.classList.toggle("sorted-desc", th.dataset.key === key && dir === -1); }
}
for (const th of document.querySelectorAll("th[data-key]")) th.addEventListener("click", () => { state.sort = [th.dataset.key, state.sort[0] === th.dataset.key ? -state.sort[1] : 1]; renderRuns(); });
$("filter").addEventListener("input", renderRuns);

async function refresh() {
  const runs = await (await api("/api/runs")).json();
  state.runs = new Map(runs.map((r) => [r.id, r]));
  renderRuns();
}

// ---------------------------------------------------------------- one run's stream

/** Watch a run: its snapshot (every metric and score so far), then each event as it comes. */
function watch(id) {
  if (state.streams.has(id)) return;
  const d = state.data.get(id) || { metrics: {}, eval: [] };
  state.data.set(id, d);
  const es = new EventSource("/api/runs/" + encodeURIComponent(id) + "/events");
  state.streams.set(id, es);
  // a resumed attempt logs again from its checkpoint: what the dead one logged past it goes
  const push = (name, step, v) => { const s = (d.metrics[name] ??= []); while (s.length && s[s.length - 1][0] >= step) s.pop(); s.push([step, v]); };
  es.addEventListener("snapshot", (e) => { const s = JSON.parse(e.data); d.metrics = s.metrics; d.eval = s.eval || []; if (id === state.open) { $("d-status").textContent = s.status; if (s.job) showJob(s.job); } redraw(); });
  es.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    for (const k of ["loss", "lr", "grad_norm", "tokens_per_s"]) push(k, p.step, p[k]);
    if (id === state.open) $("d-progress").textContent = "step " + p.step + "/" + p.total_steps + ", " + Math.round(p.tokens_per_s) + " tok/s, loss " + p.loss.toFixed(4);
    redraw();
  });
  es.addEventListener("validation", (e) => { const v = JSON.parse(e.data); push("val_loss", v.step, v.val_loss); redraw(); });
  es.addEventListener("eval", (e) => { const v = JSON.parse(e.data); d.eval = Array.isArray(v) ? v : v.results; redraw(); if (id === state.open) results(id); });
  es.addEventListener("spectra", () => { if (id === state.open) results(id); });
  es.addEventListener("job", (e) => { if (id === state.open) showJob(JSON.parse(e.data)); });
  es.addEventListener("status", (e) => { if (id === state.open) $("d-status").textContent = JSON.parse(e.data).status; refresh(); });
  es.addEventListener("end", (e) => { const s = JSON.parse(e.data).status; if (id === state.open) { $("d-status").textContent = s; results(id); } es.close(); if (state.streams.get(id) === es) state.streams.delete(id); refresh(); });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED && state.streams.get(id) === es) state.streams.delete(id); };
}
function showJob(j) { $("d-job").textContent = j.job + ": " + j.state + (j.detail ? " — " + j.detail : ""); }
function unwatch(id) {
  const es = state.streams.get(id); if (es) es.close();
  state.streams.delete(id); state.data.delete(id);
}
function shownWith(id) { const s = new Set(state.selected); if (state.open) s.add(state.open); s.add(id); return s.size; }
function toggle(id, on) {
  if (on && shownWith(id) > MAX_OVERLAY) { $("charts-error").textContent = MAX_SHOWN; return; }
  if ($("charts-error").textContent === MAX_SHOWN) $("charts-error").textContent = "";
  if (on) { state.selected.add(id); watch(id); }
  else { state.selected.delete(id); if (id !== state.open) unwatch(id); }
  redraw();
}

async function results(id) {
  const res = await (await api("/api/runs/" + encodeURIComponent(id) + "/results")).json();
  const ev = $("d-eval"); ev.replaceChildren();
  if (res.eval.length) {
    const t = el("table");
    const h = t.insertRow(); for (const v of ["checkpoint", "task", "metric", "value", "± se", "docs"]) h.append(el("th", v));
    for (const r of res.eval) { const tr = t.insertRow(); for (const v of [r.checkpoint, r.task, r.metric, r.value.toFixed(4), r.stderr == null ? "" : r.stderr.toFixed(4), r.n || ""]) tr.insertCell().textContent = v; }
    ev.append(el("h2", "Scores of " + id), t);
  }
  const arts = await (await api("/api/runs/" + encodeURIComponent(id) + "/artifacts")).json();
  const sp = $("d-spectra"); sp.replaceChildren();
  const figs = arts.filter((a) => a.path.startsWith("spectrum/") && a.path.endsWith(".svg"));
  if (figs.length) sp.append(el("h2", "Spectrum of ΔW (" + id + ")"));
  for (const a of figs) { const img = el("img"); img.src = "/api/runs/" + encodeURIComponent(id) + "/artifacts/" + a.path.split("/").map(encodeURIComponent).join("/"); img.style.maxWidth = "100%"; img.alt = a.path; sp.append(img); }
}

function open(id) {
  const prev = state.open;
  if (id !== prev && !state.selected.has(id) && state.selected.size + 1 > MAX_OVERLAY) { $("charts-error").textContent = MAX_SHOWN; return; }
  if ($("charts-error").textContent === MAX_SHOWN) $("charts-error").textContent = "";
  state.open = id;
  if (prev && prev !== id && !state.selected.has(prev)) unwatch(prev);
  $("detail").classList.remove("hidden"); $("d-id").textContent = id; $("d-status").textContent = (state.runs.get(id) || {}).status || "…"; $("d-progress").textContent = ""; $("d-job").textContent = "";
  watch(id); renderRuns(); redraw(); results(id);
}
async function job(kind) {
  const id = state.open; if (!id) return;
  const r = await api("/api/runs/" + encodeURIComponent(id) + "/" + kind, { method: "POST", body: "{}" });
  const body = await r.json();
  if (r.status !== 202) { $("d-job").textContent = body.detail; return; }
  $("d-job").textContent = kind + ": queued";
  // a stream opened now stays open while the job runs (one opened before may be ending: it is
  // closed, its series kept, and the run watched again)
  const es = state.streams.get(id); if (es) es.close();
  state.streams.delete(id);
  watch(id);
}
$("evaluate").addEventListener("click", () => job("evaluate"));
$("analyze").addEventListener("click", () => job("analyze"));
$("cancel").addEventListener("click", async () => { if (!state.open) return; const r = await api("/api/runs/" + encodeURIComponent(state.open) + "/cancel", { method: "POST" }); $("d-job").textContent = r.status === 202 ? "cancelling" : (await r.json()).detail; });

$("start").addEventListener("click", async () => {
  let c;
  try { c = JSON.parse($("config").value); } catch { $("start-msg").textContent = "not JSON"; return; }
  const r = await api("/api/runs", { method: "POST", body: JSON.stringify(c) });
  const body = await r.json();
  if (r.status === 201) { $("start-msg").textContent = "queued " + body.id; await refresh(); open(body.id); }
  else $("start-msg").textContent = body.detail;
});

// ---------------------------------------------------------------- sweeps

async function refreshSweeps() {
  const sweeps = await (await api("/api/sweeps")).json();
  $("sweeps").replaceChildren(...sweeps.map((s) => {
    const tr = el("tr", null, "sweep"); tr.dataset.id = s.id;
    for (const v of [s.id, s.name, Object.entries((s.config && s.config.grid) || {}).map(([k, v]) => k + " × " + v.length).join(", "), s.createdAt.replace("T", " ").slice(0, 19)]) tr.append(el("td", v));
    tr.addEventListener("click", () => openSweep(s.id));
    return tr;
  }));
}
async function drawSweep(s) {
  state.sweep = s;
  $("sweep").classList.remove("hidden"); $("s-id").textContent = s.id; $("s-name").textContent = s.name;
  const done = s.runs.filter((r) => ["completed", "cancelled", "failed"].includes(r.status)).length;
  $("s-progress").textContent = done + " of " + s.runs.length + " runs ended, " + s.points.length + " checkpoints scored";
  $("findings").replaceChildren(...s.findings.map((f) => { const li = el("li"); li.dataset.id = f.id; li.append(el("b", f.claim + ": "), el("span", f.leaning, f.leaning.replace(" ", "-")), el("span", " — " + f.evidence)); return li; }));
  $("s-runs").replaceChildren(...s.runs.map((r) => { const tr = el("tr"); for (const v of [r.id, JSON.stringify(r.params), r.status]) tr.append(el("td", v)); tr.children[2].className = "status-" + r.status; return tr; }));
  if (!chartsOk()) return;
  const rows = s.points.map((p, i) => ({ ...p, kind: "checkpoint", order: i }));
  // a frontier's index -1 is the base, where every method starts
  for (const [g, idx] of Object.entries(s.frontiers)) idx.forEach((i, k) => rows.push({ ...(i < 0 ? { run: "base", checkpoint: "base", step: 0, ...s.base } : s.points[i]), group: g, kind: "frontier", order: k }));
  if (s.base) rows.push({ run: "base", group: "base", checkpoint: "base", step: 0, learning: s.base.learning, forgetting: s.base.forgetting, kind: "base", order: 0 });
  const view = await chart("pareto", $("chart-pareto"), {
    title: "learning vs forgetting, each scored checkpoint; lines: each method's Pareto frontier",
    width: 460, height: 320,
    layer: [
      { transform: [{ filter: "datum.kind === 'checkpoint'" }], mark: { type: "point", filled: true, size: 60 }, encoding: { x: { field: "learning", type: "quantitative", title: "learning (target metric)", scale: { zero: false } }, y: { field: "forgetting", type: "quantitative", title: "forgetting score (higher: less forgotten)", scale: { zero: false } }, color: { field: "group", type: "nominal", title: "method" } } },
      { transform: [{ filter: "datum.kind === 'frontier'" }], mark: { type: "line", strokeDash: [4, 3] }, encoding: { x: { field: "learning", type: "quantitative" }, y: { field: "forgetting", type: "quantitative" }, color: { field: "group", type: "nominal" }, order: { field: "order", type: "quantitative" } } },
      { transform: [{ filter: "datum.kind === 'base'" }], mark: { type: "point", shape: "cross", size: 120, color: "#000", filled: true }, encoding: { x: { field: "learning", type: "quantitative" }, y: { field: "forgetting", type: "quantitative" } } },
    ],
  });
  await setRows(view, rows);
}
function openSweep(id) {
  if (state.sweepStream) state.sweepStream.close();
  const es = new EventSource("/api/sweeps/" + encodeURIComponent(id) + "/events");
  state.sweepStream = es;
  es.addEventListener("sweep", (e) => drawSweep(JSON.parse(e.data)).catch(chartError));
  es.addEventListener("end", () => { es.close(); if (state.sweepStream === es) state.sweepStream = null; });
}
$("start-sweep").addEventListener("click", async () => {
  let c;
  try { c = JSON.parse($("sweep-config").value); } catch { $("sweep-msg").textContent = "not JSON"; return; }
  const r = await api("/api/sweeps", { method: "POST", body: JSON.stringify(c) });
  const body = await r.json();
  if (r.status === 201) { $("sweep-msg").textContent = "queued " + body.id + " (" + body.runs.length + " runs)"; await refreshSweeps(); openSweep(body.id); }
  else $("sweep-msg").textContent = body.detail;
});

function tab(name) {
  // the sweep's stream only while its page shows
  if (name !== "sweeps" && state.sweepStream) { state.sweepStream.close(); state.sweepStream = null; }
  $("runs-view").classList.toggle("hidden", name !== "runs"); $("sweeps-view").classList.toggle("hidden", name !== "sweeps");
  $("nav-runs").classList.toggle("on", name === "runs"); $("nav-sweeps").classList.toggle("on", name === "sweeps");
  if (name === "sweeps") { refreshSweeps(); if (state.sweep && !state.sweepStream) openSweep(state.sweep.id); }
}
$("nav-runs").addEventListener("click", () => tab("runs"));
$("nav-sweeps").addEventListener("click", () => tab("sweeps"));

async function start() {
  try {
    await refresh();
    show(true);
    const t = await (await api("/api/templates/tiny")).json();
    if (!$("config").value) $("config").value = JSON.stringify(t, null, 2);
    if (!$("sweep-config").value) $("sweep-config").value = JSON.stringify({ name: "lora-vs-full", base: t, grid: { method: [{ kind: "lora", rank: 4 }, { kind: "full" }] } }, null, 2);
    if (!chartsOk()) $("charts-error").textContent = NO_CHARTS;
    setInterval(() => refresh().catch(() => {}), 3000);
  } catch { show(false); }
}
start();
`;
}
