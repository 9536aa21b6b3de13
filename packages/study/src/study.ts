// `loralab sweep FILE`: the study on the user's own model and data. The file is a SweepSpec
// (TOML, YAML or JSON; its schema is spec.ts) plus `eval`: which learning task (humaneval or gsm8k) and which forgetting
// tasks to score every checkpoint on, with their data. Results go to <out>/points.json and the
// report; `loralab report DIR` redraws the report from points.json.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { evaluate, FORGETTING_DEFAULT, MC_TASKS, summarize, type EvalOptions, type TaskName } from "@loralab/eval";
import { analyze } from "@loralab/spectrum";
import {
  BASE_FIELDS,
  checkpointFields,
  evalItems,
  matrixRanks,
  meanRank,
  SIGMA_KEEP,
  type Point,
  type PointItems,
} from "./points.ts";
import { writeReport } from "./report.ts";
import { canonical } from "./spec.ts";
import { runSweep, type Checkpoint, type RunProgress, type SweepSpec } from "./sweep.ts";

/** The `eval` section of a sweep spec: the learning task and how to score (snake_case, as in
 *  the file; spec.ts holds its schema). */
export interface StudyEval {
  learning: "humaneval" | "gsm8k";
  data?: EvalOptions["data"];
  limit?: number;
  batch_size?: number;
  shots?: EvalOptions["shots"];
  humaneval?: { n?: number; temperature?: number; top_p?: number; max_length?: number; ks?: number[]; seed?: number };
  gsm8k?: { shots?: number; max_new_tokens?: number };
}

export interface StudySpec extends SweepSpec {
  eval: StudyEval;
}

/** The eval section as the evaluator's options. */
function evalOptions(
  e: StudyEval,
): Pick<EvalOptions, "data" | "limit" | "batchSize" | "shots" | "humaneval" | "gsm8k"> {
  const h = e.humaneval;
  return {
    data: e.data,
    limit: e.limit,
    batchSize: e.batch_size,
    shots: e.shots,
    humaneval: h && {
      n: h.n,
      temperature: h.temperature,
      topP: h.top_p,
      maxLength: h.max_length,
      ks: h.ks,
      seed: h.seed,
    },
    gsm8k: e.gsm8k && { shots: e.gsm8k.shots, maxNewTokens: e.gsm8k.max_new_tokens },
  };
}

/** Where a point is scored: a device (default the CPU, in process) and the sidecar's
 *  environment (a worker's GPU slot: CUDA_VISIBLE_DEVICES, the device then cuda:0). */
export interface ScoreOn {
  device?: string;
  env?: Record<string, string>;
}

/** What a point's scores depend on besides its checkpoint: the eval section and the base model
 *  (the weight change is measured against it). A short hash: points scored under another are
 *  not this spec's (a point job's key, and the cache beside a checkpoint, carry it). */
export function evalKey(spec: StudySpec): string {
  return createHash("sha256")
    .update(canonical({ eval: spec.eval, model: spec.base.model ?? null }))
    .digest("hex")
    .slice(0, 12);
}

async function score(model: string, adapter: string, spec: StudySpec, on: ScoreOn = {}) {
  const tasks: TaskName[] = [spec.eval.learning, ...MC_TASKS];
  const r = await evaluate({
    ...evalOptions(spec.eval),
    model,
    adapter: adapter || undefined,
    merged: true,
    tasks,
    ...(on.device ? { device: on.device } : {}),
    ...(on.env ? { env: on.env } : {}),
  });
  const s = summarize(r.tasks, FORGETTING_DEFAULT, spec.eval.shots);
  const lt = r.tasks[spec.eval.learning]!;
  const lm = lt.metrics[spec.eval.learning === "humaneval" ? "pass@1" : "strict_match"];
  const lse =
    typeof lm === "number"
      ? Math.sqrt((s.learning!.value * (1 - s.learning!.value)) / Math.max(1, lt.docs))
      : lm!.stderr;
  const parts = MC_TASKS.map((t) => r.tasks[t]!.metrics[FORGETTING_DEFAULT.metrics[t]] as { stderr: number });
  const fse = Math.sqrt(parts.reduce((a, p) => a + p.stderr ** 2, 0)) / parts.length;
  const div =
    spec.eval.learning === "humaneval"
      ? {
          all: lt.metrics.diversity_all as number,
          passing: lt.metrics.diversity_passing as number,
          failing: lt.metrics.diversity_failing as number,
        }
      : undefined;
  // per-item outcomes for the findings' paired bootstrap (no held-out text: no perplexity)
  const forgetting = MC_TASKS.map((t) => ({ task: t, metric: FORGETTING_DEFAULT.metrics[t] }));
  const items: PointItems = { ...evalItems(r, spec.eval.learning, forgetting), nll: [], tokens: [] };
  return {
    learning: { value: s.learning!.value, stderr: lse },
    forgetting: { value: s.forgetting!.value, stderr: fse },
    perplexity: null,
    items,
    ...(div ? { diversity: div } : {}),
  };
}

