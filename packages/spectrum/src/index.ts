// @loralab/spectrum: why LoRA forgets less, measured — the spectrum of ΔW for a base/tuned
// pair, an adapter, or every checkpoint of a run (the engine computes; this walks runs,
// writes JSON and draws the study's figures as SVG).
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { openEngine, type Reply, resolveModelInput, runDirectory } from "@loralab/engine";
import { colorRamp, lineChart, panels, type Chart } from "@loralab/report";

export const MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;

export interface AnalyzeOptions {
  modules?: string[];
  layers?: number[];
  /** Explained-variance thresholds for rank@ (default [0.9]). */
  thresholds?: number[];
  /** Singular values stored per spectrum (default 256). */
  keep?: number;
  /** Spectra of W_base and W_tuned too (default true). */
  spectra?: boolean;
  intruders?: boolean;
  intruderTopK?: number;
  intruderThreshold?: number;
  memoryMb?: number;
  threads?: number;
  onProgress?: (done: number, total: number, matrix: string) => void;
}

// the engine's reply types, generated from its protocol schema
export type Analysis = Reply<"analyze">;
export type MatrixAnalysis = Analysis["matrices"][number];
export type SpectrumStats = MatrixAnalysis["delta"];

export class AnalyzeError extends Error {
  override name = "AnalyzeError";
}

/** Spectra of ΔW between `base` and `tuned` (a full model) or `adapter` (PEFT). */
export async function analyze(
  pair: { base: string; tuned?: string; adapter?: string },
  o: AnalyzeOptions = {},
): Promise<Analysis> {
  // Hub ids are fetched into the Hugging Face cache first
  const local = async (spec: string | undefined, field: string) =>
    spec ? (await resolveModelInput(spec, field)).path : "";
  const req = {
    base: await local(pair.base, "base"),
    tuned: await local(pair.tuned, "tuned"),
    adapter: await local(pair.adapter, "adapter"),
    modules: o.modules ?? [],
    layers: o.layers ?? [],
    thresholds: o.thresholds ?? [0.9],
    keep: o.keep ?? 256,
    spectra: o.spectra ?? true,
    intruders: o.intruders ?? false,
    intruder_top_k: o.intruderTopK ?? 10,
    intruder_threshold: o.intruderThreshold ?? 0.5,
    memory_mb: o.memoryMb ?? 4096,
    threads: o.threads ?? 0,
  };
  const engine = await openEngine();
  try {
    return await engine.request("analyze", req, {
      onEvent: (e) => {
        if (e.type === "matrix") o.onProgress?.(e.done, e.total, e.matrix);
      },
    });
  } finally {
    await engine.close();
  }
}

export type RandomBaseline = Reply<"random_baseline">;

/** The study's control: Gaussian A, B (n×n); spectra of A, cB, A + cB and the mean shift as c varies. */
export async function randomBaseline(n = 1000, cs = [1, 0.5, 0.2, 0.1, 0.05, 0.01], seed = 0): Promise<RandomBaseline> {
  const engine = await openEngine();
  try {
    return await engine.request("random_baseline", { n, cs, seed });
  } finally {
    await engine.close();
  }
}

// ------------------------------------------------------------------ runs

export interface CheckpointAnalysis {
  checkpoint: string;
  step: number | null;
  tokens: number | null;
  analysis: Analysis;
}

/** A run's checkpoints in training order, then its final output; each with what ΔW is against the base. */
export function runCheckpoints(runDir: string): {
  name: string;
  dir: string;
  step: number | null;
  tokens: number | null;
  kind: "tuned" | "adapter";
  base: string;
}[] {
  // the layout is the engine's (io/rundir.rs): this only reads what it reports
  const rd = runDirectory(runDir);
  if (!rd.config)
    throw new AnalyzeError(
      `${runDir}: not a run directory (no config.json) (hint: --run takes a run id under runs/ or a run directory)`,
    );
  const cfg = rd.config as { model?: { path?: string }; method?: { kind?: string } };
  const base = cfg.model?.path ? cfg.model.path : rd.base;
  if (!base)
    throw new AnalyzeError(
      `${runDir}: no base to measure ΔW against: its config has no model.path and the run has no base/ (hint: analyze a checkpoint against its base with --base B --tuned T or --adapter A)`,
    );
  const kind = cfg.method?.kind === "lora" ? "adapter" : "tuned";
  const out: {
    name: string;
    dir: string;
    step: number | null;
    tokens: number | null;
    kind: typeof kind;
    base: string;
  }[] = rd.checkpoints.map((c) => ({
    name: basename(c.path),
    dir: c.path,
    step: c.step,
    tokens: c.tokens,
    kind,
    base,
  }));
  // the final output, unless the last checkpoint already is it (a checkpoint is written at the end)
  const lastStep = out[out.length - 1]?.step;
  if (rd.output && !(lastStep != null && lastStep === rd.total_steps))
    out.push({ name: "final", dir: rd.output, step: null, tokens: null, kind, base });
  if (!out.length)
    throw new AnalyzeError(
      `${runDir}: no checkpoints and no final ${kind === "adapter" ? "adapter" : "model"} to analyse`,
    );
  return out;
}

function writeJson(file: string, v: unknown) {
  mkdirSync(join(file, ".."), { recursive: true });
  writeFileSync(`${file}.tmp`, `${JSON.stringify(v)}\n`);
  renameSync(`${file}.tmp`, file);
}

