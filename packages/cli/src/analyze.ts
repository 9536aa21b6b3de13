// `loralab analyze`: the spectrum of the weight change, with a progress bar; JSON per
// checkpoint and the study's figures (SVG). Also the random-matrix baseline.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "@loralab/engine";
import { cliArgs } from "./args.ts";
import { countBars } from "./progress.ts";
import {
  analyze,
  analyzeRun,
  baselineFigure,
  randomBaseline,
  writeFigures,
  type Analysis,
  type AnalyzeOptions,
} from "@loralab/spectrum";

export const ANALYZE_USAGE = `usage: loralab analyze (--base B (--tuned T | --adapter A) | --run ID|DIR) [options]
       loralab analyze --baseline [--n 1000] [--c 1,0.5,0.2,0.1,0.05,0.01] [--out DIR]
  --modules q_proj,v_proj   module types (default all seven)
  --layers 0,5,31           layers (default all)
  --threshold 0.9,0.99      explained-variance thresholds for rank@ (default 0.9)
  --intruders               intruder dimensions (singular vectors: several times slower)
  --no-spectra              ΔW only, not W_base / W_tuned (faster)
  --keep N                  singular values stored per spectrum (default 256)
  --matrix NAME             the matrix whose spectra are drawn (default: the most changed)
  --memory-mb N             budget for matrices in flight (default 4096)
  --out DIR                 where JSON and SVG go (default: <run>/spectrum, or ./spectrum)`;

function list(v: string | undefined, flag: string, parse: (s: string) => number = Number): number[] | undefined {
  if (v === undefined) return undefined;
  const out = v.split(",").map((s) => parse(s.trim()));
  if (out.some((x) => !Number.isFinite(x)))
    throw new ConfigError(`--${flag} ${v}: expected comma-separated numbers`, flag);
  return out;
}

function summary(a: Analysis, t: string): string {
  const rows = new Map<string, number[]>();
  for (const m of a.matrices) rows.set(m.module, [...(rows.get(m.module) ?? []), m.delta.rank_at[t] ?? NaN]);
  const lines = [`ΔW (${a.kind}), rank@${t} by module (mean over layers, of max rank):`];
  for (const [mod, r] of rows) {
    const m = a.matrices.find((x) => x.module === mod)!;
    lines.push(
      `  ${mod.padEnd(10)} ${(r.reduce((x, y) => x + y, 0) / r.length).toFixed(1).padStart(8)} / ${m.delta.max_rank}`,
    );
  }
  if (a.low_precision) lines.push(`note: ${a.precision_note}`);
  return lines.join("\n");
}

export async function cmdAnalyze(args: string[]): Promise<number> {
  const a = cliArgs(
    "analyze",
    args,
    {
      base: { type: "string" },
      tuned: { type: "string" },
      adapter: { type: "string" },
      run: { type: "string" },
      modules: { type: "string" },
      layers: { type: "string" },
      threshold: { type: "string" },
      intruders: { type: "boolean" },
      "no-spectra": { type: "boolean" },
      keep: { type: "string" },
      matrix: { type: "string" },
      "memory-mb": { type: "string" },
      out: { type: "string" },
      baseline: { type: "boolean" },
      n: { type: "string" },
      c: { type: "string" },
    },
    ANALYZE_USAGE,
    0,
  ).values;
  if (a.help) {
    console.log(ANALYZE_USAGE);
    return 0;
  }
  if (a.baseline) {
    const n = Number(a.n ?? 1000);
    if (!Number.isInteger(n) || n < 2) throw new ConfigError(`--n ${a.n}: expected an integer ≥ 2`, "n");
    const b = await randomBaseline(n, list(a.c, "c") ?? undefined);
    const dir = a.out ?? "spectrum";
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "random_baseline.json"), `${JSON.stringify(b)}\n`);
    writeFileSync(join(dir, "random_baseline.svg"), baselineFigure(b));
    for (const p of b.points)
      console.log(`c = ${String(p.c).padEnd(6)} mean |σ(A+cB) − σ(A)| / mean σ(A) = ${p.relative_shift.toFixed(4)}`);
    console.log(`results: ${join(dir, "random_baseline.json")}, ${join(dir, "random_baseline.svg")}`);
    return 0;
  }
  const thresholds = list(a.threshold, "threshold");
  for (const t of thresholds ?? [])
    if (!(t > 0 && t <= 1)) throw new ConfigError(`--threshold ${t}: must be in (0, 1]`, "threshold");
  const o: AnalyzeOptions = {
    modules: a.modules?.split(",").map((s) => s.trim()),
    layers: list(a.layers, "layers"),
    thresholds,
    intruders: a.intruders,
    spectra: !a["no-spectra"],
    keep: a.keep ? Number(a.keep) : undefined,
    memoryMb: a["memory-mb"] ? Number(a["memory-mb"]) : undefined,
  };
  const t = String(thresholds?.[0] ?? 0.9);
  if (a.run) {
    const runDir = existsSync(join(a.run, "config.json")) ? a.run : join("runs", a.run);
    let label = "";
    const bar = countBars();
    const cks = await analyzeRun(runDir, {
      ...o,
      onCheckpoint: (name, i, n) => (label = `${name} (${i}/${n})`),
      onProgress: (d, n, m) => bar(label, d, n, m),
    });
    for (const c of cks)
      console.log(
        `\n${c.checkpoint}${c.tokens !== null ? ` (${c.tokens.toLocaleString("en-US")} tokens)` : ""}: ${summary(c.analysis, t)}`,
      );
    if (a.matrix) writeFigures(join(runDir, "spectrum"), cks, a.matrix);
    console.log(
      `\nresults: ${join(runDir, "spectrum")}/ (one JSON per checkpoint, rank_by_layer_*.svg, spectra_*.svg)`,
    );
    return 0;
  }
  if (!a.base || (!a.tuned && !a.adapter) || (a.tuned && a.adapter))
    throw new ConfigError(`give --base and one of --tuned / --adapter, or --run\n${ANALYZE_USAGE}`, "base");
  const bar = countBars();
  const r = await analyze(
    { base: a.base, tuned: a.tuned, adapter: a.adapter },
    { ...o, onProgress: (d, n, m) => bar("analyze", d, n, m) },
  );
  console.log(summary(r, t));
  const dir = a.out ?? "spectrum";
  const c = { checkpoint: "tuned", step: null, tokens: null, analysis: r };
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "analysis.json"), `${JSON.stringify(c)}\n`);
  const figs = writeFigures(dir, [c], a.matrix);
  console.log(`results: ${join(dir, "analysis.json")}, ${figs.join(", ")} (${r.seconds.toFixed(1)} s)`);
  return 0;
}