/** The base model's point (what every checkpoint is compared with). */
export async function scoreBase(spec: StudySpec, on: ScoreOn = {}): Promise<Point> {
  const baseModel = spec.base.model?.path;
  if (!baseModel)
    throw new Error(`sweep ${spec.name}: base.model.path must name the base model (HF directory or .gguf)`);
  return { ...BASE_FIELDS, rank90By: [], ...(await score(baseModel, "", spec, on)) };
}

/** One checkpoint's point: scored (learning, forgetting) and its weight change analysed, cached
 *  beside the checkpoint (study-point-<evalKey>.json) so a resumed study does not evaluate it
 *  twice, and an edited eval section evaluates it again. */
export async function scoreCheckpoint(
  spec: StudySpec,
  ck: Checkpoint,
  o: ScoreOn & { log?: (m: string) => void } = {},
): Promise<Point> {
  const dir = ck.adapter || ck.model;
  const cache = join(dir, `study-point-${evalKey(spec)}.json`);
  if (existsSync(cache)) {
    const p = JSON.parse(readFileSync(cache, "utf8")) as Point;
    if (p.items) return p; // else cached before per-item outcomes were kept: evaluated again
  }
  const baseModel = spec.base.model?.path ?? "";
  o.log?.(`eval ${ck.runId} @ ${ck.duration}`);
  const m = await score(ck.model, ck.adapter, spec, o);
  const a = await analyze(
    ck.adapter ? { base: baseModel, adapter: ck.adapter } : { base: baseModel, tuned: ck.model },
    {
      spectra: false,
      keep: SIGMA_KEEP,
    },
  );
  const p: Point = { ...checkpointFields(ck, matrixRanks(a.matrices)), ...m };
  writeFileSync(cache, JSON.stringify(p));
  return p;
}

/** points.json and the report of a sweep whose points are scored. */
export async function drawStudy(spec: StudySpec, out: string, base: Point, points: Point[]): Promise<string> {
  const title = `loralab study: ${spec.name}`;
  const label = spec.regime === "ift" ? "epochs" : "training tokens";
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, "points.json"), JSON.stringify({ title, base, points, durationLabel: label }, null, 1));
  const rep = await writeReport(join(out, "report"), {
    title,
    base,
    points,
    durationLabel: label,
    notes: [
      `Sweep spec: ${spec.name} (${spec.regime}).`,
      spec.regime === "ift"
        ? "Durations: the checkpoint at the end of each epoch of one run per cell."
        : "Durations: branches resumed from the checkpoint at 0.8·D of one long run, with a linear cooldown over their last 20 %.",
    ],
    gates: [],
  });
  return rep.html;
}

export async function runStudy(
  spec: StudySpec,
  out: string,
  log: (m: string) => void = console.log,
  progress?: RunProgress,
  /** The run store (default: SQLite `study.db` in `out`); a Slurm sweep's is the Postgres one
   *  its tasks share, and then nothing is trained here (the tasks did, and scored their
   *  checkpoints: their points are read from beside the checkpoints). */
  storeUrl?: string,
): Promise<{ report: string; points: Point[]; failed: { cell: string; error: string }[] }> {
  mkdirSync(out, { recursive: true });
  const store = await openStore(storeUrl ? { url: storeUrl } : { path: join(out, "study.db") });
  try {
    const base = await scoreBase(spec);
    const swept = await runSweep(spec, store, join(out, "runs"), log, progress, storeUrl !== undefined);
    const points: Point[] = [];
    for (const ck of swept.checkpoints) points.push(await scoreCheckpoint(spec, ck, { log }));
    return { report: await drawStudy(spec, out, base, points), points, failed: swept.failed };
  } finally {
    await store.close();
  }
}

