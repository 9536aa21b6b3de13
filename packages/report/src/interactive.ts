// The interactive section of a report page: a threshold slider over ΔW's rank, the
// learning–forgetting plot with toggles per group and its Pareto frontier, hover for a run's
// config. Computed in the browser by loralab's maths in WebAssembly (wasm.ts), inlined with
// the data and interactive.js, so the page stays one self-contained file.
import { readFileSync } from "node:fs";
import { WASM_HINT, wasmInline } from "./wasm.ts";

/** What identifies one run of a study: its point on the plot, its group, its config. */
export interface RunFields {
  key: string;
  group: string;
  method: string;
  rank: number | null;
  targets: string;
  lr: number;
  seed: number;
  duration: number;
}

export interface InteractivePoint extends RunFields {
  learning: number;
  learningSe: number;
  forgetting: number;
  forgettingSe: number;
}

export interface InteractiveSpectrum {
  key: string;
  group: string;
  module: string;
  layer: number;
  /** ΔW's largest singular values. */
  sigma: number[];
  /** Σσ² over the whole spectrum. */
  totalSq: number;
}

/** The colour of each method group, in order of first appearance: the static figures and the
 *  interactive plot use this one palette (Tableau 10). */
export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#9467bd",
  "#ff7f0e",
  "#8c564b",
  "#e377c2",
  "#17becf",
  "#bcbd22",
  "#7f7f7f",
];

export function groupColors(groups: string[]): Record<string, string> {
  const named = groups.filter((g) => g !== "base");
  return Object.fromEntries(named.map((g, i) => [g, PALETTE[i % PALETTE.length]!]));
}

export interface InteractiveData {
  points: InteractivePoint[];
  /** Group → colour (groupColors). */
  colors: Record<string, string>;
  spectra: InteractiveSpectrum[];
  durationLabel: string;
  learningLabel: string;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

export function interactiveHtml(d: InteractiveData): string {
  const wasm = wasmInline();
  if (wasm === null)
    return `<section id="interactive"><h2>Interactive section</h2><p class="note">${esc(WASM_HINT.replace(/^report: /, ""))}. The static figures below show the same data.</p></section>`;
  const groups = [...new Set(d.spectra.map((s) => s.group))];
  const modules = [...new Set(d.spectra.map((s) => s.module))];
  const maxDuration = Math.max(1, ...d.points.map((p) => p.duration));
  const ranks = groups.length
    ? `<h3>Rank of ΔW at a threshold of explained variance</h3>
<p><label for="threshold">threshold</label> <input type="range" id="threshold" min="0.5" max="0.99" step="0.01" value="0.9"> <output id="threshold-value">90 %</output></p>
<table id="ranks"><tr><th>group</th>${modules.map((m) => `<th>${esc(m)}</th>`).join("")}<th>all</th></tr>
${groups.map((g) => `<tr><td>${esc(g)}</td>${[...modules, "all"].map((m) => `<td data-group="${esc(g)}" data-module="${esc(m)}"></td>`).join("")}</tr>`).join("\n")}</table>
<p class="note">Smallest k whose k largest singular values of ΔW explain the threshold of Σσ², mean over layers and over each group's points at the longest duration; "≥" where the stored values do not reach the threshold.</p>`
    : `<p class="note">No stored spectra: the rank slider needs points analysed with their singular values kept.</p><input type="hidden" id="threshold" value="0.9"><output id="threshold-value" hidden></output>`;
  const script = readFileSync(new URL("./interactive.js", import.meta.url), "utf8");
  // JSON inside <script>: "<" escaped so no "</script>" can close it early
  const data = JSON.stringify({ ...d, maxDuration }).replace(/</g, "\\u003c");
  return `<section id="interactive">
<h2>Interactive (computed in this page by loralab's maths, compiled to WebAssembly)</h2>
${ranks}
<h3>Learning vs forgetting: toggle groups, hover a point for its run</h3>
<div id="toggles"></div>
<svg id="pareto" width="720" height="420" role="img" aria-label="learning against source retention"></svg>
<p>Pareto frontier of the shown points: <span id="frontier"></span></p>
<div id="tooltip" hidden></div>
</section>
<script type="module">
${wasm}
const DATA = ${data};
${script}
</script>`;
}

/** Styles the section uses (for the page's <style>). */
export const INTERACTIVE_CSS =
  "#toggles label{margin-right:1rem}#tooltip{position:absolute;background:#fff;border:1px solid #999;padding:4px 8px;font-size:12px;box-shadow:0 2px 6px #0003;pointer-events:none}#tooltip th{text-align:right;font-weight:normal;color:#666}.note{color:#666;font-size:12px}";
