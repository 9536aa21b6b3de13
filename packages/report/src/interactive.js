// The report's interactive part, run by the browser with no server. It follows, in the same
// <script type="module">, wasm-bindgen's glue for loralab's maths (crates/maths compiled to
// WebAssembly: rankAt, paretoFrontier, ...) and `const DATA = {...}` (packages/study/src/report.ts).
// The threshold slider recomputes ΔW's rank from the stored singular values; the group
// toggles show and hide methods and ranks on the learning–forgetting plot and recompute its
// Pareto frontier; hovering a point shows its run's config.
const $ = (id) => document.getElementById(id);
const f64 = (a) => Float64Array.from(a);

function updateRanks() {
  const t = Number($("threshold").value);
  $("threshold-value").textContent = `${Math.round(t * 100)} %`;
  for (const cell of document.querySelectorAll("#ranks td[data-group]")) {
    const { group, module } = cell.dataset;
    const ms = DATA.spectra.filter((s) => s.group === group && (module === "all" || s.module === module));
    if (!ms.length) {
      cell.textContent = "";
      continue;
    }
    // a matrix whose stored values never reach t counts as (stored + 1): the mean is then a lower bound
    let sum = 0;
    let beyond = false;
    for (const s of ms) {
      const k = rankAt(f64(s.sigma), t, s.totalSq);
      if (k === undefined) beyond = true;
      sum += k ?? s.sigma.length + 1;
    }
    cell.textContent = `${beyond ? "≥ " : ""}${(sum / ms.length).toFixed(1)}`;
  }
}

const W = 720,
  H = 420,
  M = { l: 60, r: 20, t: 20, b: 50 };
const NS = "http://www.w3.org/2000/svg";
// one colour per group, the same the static figures use (DATA.colors, from the report)
const colorOf = (g) => DATA.colors?.[g] ?? "#000";

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  parent?.appendChild(e);
  return e;
}

function drawPareto() {
  const svg = $("pareto");
  const xs = DATA.points.map((p) => p.learning),
    ys = DATA.points.map((p) => p.forgetting);
  const pad = (lo, hi) => [lo - 0.05 * (hi - lo || 1), hi + 0.05 * (hi - lo || 1)];
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const sx = (v) => M.l + ((v - x0) / (x1 - x0)) * (W - M.l - M.r);
  const sy = (v) => H - M.b - ((v - y0) / (y1 - y0)) * (H - M.t - M.b);
  el("line", { x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b, stroke: "#888" }, svg);
  el("line", { x1: M.l, y1: M.t, x2: M.l, y2: H - M.b, stroke: "#888" }, svg);
  for (let i = 0; i <= 4; i++) {
    const vx = x0 + ((x1 - x0) * i) / 4,
      vy = y0 + ((y1 - y0) * i) / 4;
    el("text", { x: sx(vx), y: H - M.b + 16, "text-anchor": "middle", "font-size": 11 }, svg).textContent = (
      100 * vx
    ).toFixed(1);
    el("text", { x: M.l - 6, y: sy(vy) + 4, "text-anchor": "end", "font-size": 11 }, svg).textContent = (
      100 * vy
    ).toFixed(1);
  }
  el("text", { x: (M.l + W - M.r) / 2, y: H - 12, "text-anchor": "middle", "font-size": 12 }, svg).textContent =
    `learning: ${DATA.learningLabel} (%)`;
  el(
    "text",
    {
      x: 14,
      y: (M.t + H - M.b) / 2,
      "text-anchor": "middle",
      "font-size": 12,
      transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})`,
    },
    svg,
  ).textContent = "source retention: source cloze (%, higher = forgot less)";
  el("polyline", { id: "frontier-line", fill: "none", stroke: "#555", "stroke-dasharray": "4 3" }, svg);
  const groups = [...new Set(DATA.points.map((p) => p.group))].filter((g) => g !== "base");
  DATA.points.forEach((p, i) => {
    const color = p.group === "base" ? "#000" : colorOf(p.group);
    const mark =
      p.group === "base"
        ? el(
            "rect",
            {
              x: sx(p.learning) - 6,
              y: sy(p.forgetting) - 6,
              width: 12,
              height: 12,
              fill: color,
              transform: `rotate(45 ${sx(p.learning)} ${sy(p.forgetting)})`,
            },
            svg,
          )
        : el(
            "circle",
            {
              cx: sx(p.learning),
              cy: sy(p.forgetting),
              r: 4 + 2 * Math.sqrt(p.duration / DATA.maxDuration),
              fill: color,
              "fill-opacity": 0.75,
            },
            svg,
          );
    mark.classList.add("point");
    mark.dataset.index = String(i);
    mark.dataset.group = p.group;
    mark.addEventListener("mouseenter", (ev) => showConfig(p, ev));
    mark.addEventListener("mousemove", (ev) => placeTip(ev));
    mark.addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  });
  const toggles = $("toggles");
  for (const g of groups) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" checked data-group="${g.replace(/"/g, "&quot;")}"> <span style="color:${colorOf(g)}">●</span> ${g.replace(/</g, "&lt;")}`;
    label.querySelector("input").addEventListener("change", () => updateFrontier(sx, sy));
    toggles.appendChild(label);
  }
  updateFrontier(sx, sy);
}