/** A report over individual runs: each run's eval.json (loralab eval --run) and spectrum/
 * (loralab analyze --run) become points; the base is the first run's evaluated base. */
export async function reportRuns(runDirs: string[], out: string): Promise<string> {
  const points: Point[] = [];
  let base: Point | undefined;
  for (const dir of runDirs) {
    const f = join(dir, "eval.json");
    if (!existsSync(f)) throw new Error(`${dir}: no eval.json (hint: \`loralab eval --run ${dir}\` first)`);
    const e = JSON.parse(readFileSync(f, "utf8")) as {
      learning: { value: number } | null;
      forgetting: { value: number; complete?: boolean } | null;
      base: { learning: { value: number } | null; forgetting: { value: number } | null };
      tasks: Record<string, { docs: number }>;
    };
    if (!e.learning || !e.forgetting || e.forgetting.complete === false)
      throw new Error(
        `${f}: needs a learning task and the three forgetting tasks (hint: loralab eval --run ${dir} --tasks gsm8k,hellaswag,winogrande,arc_challenge)`,
      );
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as {
      run_id: string;
      seed: number;
      method: { kind: string; rank: number; targets: unknown };
      optim: { lr: number };
    };
    const n = Math.max(1, ...Object.values(e.tasks).map((t) => t.docs));
    const se = (v: number) => Math.sqrt((v * (1 - v)) / n);
    const spec = existsSync(join(dir, "spectrum", "final.json"))
      ? JSON.parse(readFileSync(join(dir, "spectrum", "final.json"), "utf8"))
      : null;
    const rank90By = spec ? matrixRanks(spec.analysis.matrices) : [];
    const lora = cfg.method.kind === "lora";
    points.push({
      key: cfg.run_id,
      group: lora ? `LoRA r=${cfg.method.rank}` : "full FT",
      method: cfg.method.kind,
      rank: lora ? cfg.method.rank : null,
      targets: String(cfg.method.targets),
      lr: cfg.optim.lr,
      seed: cfg.seed,
      duration: 1,
      tokens: 0,
      learning: { value: e.learning.value, stderr: se(e.learning.value) },
      forgetting: { value: e.forgetting.value, stderr: se(e.forgetting.value) },
      perplexity: null,
      rank90: meanRank(rank90By),
      rank90By,
    });
    if (!base && e.base.learning && e.base.forgetting)
      base = {
        ...BASE_FIELDS,
        rank90By: [],
        learning: { value: e.base.learning.value, stderr: se(e.base.learning.value) },
        forgetting: { value: e.base.forgetting.value, stderr: se(e.base.forgetting.value) },
        perplexity: null,
      };
  }
  if (!base)
    throw new Error("no run's eval.json carries its base model's scores (hint: loralab eval --run without --no-base)");
  const title = `loralab report: ${runDirs.length} runs`;
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, "points.json"), JSON.stringify({ title, base, points, durationLabel: "runs" }, null, 1));
  return (
    await writeReport(join(out, "report"), {
      title,
      base,
      points,
      durationLabel: "runs",
      notes: [
        "Points are whole runs (their final output), scored by loralab eval --run; standard errors are binomial over the largest task's items.",
      ],
      gates: [],
    })
  ).html;
}

/** Redraw a report from a points.json (a study's or the laboratory's). */
export async function redrawReport(dir: string): Promise<string> {
  const f = join(dir, "points.json");
  if (!existsSync(f))
    throw new Error(`${dir}: no points.json (hint: a directory written by loralab sweep or the laboratory)`);
  const p = JSON.parse(readFileSync(f, "utf8"));
  // the findings are decided again from the points, never read back
  return (
    await writeReport(join(dir, "report"), { ...p, notes: p.notes ?? [], gates: p.gates ?? [], findings: undefined })
  ).html;
}
