// The dashboard: one HTML page and one script, served by the API's own app under a strict
// Content-Security-Policy (no inline script). It logs in once (the token becomes an HttpOnly
// SameSite=Strict cookie), lists runs, starts one, and draws a run's loss live from its
// Server-Sent Events, with its eval results and spectrum figures when they exist.

export const DASHBOARD_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

export function dashboardHtml(): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>loralab</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 0 2rem 2rem; color: #222 }
h1 { font-size: 20px } h2 { font-size: 16px; margin-top: 1.5rem }
table { border-collapse: collapse } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left }
tr.run { cursor: pointer } tr.run:hover { background: #f4f8ff }
.status-completed { color: #2a7 } .status-failed { color: #c33 } .status-running { color: #27c }
textarea { width: 100%; max-width: 760px; height: 160px; font: 12px monospace }
#curve { border: 1px solid #ddd; background: #fff }
.hidden { display: none } .err { color: #c33 }
</style></head>
<body>
<h1>loralab <small>LoRA vs full fine-tuning</small></h1>
<section id="login" class="hidden">
  <p>Paste the token <code>loralab serve</code> printed (also in <code>~/.config/loralab/token</code>).</p>
  <form id="login-form"><input id="token" type="password" size="50" autocomplete="off"> <button>Log in</button></form>
  <p id="login-error" class="err"></p>
</section>
<section id="app" class="hidden">
  <h2>Runs</h2>
  <table><thead><tr><th>run</th><th>name</th><th>method</th><th>status</th><th>created</th></tr></thead><tbody id="runs"></tbody></table>
  <h2>Start a run</h2>
  <textarea id="config" spellcheck="false"></textarea><br>
  <button id="start">Start</button> <span id="start-msg"></span>
  <section id="detail" class="hidden">
    <h2>Run <span id="d-id"></span>: <span id="d-status"></span></h2>
    <p id="d-progress"></p>
    <svg id="curve" width="640" height="260" viewBox="0 0 640 260"><polyline id="loss" fill="none" stroke="#27c" stroke-width="2" points=""/><text id="loss-label" x="8" y="16" font-size="12"></text></svg>
    <div id="d-eval"></div>
    <div id="d-spectra"></div>
  </section>
</section>
<script src="/dashboard.js"></script>
</body></html>
`;
}

export function dashboardJs(): string {
  return `"use strict";
const $ = (id) => document.getElementById(id);
let current = null, source = null, points = [];

async function api(path, init) {
  const r = await fetch(path, { credentials: "same-origin", ...init, headers: { "Content-Type": "application/json", ...(init && init.headers) } });
  if (r.status === 401) { show(false); throw new Error("unauthorized"); }
  return r;
}
function show(authed) { $("login").classList.toggle("hidden", authed); $("app").classList.toggle("hidden", !authed); }

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await fetch("/api/session", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: $("token").value }) });
  if (r.status === 204) { $("login-error").textContent = ""; start(); } else $("login-error").textContent = "wrong token";
});

async function refresh() {
  const runs = await (await api("/api/runs")).json();
  const tbody = $("runs");
  tbody.replaceChildren(...runs.map((r) => {
    const tr = document.createElement("tr");
    tr.className = "run"; tr.dataset.id = r.id;
    for (const v of [r.id, r.name, r.method, r.status, r.createdAt.replace("T", " ").slice(0, 19)]) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
    tr.children[3].className = "status-" + r.status;
    tr.addEventListener("click", () => open(r.id));
    return tr;
  }));
}

function draw() {
  const W = 640, H = 260, pad = 30;
  if (!points.length) { $("loss").setAttribute("points", ""); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  $("loss").setAttribute("points", points.map(([x, y]) => ((pad + (x - x0) / (x1 - x0) * (W - 2 * pad)).toFixed(1) + "," + (H - pad - (y - y0) / (y1 - y0) * (H - 2 * pad)).toFixed(1))).join(" "));
  $("loss-label").textContent = "loss " + ys[ys.length - 1].toFixed(4) + " at step " + xs[xs.length - 1] + " (" + points.length + " points)";
}

async function results(id) {
  const res = await (await api("/api/runs/" + id + "/results")).json();
  const ev = $("d-eval"); ev.replaceChildren();
  if (res.eval.length) {
    const t = document.createElement("table");
    t.innerHTML = "<tr><th>checkpoint</th><th>task</th><th>metric</th><th>value</th><th>± se</th></tr>";
    for (const r of res.eval) { const tr = t.insertRow(); for (const v of [r.checkpoint, r.task, r.metric, r.value.toFixed(4), r.stderr == null ? "" : r.stderr.toFixed(4)]) tr.insertCell().textContent = v; }
    ev.append(t);
  }
  const arts = await (await api("/api/runs/" + id + "/artifacts")).json();
  const sp = $("d-spectra"); sp.replaceChildren();
  for (const a of arts.filter((a) => a.path.startsWith("spectrum/") && a.path.endsWith(".svg"))) {
    const img = document.createElement("img"); img.src = "/api/runs/" + id + "/artifacts/" + a.path.split("/").map(encodeURIComponent).join("/"); img.style.maxWidth = "100%"; sp.append(img);
  }
}

function open(id) {
  if (source) source.close();
  current = id; points = []; draw();
  $("detail").classList.remove("hidden"); $("d-id").textContent = id; $("d-status").textContent = "…"; $("d-progress").textContent = "";
  // EventSource sends the session cookie (same origin); the token never goes in the URL
  source = new EventSource("/api/runs/" + id + "/events");
  source.addEventListener("snapshot", (e) => { const s = JSON.parse(e.data); points = s.loss; $("d-status").textContent = s.status; draw(); });
  source.addEventListener("progress", (e) => { const p = JSON.parse(e.data); points.push([p.step, p.loss]); $("d-progress").textContent = "step " + p.step + "/" + p.total_steps + ", " + Math.round(p.tokens_per_s) + " tok/s"; draw(); });
  source.addEventListener("status", (e) => { $("d-status").textContent = JSON.parse(e.data).status; refresh(); });
  source.addEventListener("end", (e) => { $("d-status").textContent = JSON.parse(e.data).status; source.close(); refresh(); results(id); });
  results(id);
}

$("start").addEventListener("click", async () => {
  let cfg;
  try { cfg = JSON.parse($("config").value); } catch { $("start-msg").textContent = "not JSON"; return; }
  const r = await api("/api/runs", { method: "POST", body: JSON.stringify(cfg) });
  const body = await r.json();
  if (r.status === 201) { $("start-msg").textContent = "queued " + body.id; await refresh(); open(body.id); }
  else $("start-msg").textContent = body.detail;
});

async function start() {
  try {
    await refresh();
    show(true);
    const t = await (await api("/api/templates/tiny")).json();
    if (!$("config").value) $("config").value = JSON.stringify(t, null, 2);
    setInterval(() => refresh().catch(() => {}), 3000);
  } catch { show(false); }
}
start();
`;
}