function updateFrontier(sx, sy) {
  const on = new Set([...document.querySelectorAll("#toggles input:checked")].map((c) => c.dataset.group));
  on.add("base");
  for (const m of document.querySelectorAll("#pareto .point")) m.style.display = on.has(m.dataset.group) ? "" : "none";
  const shown = DATA.points.map((p, i) => [p, i]).filter(([p]) => on.has(p.group));
  const idx = paretoFrontier(f64(shown.map(([p]) => p.learning)), f64(shown.map(([p]) => p.forgetting)));
  const front = [...idx].map((k) => shown[k]);
  $("frontier-line").setAttribute("points", front.map(([p]) => `${sx(p.learning)},${sy(p.forgetting)}`).join(" "));
  for (const m of document.querySelectorAll("#pareto .point")) m.setAttribute("stroke", "none");
  for (const [, i] of front) document.querySelector(`#pareto .point[data-index="${i}"]`).setAttribute("stroke", "#000");
  // each point with its duration: one run's checkpoints are several points
  $("frontier").textContent = front
    .map(([p]) => (p.group === "base" ? p.key : `${p.key} @ ${p.duration} ${DATA.durationLabel}`))
    .join(" → ");
  $("frontier").dataset.indices = front.map(([, i]) => i).join(",");
}

function showConfig(p, ev) {
  const pct = (m, s) => `${(100 * m).toFixed(1)} % ± ${(196 * s).toFixed(1)}`;
  const rows = [
    ["run", p.key],
    ["method", p.method],
    ["LoRA rank", p.rank ?? "—"],
    ["targets", p.targets || "—"],
    ["learning rate", p.lr ? p.lr.toExponential(1) : "—"],
    ["seed", p.seed],
    [DATA.durationLabel, p.duration],
    ["learning", pct(p.learning, p.learningSe)],
    ["source retention", pct(p.forgetting, p.forgettingSe)],
  ];
  const tip = $("tooltip");
  tip.innerHTML = `<table>${rows.map(([k, v]) => `<tr><th>${k}</th><td>${String(v).replace(/</g, "&lt;")}</td></tr>`).join("")}</table>`;
  tip.hidden = false;
  placeTip(ev);
}

function placeTip(ev) {
  const tip = $("tooltip");
  tip.style.left = `${ev.pageX + 14}px`;
  tip.style.top = `${ev.pageY + 10}px`;
}

$("threshold").addEventListener("input", updateRanks);
updateRanks();
drawPareto();
document.body.dataset.interactive = "ready";