/** Every checkpoint of a run: `<run>/spectrum/<checkpoint>.json`, and the figures beside them. */
export async function analyzeRun(
  runDir: string,
  o: AnalyzeOptions & { onCheckpoint?: (name: string, i: number, n: number) => void } = {},
): Promise<CheckpointAnalysis[]> {
  const cks = runCheckpoints(runDir);
  const out: CheckpointAnalysis[] = [];
  // a fresh analysis replaces the last one whole: no stale checkpoint files or figures
  const dir = join(runDir, "spectrum");
  if (existsSync(dir)) for (const f of readdirSync(dir)) if (/\.(json|svg)$/.test(f)) rmSync(join(dir, f));
  for (const [i, c] of cks.entries()) {
    o.onCheckpoint?.(c.name, i + 1, cks.length);
    const analysis = await analyze(
      { base: c.base, ...(c.kind === "adapter" ? { adapter: c.dir } : { tuned: c.dir }) },
      o,
    );
    const r = { checkpoint: c.name, step: c.step, tokens: c.tokens, analysis };
    writeJson(join(runDir, "spectrum", `${c.name}.json`), r);
    out.push(r);
  }
  writeFigures(join(runDir, "spectrum"), out);
  return out;
}

// ------------------------------------------------------------------ figures

const compact = (n: number) =>
  n >= 1e9
    ? `${(n / 1e9).toPrecision(3)}B`
    : n >= 1e6
      ? `${(n / 1e6).toPrecision(3)}M`
      : n >= 1e3
        ? `${(n / 1e3).toPrecision(3)}k`
        : String(n);

/** The study's Fig. 6: rank@threshold of ΔW by layer, a panel per module type, a line per checkpoint. */
export function rankByLayerFigure(cks: CheckpointAnalysis[], threshold = "0.9"): string {
  const colors = colorRamp(cks.length);
  const modules = MODULES.filter((m) => cks.some((c) => c.analysis.matrices.some((x) => x.module === m)));
  const charts: Chart[] = modules.map((mod) => ({
    title: mod,
    xLabel: "layer",
    yLabel: `rank@${Number(threshold) * 100}% of ΔW`,
    width: 300,
    height: 230,
    series: cks.map((c, i) => ({
      name: c.step !== null ? `step ${c.step}${c.tokens !== null ? ` (${compact(c.tokens)} tok)` : ""}` : c.checkpoint,
      color: colors[i]!,
      points: c.analysis.matrices
        .filter((x) => x.module === mod)
        .map((x) => [x.layer, x.delta.rank_at[threshold] ?? NaN] as [number, number]),
    })),
  }));
  return panels(
    `rank needed to explain ${Number(threshold) * 100}% of ΔW's variance (${cks[0]?.analysis.kind === "lora" ? "LoRA" : "full FT"})`,
    charts,
    4,
  );
}

/** The study's Fig. S7: singular values of W_base, W_tuned, ΔW (and the noise floor) for one matrix. */
export function spectraFigure(m: MatrixAnalysis, label = ""): string {
  const s = (name: string, color: string, st: SpectrumStats | null, dashed = false) =>
    st ? [{ name, color, dashed, points: st.singular_values.map((v, i) => [i + 1, v] as [number, number]) }] : [];
  return lineChart({
    title: `${m.name}${label ? ` (${label})` : ""}`,
    xLabel: "index i",
    yLabel: "σ_i",
    logY: true,
    width: 560,
    height: 360,
    series: [
      ...s("W_base", "#555", m.base),
      ...s("W_tuned", "#1f77b4", m.tuned, true),
      ...s("ΔW", "#d62728", m.delta),
      ...s(m.noise_floor?.frobenius === 0 ? "noise floor (zero)" : "noise floor", "#999", m.noise_floor, true),
    ],
  });
}

/** The random baseline: spectra of A and A + cB for each c, and the mean shift against c. */
export function baselineFigure(b: RandomBaseline): string {
  const colors = colorRamp(b.points.length);
  const spectra: Chart = {
    title: `σ(A + cB), Gaussian ${b.n}×${b.n}`,
    xLabel: "index i",
    yLabel: "σ_i",
    width: 460,
    height: 320,
    series: [
      { name: "A", color: "#000", points: b.sigma_a.map((v, i) => [i + 1, v]) },
      ...b.points.map((p, i) => ({
        name: `A + ${p.c}·B`,
        color: colors[i]!,
        dashed: true,
        points: p.sigma_sum.map((v, j) => [j + 1, v] as [number, number]),
      })),
    ],
  };
  const shift: Chart = {
    title: "mean |σ(A + cB) − σ(A)| / mean σ(A)",
    xLabel: "c",
    yLabel: "relative shift",
    width: 460,
    height: 320,
    series: [{ name: "shift", color: "#d62728", points: b.points.map((p) => [p.c, p.relative_shift]) }],
  };
  return panels("random-matrix baseline (the study's control)", [spectra, shift], 2);
}

/** rank_by_layer.svg, and spectra of the most-changed matrix at the last checkpoint. */
export function writeFigures(dir: string, cks: CheckpointAnalysis[], matrix?: string): string[] {
  mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  const last = cks[cks.length - 1];
  if (!last) return files;
  for (const t of last.analysis.thresholds.map(String)) {
    const f = join(dir, `rank_by_layer_${t}.svg`);
    writeFileSync(f, rankByLayerFigure(cks, t));
    files.push(f);
  }
  const pick = matrix
    ? last.analysis.matrices.find((m) => m.name === matrix)
    : [...last.analysis.matrices].sort((a, b) => b.relative_change - a.relative_change)[0];
  if (matrix && !pick)
    throw new AnalyzeError(
      `matrix ${matrix} was not analysed (hint: names like model.layers.0.self_attn.q_proj.weight)`,
    );
  if (pick) {
    const f = join(dir, `spectra_${pick.name.replace(/[^\w.]+/g, "_")}.svg`);
    writeFileSync(f, spectraFigure(pick, last.checkpoint));
    files.push(f);
  }
  return files;
}
