// The study's report: Vega-Lite figures rendered to SVG on the server (vega), PNG beside each
// (resvg), a self-contained HTML page with every figure inline, a table of every point, and
// findings computed from the data, each with its uncertainty — never a canned sentence.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Resvg } from "@resvg/resvg-js";
import * as vega from "vega";
import * as vl from "vega-lite";
import { maths } from "@loralab/engine";
import { groupColors, interactiveHtml, INTERACTIVE_CSS, type InteractiveData } from "@loralab/report";
import { frontier } from "./decide.ts";
import { type Finding, findings } from "./findings.ts";
import { cellOf, fmtNum, type Point } from "./points.ts";

export type { Finding };

const Z = 1.96; // 95 % intervals from bootstrap standard errors

async function render(spec: vl.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
  return view.toSVG();
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** Points not dominated in (learning up, forgetting-score up): the learning–forgetting frontier,
 *  by learning ascending. The shared maths (loralab-maths through the engine; the report's
 *  page recomputes it in the browser from the same code compiled to WebAssembly). */
export function paretoFrontier(ps: Point[]): Point[] {
  return maths
    .paretoFrontier(
      ps.map((p) => p.learning.value),
      ps.map((p) => p.forgetting.value),
    )
    .map((i) => ps[i]!);
}

function rows(points: Point[]) {
  return points.map((p) => ({
    group: p.group,
    key: p.key,
    lr: p.lr,
    seed: p.seed,
    duration: p.duration,
    // percent, as in the table
    learning: 100 * p.learning.value,
    lLo: 100 * (p.learning.value - Z * p.learning.stderr),
    lHi: 100 * (p.learning.value + Z * p.learning.stderr),
    forgetting: 100 * p.forgetting.value,
    fLo: 100 * (p.forgetting.value - Z * p.forgetting.stderr),
    fHi: 100 * (p.forgetting.value + Z * p.forgetting.stderr),
    perplexity: p.perplexity,
    status: p.diverged ? "diverged" : "trained",
  }));
}

/** Each method's learning–retention frontier as the findings interpolate it: the base and the
 *  method's cells at each duration (the mean over their seeds that did not diverge), those no
 *  other beats in both, joined by lines. */
function methodFrontiers(base: Point, points: Point[]) {
  const names: Record<string, string> = { full: "full FT frontier", lora: "LoRA frontier" };
  return Object.entries(names).flatMap(([m, name]) => {
    const cells = new Map<string, Point[]>();
    for (const p of points.filter((q) => q.method === m && !q.diverged)) {
      const k = `${cellOf(p.key)}\u0000${p.duration}`;
      cells.set(k, [...(cells.get(k) ?? []), p]);
    }
    const mean = (ps: Point[], f: (p: Point) => number) => ps.reduce((a, p) => a + f(p), 0) / ps.length;
    return frontier([
      { x: base.learning.value, y: base.forgetting.value },
      ...[...cells.values()].map((ps) => ({
        x: mean(ps, (p) => p.learning.value),
        y: mean(ps, (p) => p.forgetting.value),
      })),
    ]).map((q, i) => ({ frontier: name, order: i, learning: 100 * q.x, forgetting: 100 * q.y }));
  });
}

const SHAPE = {
  field: "status",
  type: "nominal" as const,
  scale: { domain: ["trained", "diverged"], range: ["circle", "cross"] },
  title: "run",
};

export interface Figures {
  name: string;
  title: string;
  svg: string;
}

export async function figures(base: Point, points: Point[], durationLabel: string): Promise<Figures[]> {
  const data = rows(points);
  const fronts = methodFrontiers(base, points);
  // one colour per group, the interactive plot's too
  const colors = groupColors([...new Set(points.map((p) => p.group))]);
  const colour = (title?: string) => ({
    field: "group",
    type: "nominal" as const,
    scale: { domain: Object.keys(colors), range: Object.values(colors) },
    ...(title ? { title } : {}),
  });
  const out: Figures[] = [];
  const axisL = {
    field: "learning",
    type: "quantitative" as const,
    title: "learning: target-task accuracy (%)",
    scale: { zero: false },
  };
  const axisF = {
    field: "forgetting",
    type: "quantitative" as const,
    title: "source retention: source cloze acc_norm (%, higher = forgot less)",
    scale: { zero: false },
  };
  out.push({
    name: "pareto",
    title:
      "Learning vs source retention: each method's frontier over its cells' seed means, as the matched-learning finding interpolates it (base marked; size = duration; crosses = diverged; 95 % intervals)",
    svg: await render({
      width: 560,
      height: 400,
      layer: [
        {
          data: { values: fronts },
          mark: { type: "line", color: "#777" },
          encoding: {
            x: axisL,
            y: axisF,
            strokeDash: {
              field: "frontier",
              type: "nominal",
              scale: {
                domain: ["full FT frontier", "LoRA frontier"],
                range: [
                  [6, 3],
                  [1, 2],
                ],
              },
              title: "frontier (no diverged)",
            },
            order: { field: "order", type: "quantitative" },
          },
        },
        {
          data: { values: data },
          mark: { type: "rule", opacity: 0.4 },
          encoding: {
            x: { field: "lLo", type: "quantitative" },
            x2: { field: "lHi" },
            y: axisF,
            color: colour("method"),
          },
        },
        {
          data: { values: data },
          mark: { type: "rule", opacity: 0.4 },
          encoding: {
            y: { field: "fLo", type: "quantitative" },
            y2: { field: "fHi" },
            x: axisL,
            color: colour(),
          },
        },
        {
          data: { values: data },
          mark: { type: "line", opacity: 0.6 },
          encoding: {
            x: axisL,
            y: axisF,
            color: colour(),
            detail: [
              { field: "lr", type: "nominal" },
              { field: "seed", type: "nominal" },
            ],
            order: { field: "duration", type: "quantitative" },
          },
        },
        {
          data: { values: data },
          mark: { type: "point", filled: true },
          encoding: {
            x: axisL,
            y: axisF,
            color: colour(),
            shape: SHAPE,
            size: { field: "duration", type: "quantitative", title: durationLabel },
            tooltip: [{ field: "key" }, { field: "duration", title: durationLabel }, { field: "status" }],
          },
        },
        {
          data: {
            values: [{ learning: 100 * base.learning.value, forgetting: 100 * base.forgetting.value, label: "base" }],
          },
          layer: [
            {
              mark: { type: "point", shape: "diamond", size: 220, color: "black", filled: true },
              encoding: { x: axisL, y: axisF },
            },
            {
              mark: { type: "text", dx: 14, align: "left" },
              encoding: { x: axisL, y: axisF, text: { field: "label" } },
            },
          ],
        },
      ],
    } as vl.TopLevelSpec),
  });
  // learning and forgetting over training, best learning rate of each group
  const best = bestLrPoints(points);
  const long = best.flatMap((p) => [
    {
      group: p.group,
      duration: p.duration,
      measure: "learning (target accuracy, %)",
      value: 100 * p.learning.value,
      lo: 100 * (p.learning.value - Z * p.learning.stderr),
      hi: 100 * (p.learning.value + Z * p.learning.stderr),
    },
    {
      group: p.group,
      duration: p.duration,
      measure: "source retention (source cloze, %)",
      value: 100 * p.forgetting.value,
      lo: 100 * (p.forgetting.value - Z * p.forgetting.stderr),
      hi: 100 * (p.forgetting.value + Z * p.forgetting.stderr),
    },
  ]);
  out.push({
    name: "duration",
    title: `Learning and forgetting vs training duration (${durationLabel}; each group at its best learning rate)`,
    svg: await render({
      data: { values: long },
      facet: { column: { field: "measure", type: "nominal", title: null } },
      spec: {
        width: 300,
        height: 240,
        layer: [
          {
            mark: { type: "line", point: true },
            encoding: {
              x: { field: "duration", type: "quantitative", title: durationLabel },
              y: { field: "value", type: "quantitative", scale: { zero: false }, title: null },
              color: colour("method"),
            },
          },
          {
            mark: { type: "errorbar" },
            encoding: {
              x: { field: "duration", type: "quantitative" },
              y: { field: "lo", type: "quantitative" },
              y2: { field: "hi" },
              color: colour(),
            },
          },
        ],
      },
      resolve: { scale: { y: "independent" } },
    } as vl.TopLevelSpec),
  });
  // LR sensitivity at the longest duration
  const maxD = Math.max(...points.map((p) => p.duration));
  const atEnd = data.filter((d) => d.duration === maxD);
  out.push({
    name: "lr",
    title:
      "Learning-rate sensitivity: learning at the longest duration, every seed (crosses = diverged; 95 % intervals)",
    svg: await render({
      width: 480,
      height: 300,
      data: { values: atEnd },
      layer: [
        {
          mark: { type: "line" },
          encoding: {
            x: { field: "lr", type: "quantitative", scale: { type: "log" }, title: "learning rate" },
            y: { field: "learning", type: "quantitative", title: "learning: target-task accuracy (%)" },
            color: colour("method"),
            detail: { field: "seed", type: "nominal" },
          },
        },
        {
          mark: { type: "point", filled: true, size: 60 },
          encoding: {
            x: { field: "lr", type: "quantitative", scale: { type: "log" } },
            y: { field: "learning", type: "quantitative", title: "learning: target-task accuracy (%)" },
            color: colour(),
            shape: SHAPE,
            tooltip: [{ field: "key" }, { field: "status" }],
          },
        },
        {
          mark: { type: "errorbar" },
          encoding: {
            x: { field: "lr", type: "quantitative" },
            // the same title, or Vega-Lite joins the field name to it ("…, lLo")
            y: { field: "lLo", type: "quantitative", title: "learning: target-task accuracy (%)" },
            y2: { field: "lHi" },
            color: colour(),
          },
        },
      ],
    } as vl.TopLevelSpec),
  });
  // target-module ablation (LoRA groups at the same rank and their best LR)
  const lora = best.filter((p) => p.method === "lora" && p.duration === maxD);
  if (new Set(lora.map((p) => p.targets)).size > 1) {
    const vals = lora.flatMap((p) => [
      {
        targets: `r=${p.rank} ${p.targets}`,
        measure: "learning (%)",
        value: 100 * p.learning.value,
        lo: 100 * (p.learning.value - Z * p.learning.stderr),
        hi: 100 * (p.learning.value + Z * p.learning.stderr),
      },
      {
        targets: `r=${p.rank} ${p.targets}`,
        measure: "source retention (%)",
        value: 100 * p.forgetting.value,
        lo: 100 * (p.forgetting.value - Z * p.forgetting.stderr),
        hi: 100 * (p.forgetting.value + Z * p.forgetting.stderr),
      },
    ]);
    out.push({
      name: "targets",
      title: "Target-module ablation (LoRA, longest duration, best LR)",
      svg: await render({
        data: { values: vals },
        facet: { column: { field: "measure", type: "nominal", title: null } },
        spec: {
          width: 220,
          height: 220,
          layer: [
            {
              mark: "bar",
              encoding: {
                x: { field: "targets", type: "nominal", title: null },
                y: { field: "value", type: "quantitative", title: null },
              },
            },
            {
              mark: "errorbar",
              encoding: {
                x: { field: "targets", type: "nominal" },
                y: { field: "lo", type: "quantitative" },
                y2: { field: "hi" },
              },
            },
          ],
        },
        resolve: { scale: { y: "independent" } },
      } as vl.TopLevelSpec),
    });
  }
  // rank@90 % of ΔW by layer and module (final checkpoints, best LR)
  const spec90 = best
    .filter((p) => p.duration === maxD)
    .flatMap((p) => p.rank90By.map((r) => ({ group: p.group, module: r.module, layer: r.layer, rank: r.rank })));
  out.push({
    name: "rank90",
    title: "Rank needed to explain 90 % of ΔW's variance, by layer and module (longest duration)",
    svg: await render({
      data: { values: spec90 },
      facet: {
        column: {
          field: "module",
          type: "nominal",
          sort: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
          title: null,
        },
      },
      spec: {
        width: 110,
        height: 200,
        mark: { type: "line", point: true },
        encoding: {
          x: { field: "layer", type: "ordinal" },
          y: { field: "rank", type: "quantitative", title: "rank@90 %" },
          color: colour("method"),
        },
      },
    } as vl.TopLevelSpec),
  });
  // generation diversity (HumanEval sweeps): distinct completions per problem against learning
  const div = points.filter((p) => p.diversity);
  if (div.length) {
    const vals = div.flatMap((p) => [
      { group: p.group, learning: 100 * p.learning.value, kind: "all", distinct: p.diversity!.all },
      { group: p.group, learning: 100 * p.learning.value, kind: "passing", distinct: p.diversity!.passing },
      { group: p.group, learning: 100 * p.learning.value, kind: "failing", distinct: p.diversity!.failing },
    ]);
    out.push({
      name: "diversity",
      title: "Generation diversity: distinct completions per problem (all, passing, failing) against learning",
      svg: await render({
        data: { values: vals },
        facet: { column: { field: "kind", type: "nominal", title: null } },
        spec: {
          width: 220,
          height: 220,
          mark: { type: "point", filled: true },
          encoding: {
            x: { field: "learning", type: "quantitative", title: "pass@1 (%)" },
            y: { field: "distinct", type: "quantitative", title: "distinct completions" },
            color: colour("method"),
          },
        },
      } as vl.TopLevelSpec),
    });
  }
  return out;
}

/** Per group and duration, the learning rate with the best learning at the longest duration (seed 0 preferred). */
export function bestLrPoints(points: Point[]): Point[] {
  const maxD = Math.max(...points.map((p) => p.duration));
  const out: Point[] = [];
  for (const g of new Set(points.map((p) => p.group))) {
    const gp = points.filter((p) => p.group === g);
    const finals = gp.filter((p) => p.duration === maxD && p.seed === Math.min(...gp.map((x) => x.seed)));
    const bestLr = [...finals].sort((a, b) => b.learning.value - a.learning.value)[0]?.lr;
    out.push(...gp.filter((p) => p.lr === bestLr && p.seed === finals[0]?.seed));
  }
  return out;
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
const ci = (m: { value: number; stderr: number }) => `${pct(m.value)} ± ${pct(Z * m.stderr)}`;

/** What the page's interactive section computes from: every point, and ΔW's stored spectra of
 *  the points at the longest duration. */
export function interactiveData(base: Point, points: Point[], durationLabel: string): InteractiveData {
  const maxD = Math.max(0, ...points.map((p) => p.duration));
  return {
    durationLabel,
    learningLabel: "target-task accuracy",
    colors: groupColors([...new Set(points.map((p) => p.group))]),
    points: [base, ...points].map((p) => ({
      key: p.key,
      group: p.group,
      method: p.method,
      rank: p.rank,
      targets: p.targets,
      lr: p.lr,
      seed: p.seed,
      duration: p.duration,
      learning: p.learning.value,
      learningSe: p.learning.stderr,
      forgetting: p.forgetting.value,
      forgettingSe: p.forgetting.stderr,
    })),
    spectra: points
      .filter((p) => p.duration === maxD)
      .flatMap((p) =>
        p.rank90By
          .filter((r) => r.sigma?.length)
          .map((r) => ({
            key: p.key,
            group: p.group,
            module: r.module,
            layer: r.layer,
            sigma: r.sigma!,
            totalSq: r.totalSq ?? 0,
          })),
      ),
  };
}

export interface ReportInput {
  title: string;
  base: Point;
  points: Point[];
  durationLabel: string;
  notes: string[];
  gates: { name: string; passed: boolean; detail: string }[];
  /** Decided already (the laboratory decides before it writes); else decided here. */
  findings?: Finding[];
}

/** Write report.html (self-contained) and <figure>.svg/.png into `dir`; returns the HTML path. */
export async function writeReport(
  dir: string,
  r: ReportInput,
): Promise<{ html: string; pngs: string[]; findings: Finding[] }> {
  mkdirSync(dir, { recursive: true });
  const figs = await figures(r.base, r.points, r.durationLabel);
  const pngs: string[] = [];
  for (const f of figs) {
    writeFileSync(join(dir, `${f.name}.svg`), f.svg);
    const png = new Resvg(f.svg, { background: "white", font: { loadSystemFonts: true } }).render().asPng();
    writeFileSync(join(dir, `${f.name}.png`), png);
    pngs.push(join(dir, `${f.name}.png`));
  }
  const fs = r.findings ?? findings(r.base, r.points);
  const table = [r.base, ...r.points]
    .map(
      (p) =>
        `<tr><td>${esc(p.group)}</td><td>${esc(p.key)}</td><td>${p.lr ? p.lr.toExponential(0) : ""}</td><td>${p.seed}</td><td>${p.duration}</td><td>${ci(p.learning)}</td><td>${ci(p.forgetting)}</td><td>${fmtNum(p.perplexity, 2)}</td><td>${fmtNum(p.rank90, 1)}</td></tr>`,
    )
    .join("\n");
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.title)}</title>
<style>body{font:14px system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}figure{margin:1.5rem 0}.held{color:#2a7}.not{color:#c33}.und{color:#a70}${INTERACTIVE_CSS}</style>
</head><body>
<h1>${esc(r.title)}</h1>
<h2>Quality gates</h2><ul>${r.gates.map((g) => `<li class="${g.passed ? "held" : "not"}">${g.passed ? "passed" : "FAILED"}: ${esc(g.name)} — ${esc(g.detail)}</li>`).join("")}</ul>
<h2>Findings (decided on this sweep's numbers)</h2><ul>${fs.map((f) => `<li><b>${esc(f.claim)}</b>${f.primary ? "" : " (supporting)"}: <span class="${f.held === true ? "held" : f.held === false ? "not" : "und"}">${f.verdict}</span>. ${esc(f.evidence)}</li>`).join("")}</ul>
${interactiveHtml(interactiveData(r.base, r.points, r.durationLabel))}
${figs.map((f) => `<figure>${f.svg}<figcaption>${esc(f.title)}</figcaption></figure>`).join("\n")}
<h2>Every point</h2>
<table><tr><th>method</th><th>cell</th><th>lr</th><th>seed</th><th>${esc(r.durationLabel)}</th><th>learning (95 %)</th><th>source retention (95 %)</th><th>source ppl</th><th>ΔW rank@90 %</th></tr>
${table}</table>
<h2>Notes</h2><ul>${r.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>
</body></html>
`;
  const file = join(dir, "report.html");
  writeFileSync(file, html);
  return { html: file, pngs, findings: fs };
}
