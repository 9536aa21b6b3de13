// A sweep: a grid over method (full, lora, hybrid), rank, alpha = k·rank, targets, learning
// rate and seed, plus regularised full-FT baselines (weight decay, attention dropout). Every
// cell is a run in the store (its id derived from the sweep and the cell, so an interrupted
// sweep resumes: finished cells are skipped, a cell with a checkpoint resumes from it).
// Durations as the study made them: for IFT, the checkpoint at the end of each epoch of one
// run; for CPT, branches resumed from the checkpoint at 0.8·D of one long run, each with a
// linear cooldown over its last 20 % (the trapezoidal schedule). Every checkpoint is then
// evaluated (learning and forgetting) and its weight change analysed.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { LOGGED_METRICS, type MetricRow, type Store } from "@loralab/db";
import {
  ConfigError,
  lastCheckpoint,
  loggedStep,
  merge,
  resolveConfig,
  runDirectory,
  train,
  type ProgressEvent,
  type RunConfig,
  type TrainOptions,
  type ValidationEvent,
} from "@loralab/engine";

export type Method = "full" | "lora" | "hybrid";

export interface SweepSpec {
  name: string;
  regime: "ift" | "cpt";
  /** Everything the cells share (model, data, optimizer defaults, micro-batch...). */
  base: RunConfig;
  methods: Method[];
  /** Learning rates per method. */
  lr: Partial<Record<Method | "full_wd" | "full_dropout", number[]>>;
  ranks?: number[];
  /** alpha = k·rank (default [2], the study's choice). */
  alpha_factors?: number[];
  /** rsLoRA instead: this fixed alpha, scaled by alpha/√rank (replaces alpha_factors). */
  rslora_alpha?: number;
  /** LoRA target sets: "all", "attention", "mlp" or module lists. */
  targets?: (string | string[])[];
  seeds?: number[];
  /** IFT: epochs (checkpoints of one run); CPT: training tokens (branches). */
  durations: number[];
  /** Full FT with these regularisers as extra baselines (the study's comparison). */
  regularizers?: { weight_decay?: number; attention_dropout?: number };
  /** Hybrid: LoRA for this fraction of the budget, merge, then full FT of these modules. */
  hybrid?: { lora_fraction: number; full_targets: string[]; rank: number };
  /** Training records (IFT: examples) per epoch, to place the epoch checkpoints. */
  records_per_epoch?: number;
}

export interface Cell {
  key: string;
  method: Method | "full_wd" | "full_dropout";
  rank: number | null;
  alpha: number | null;
  /** LoRA's scale is alpha/√rank (rsLoRA), not alpha/rank. */
  rslora?: boolean;
  targets: string;
  lr: number;
  seed: number;
}

export interface Checkpoint {
  cell: Cell;
  runId: string;
  /** What is evaluated: a model directory, or a base + adapter. */
  model: string;
  adapter: string;
  /** Epochs (IFT) or tokens (CPT) trained. */
  duration: number;
  tokens: number;
}

const fmt = (x: number) => x.toExponential(0).replace("+", "");

export function cells(spec: SweepSpec): Cell[] {
  const out: Cell[] = [];
  const seeds = spec.seeds ?? [0];
  const targetsList = spec.targets ?? ["all"];
  const tname = (t: string | string[]) => (Array.isArray(t) ? t.join("+") : t);
  for (const seed of seeds)
    for (const m of spec.methods) {
      for (const lr of spec.lr[m] ?? []) {
        if (m === "full")
          out.push({
            key: `full-lr${fmt(lr)}-s${seed}`,
            method: "full",
            rank: null,
            alpha: null,
            targets: "all",
            lr,
            seed,
          });
        else if (m === "hybrid") {
          const h = spec.hybrid;
          if (!h)
            throw new Error(
              `sweep ${spec.name}: method hybrid needs a hybrid section (lora_fraction, full_targets, rank)`,
            );
          out.push({
            key: `hybrid-r${h.rank}-${h.full_targets.join("+")}-lr${fmt(lr)}-s${seed}`,
            method: "hybrid",
            rank: h.rank,
            alpha: 2 * h.rank,
            targets: h.full_targets.join("+"),
            lr,
            seed,
          });
        } else
          for (const r of spec.ranks ?? [16])
            for (const alpha of spec.rslora_alpha ? [spec.rslora_alpha] : (spec.alpha_factors ?? [2]).map((k) => k * r))
              for (const t of targetsList)
                out.push({
                  key: `lora-r${r}-${spec.rslora_alpha ? "rs" : "a"}${alpha}-${tname(t)}-lr${fmt(lr)}-s${seed}`,
                  method: "lora",
                  rank: r,
                  alpha,
                  ...(spec.rslora_alpha ? { rslora: true } : {}),
                  targets: tname(t),
                  lr,
                  seed,
                });
      }
    }
  if (spec.regularizers?.weight_decay !== undefined)
    for (const lr of spec.lr.full_wd ?? spec.lr.full ?? [])
      out.push({
        key: `full_wd${spec.regularizers.weight_decay}-lr${fmt(lr)}-s${seeds[0]}`,
        method: "full_wd",
        rank: null,
        alpha: null,
        targets: "all",
        lr,
        seed: seeds[0]!,
      });
  if (spec.regularizers?.attention_dropout !== undefined)
    for (const lr of spec.lr.full_dropout ?? spec.lr.full ?? [])
      out.push({
        key: `full_dropout${spec.regularizers.attention_dropout}-lr${fmt(lr)}-s${seeds[0]}`,
        method: "full_dropout",
        rank: null,
        alpha: null,
        targets: "all",
        lr,
        seed: seeds[0]!,
      });
  // two cells with one key would share a run (learning rates that print alike, 1e-4 and 1.5e-4)
  const seen = new Set<string>();
  for (const c of out) {
    if (seen.has(c.key))
      throw new Error(
        `sweep ${spec.name}: two cells are both \`${c.key}\` (hint: learning rates that differ below one significant digit name the same run; pick ones that print apart)`,
      );
    seen.add(c.key);
  }
  return out;
}

function targetsValue(t: string): string | string[] {
  return ["all", "attention", "mlp"].includes(t) ? t : t.split("+");
}

/** The run config of one cell (IFT: one run checkpointed every epoch). */
export function cellConfig(spec: SweepSpec, c: Cell, runsDir: string, runId: string): RunConfig {
  const b = spec.base;
  const method: RunConfig["method"] =
    c.method === "lora"
      ? {
          ...b.method,
          kind: "lora",
          rank: c.rank!,
          alpha: c.alpha!,
          rslora: c.rslora ?? false,
          targets: targetsValue(c.targets),
        }
      : { ...b.method, kind: "full" };
  const optim: RunConfig["optim"] = {
    ...b.optim,
    lr: c.lr,
    ...(c.method === "full_wd" ? { weight_decay: spec.regularizers!.weight_decay! } : {}),
  };
  const trainCfg: RunConfig["train"] = {
    ...b.train,
    ...(c.method === "full_dropout" ? { attention_dropout: spec.regularizers!.attention_dropout! } : {}),
  };
  return {
    ...b,
    name: `${spec.name}-${c.key}`,
    run_id: runId,
    out_dir: runsDir,
    seed: c.seed,
    method,
    optim,
    train: trainCfg,
  };
}

export type SweepProgress = (msg: string) => void;

/** A progress display for one run of a sweep (the CLI's bar under its `[k/n]` line). */
export type RunProgress = (label: string) => { onProgress(p: ProgressEvent): void; end(): void };

/** Steps per epoch for IFT: records / (micro_batch · grad_accum), rounded up. */
function stepsPerEpoch(spec: SweepSpec): number {
  const n = spec.records_per_epoch;
  if (!n)
    throw new Error(`sweep ${spec.name}: IFT durations are epochs; give records_per_epoch (the training examples)`);
  const bs = (spec.base.train?.micro_batch ?? 8) * (spec.base.train?.grad_accum ?? 1);
  return Math.ceil(n / bs);
}

/** How a cell trains: in this process (default) or in a sidecar (a worker's device), and a
 *  cancel (a worker that lost its job). */
export interface CellOptions {
  log?: SweepProgress;
  progress?: RunProgress;
  /** Passed to train(): `sidecar` with CUDA_VISIBLE_DEVICES for a worker's GPU, `signal`. */
  train?: Pick<TrainOptions, "sidecar" | "signal">;
  /** The device the cell trains on (default: its config's). */
  device?: string;
  /** The device as the store records it, where the trainer sees another name (a worker's GPU
   *  slot: `cuda:0` behind CUDA_VISIBLE_DEVICES=N is the host's `cuda:N`). */
  recordDevice?: string;
  /** Train nothing: a cell is taken only as the store has it, completed (a queued sweep's
   *  report, drawn where its workers are not). */
  finishedOnly?: boolean;
}

async function trainOrResume(
  store: Store,
  cfg: RunConfig,
  o: CellOptions = {},
): Promise<{ runDir: string; skipped: boolean }> {
  const id = cfg.run_id!;
  const runDir = join(cfg.out_dir!, id);
  const row = await store.getRun(id);
  if (row?.config && Object.keys(row.config).length) {
    // a run id is the sweep's name and the cell's key: an edited spec must not find a run
    // trained (or half-trained) with other settings and take it as its own
    const was = drift(placeless(row.config), placeless(resolveConfig(cfg)));
    if (was)
      throw new DriftError(
        `run ${id} in the store was trained with another ${was} than the sweep's spec now gives (hint: an edited spec is a new sweep: give it another name, or remove the run to train it again)`,
        was,
      );
  }
  // where the store says the run is (a worker may have had its own runs directory)
  if (row?.status === "completed") return { runDir: row.runDir || runDir, skipped: true };
  if (o.finishedOnly)
    throw new Error(
      `run ${id} was not completed by the queue's workers (${row ? `status ${row.status}` : "never started"})`,
    );
  if (o.device) cfg = { ...cfg, train: { ...cfg.train, device: o.device } };
  const resolved = resolveConfig(cfg);
  // the device the cell trains on, as the config resolves it (cpu, cuda:N), or as the host names it
  const device = o.recordDevice ?? resolved.train.device;
  if (!row)
    await store.createRun({
      id,
      name: resolved.name,
      method: resolved.method.kind,
      config: resolved as unknown as Record<string, unknown>,
      device,
      runDir,
      status: "running",
    });
  else await store.updateRun(id, { status: "running", error: null, device });
  // resume an interrupted cell from its last checkpoint; one that never checkpointed starts over
  // in place (the engine does that, and refuses a directory another process is training, so
  // nothing here deletes what another process may own)
  const last = lastCheckpoint(runDir);
  if (last) cfg = { ...cfg, train: { ...cfg.train, resume_from: last } };
  const bar = o.progress?.(cfg.name ?? id);
  const live = liveMetrics(store, id, resolved.train.log_every, o.log);
  try {
    const s = await train(cfg, {
      onProgress: (p) => {
        bar?.onProgress(p);
        live.push(p);
      },
      onEvent: (e) => e.type === "validation" && live.push(e),
      ...o.train,
    });
    if (s.status !== "completed") throw new Error(`run ${id} ${s.status}`);
  } catch (e) {
    await store.updateRun(id, { status: "failed", error: (e as Error).message });
    throw e;
  } finally {
    await live.flush();
    bar?.end();
  }
  await store.ingestRunDir(runDir, device, id);
  return { runDir, skipped: false };
}

/** A run in the store trained with settings the spec no longer gives: the job's own refusal. */
export class DriftError extends ConfigError {
  override name = "DriftError";
}

/** Where two resolved configs of one run differ in what it learns (`optim.lr`), or "": not
 *  where it runs (device, runs directory, data cache) or how it resumes. */
function drift(a: unknown, b: unknown, path = ""): string {
  // a field one side lacks is a default added by a newer engine (or dropped by an older one)
  if (IGNORED_DRIFT.has(path) || a === undefined || b === undefined) return "";
  if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of keys) {
      const d = drift((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], path ? `${path}.${k}` : k);
      if (d) return d;
    }
    return "";
  }
  return JSON.stringify(a) === JSON.stringify(b) ? "" : path || "config";
}
const IGNORED_DRIFT = new Set([
  "out_dir",
  "train.device",
  "train.resume_from",
  "data.cache_dir",
  "name",
  // where the run is watched from, not what it learns
  "track",
  "tracking",
]);

/** A resolved config with its runs directory written as `$RUNS` in every string value that is
 *  it or a path inside it: such a path (a hybrid cell's merged phase-1 model) names the same
 *  file from another runs directory (a worker's own, a moved checkout). */
function placeless(config: unknown): unknown {
  const dir = (config as { out_dir?: unknown } | null)?.out_dir;
  if (typeof dir !== "string" || !dir) return config;
  const root = dir.replace(/\/+$/, "");
  const walk = (v: unknown): unknown =>
    typeof v === "string"
      ? v === root || v === `${root}/`
        ? "$RUNS"
        : v.startsWith(`${root}/`)
          ? `$RUNS/${v.slice(root.length + 1)}`
          : v
      : Array.isArray(v)
        ? v.map(walk)
        : v && typeof v === "object"
          ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]))
          : v;
  return walk(config);
}

/** The metrics a run logs, in the store while it trains (every 2 s), so `loralab sweep status`
 *  and a dashboard see it live: the steps metrics.jsonl has (every log_every, and the last),
 *  which, ingested at the end, upserts the same rows. The store failing never fails the run:
 *  it warns once. */
function liveMetrics(store: Store, runId: string, logEvery: number, log?: SweepProgress) {
  let rows: MetricRow[] = [];
  let last = performance.now();
  let pending: Promise<void> = Promise.resolve();
  let warned = false;
  const flush = () => {
    const batch = rows;
    rows = [];
    last = performance.now();
    pending = pending.then(() =>
      batch.length
        ? store.recordMetrics(runId, batch).catch((e) => {
            if (!warned) log?.(`  warning: live metrics of ${runId} not stored: ${(e as Error).message}`);
            warned = true;
          })
        : undefined,
    );
    return pending;
  };
  return {
    /** A progress or validation event's metrics. */
    push(p: ProgressEvent | ValidationEvent) {
      if (p.type === "progress" && !loggedStep(p, logEvery)) return;
      for (const name of LOGGED_METRICS) {
        const value = (p as unknown as Record<string, unknown>)[name];
        if (typeof value === "number") rows.push({ step: p.step, name, value });
      }
      if (performance.now() - last > 2000) void flush();
    },
    flush,
  };
}

/** What a sweep trained: the checkpoints to evaluate, and the cells that failed (each failing
 *  alone: the others still train). */
export interface SweepOutcome {
  checkpoints: Checkpoint[];
  failed: { cell: string; error: string }[];
}

/** The run id of a cell: deterministic, so a rerun (or another worker) finds it. */
export const cellRunId = (spec: SweepSpec, c: Cell) => `${spec.name}-${c.key}`;

/** Train every cell (skipping finished ones) and list the checkpoints to evaluate. A cell that
 *  fails is recorded (in the store and in `failed`) and the sweep goes on. */
export async function runSweep(
  spec: SweepSpec,
  store: Store,
  runsDir: string,
  log: SweepProgress = () => {},
  progress?: RunProgress,
  finishedOnly = false,
): Promise<SweepOutcome> {
  const failed: SweepOutcome["failed"] = [];
  const checkpoints: Checkpoint[] = [];
  const all = cells(spec);
  if (spec.regime === "cpt" && all.some((c) => c.method === "hybrid"))
    throw new Error(`sweep ${spec.name}: hybrid is supported in IFT sweeps only`);
  for (const [i, c] of all.entries()) {
    log(`[${i + 1}/${all.length}] ${c.key}`);
    try {
      checkpoints.push(...(await sweepCell(spec, c, store, runsDir, { log, progress, finishedOnly })));
    } catch (e) {
      const error = (e as Error).message;
      failed.push({ cell: c.key, error });
      log(`  failed: ${error.split("\n")[0]} (the other cells go on)`);
    }
  }
  return { checkpoints, failed };
}

/** Train one cell of a sweep (resuming it, or skipping it when finished) and list its
 *  checkpoints to evaluate: what runSweep does per cell, and what a queue worker does per job. */
export function sweepCell(
  spec: SweepSpec,
  c: Cell,
  store: Store,
  runsDir: string,
  o: CellOptions = {},
): Promise<Checkpoint[]> {
  return spec.regime === "cpt" ? cptCell(spec, c, store, runsDir, o) : iftCell(spec, c, store, runsDir, o);
}

async function iftCell(spec: SweepSpec, c: Cell, store: Store, runsDir: string, o: CellOptions): Promise<Checkpoint[]> {
  const spe = stepsPerEpoch(spec);
  const maxEpochs = Math.max(...spec.durations);
  const out: Checkpoint[] = [];
  const baseModel = spec.base.model?.path ?? "";
  const runId = cellRunId(spec, c);
  const cfg = cellConfig(spec, c, runsDir, runId);
  cfg.train = { ...cfg.train, steps: maxEpochs * spe, epochs: 0, tokens: 0, checkpoint_every: spe };
  let firstEpoch = 1;
  if (c.method === "hybrid") {
    // phase 1: LoRA for a fraction of the epochs; merge; phase 2: full FT of the chosen modules
    const h = spec.hybrid!;
    const loraEpochs = hybridLoraEpochs(spec);
    const p1: RunConfig = {
      ...cfg,
      run_id: `${runId}-lora`,
      name: `${cfg.name}-lora-phase`,
      method: { ...cfg.method, kind: "lora", rank: h.rank, alpha: 2 * h.rank },
      train: { ...cfg.train, steps: loraEpochs * spe },
    };
    const r1 = await trainOrResume(store, p1, o);
    const merged = join(runsDir, `${runId}-merged`);
    // a randomly initialised base lives in the phase-1 run's base/
    const phase1 = runDirectory(r1.runDir);
    if (!existsSync(join(merged, "model.safetensors"))) await merge(baseModel || phase1.base, phase1.output, merged);
    cfg.model = { ...cfg.model, path: merged };
    cfg.method = { ...cfg.method, kind: "full", targets: h.full_targets };
    cfg.train = { ...cfg.train, steps: (maxEpochs - loraEpochs) * spe };
    firstEpoch = loraEpochs + 1;
  }
  const { runDir, skipped } = await trainOrResume(store, cfg, o);
  if (skipped) o.log?.("  (finished earlier: skipped)");
  const rd = runDirectory(runDir);
  for (const e of spec.durations) {
    if (e < firstEpoch) continue;
    const step = (e - firstEpoch + 1) * spe;
    const ck = rd.checkpoints.find((k) => k.step === step);
    if (!ck)
      throw new Error(
        `${runDir}: no checkpoint at step ${step} for epoch ${e} (hint: is the runs directory the one the cell trained in?)`,
      );
    const lora = c.method === "lora";
    out.push({
      cell: c,
      runId,
      model: lora ? baseModel || rd.base : ck.path,
      adapter: lora ? ck.path : "",
      duration: e,
      tokens: ck.tokens,
    });
  }
  return out;
}

/** Hybrid: the epochs of its LoRA phase. */
const hybridLoraEpochs = (spec: SweepSpec) =>
  Math.max(1, Math.round(spec.hybrid!.lora_fraction * Math.max(...spec.durations)));

/** CPT's steps: each budget's, the longest, and the 0.8·D step each budget branches from. */
function cptPlan(spec: SweepSpec) {
  const tokensPerStep =
    (spec.base.data?.seq_len ?? 512) * (spec.base.train?.micro_batch ?? 8) * (spec.base.train?.grad_accum ?? 1);
  const budgets = [...spec.durations].sort((a, b) => a - b).map((d) => Math.max(5, Math.round(d / tokensPerStep)));
  return {
    tokensPerStep,
    budgets,
    maxSteps: budgets[budgets.length - 1]!,
    cuts: budgets.map((b) => Math.round(0.8 * b)),
  };
}

/** The runs a cell trains, each from step `from` to step `to` (what `loralab sweep status`
 *  counts its ETA in), and the checkpoints it then has evaluated (their durations: epochs or
 *  tokens, as its Checkpoints carry them). */
export function cellPlan(
  spec: SweepSpec,
  c: Cell,
): { runs: { runId: string; from: number; to: number }[]; checkpoints: number; durations: number[] } {
  const runId = cellRunId(spec, c);
  if (spec.regime === "cpt") {
    const { budgets, maxSteps, cuts, tokensPerStep } = cptPlan(spec);
    return {
      runs: [
        { runId, from: 0, to: maxSteps },
        ...budgets.map((b, j) => ({ runId: `${runId}-D${b}`, from: cuts[j]!, to: b })),
      ],
      checkpoints: budgets.length,
      durations: budgets.map((b) => b * tokensPerStep),
    };
  }
  const spe = stepsPerEpoch(spec);
  const maxEpochs = Math.max(...spec.durations);
  if (c.method !== "hybrid")
    return {
      runs: [{ runId, from: 0, to: maxEpochs * spe }],
      checkpoints: spec.durations.length,
      durations: [...spec.durations],
    };
  const lora = hybridLoraEpochs(spec);
  const durations = spec.durations.filter((e) => e > lora);
  return {
    runs: [
      { runId: `${runId}-lora`, from: 0, to: lora * spe },
      { runId, from: 0, to: (maxEpochs - lora) * spe },
    ],
    checkpoints: durations.length,
    durations,
  };
}

/** CPT: per cell one long run to the largest budget (constant after warmup, checkpoints at
 * 0.8·D for every budget D), then one branch per budget resumed from its 0.8·D checkpoint
 * with a linear cooldown to zero over the remaining 20 %. */
async function cptCell(spec: SweepSpec, c: Cell, store: Store, runsDir: string, o: CellOptions): Promise<Checkpoint[]> {
  if (c.method === "hybrid") throw new Error(`sweep ${spec.name}: hybrid is supported in IFT sweeps only`);
  const { tokensPerStep, budgets, maxSteps, cuts } = cptPlan(spec);
  const warm = Math.max(1, Math.round((spec.base.schedule?.warmup_frac ?? 0.05) * maxSteps));
  const out: Checkpoint[] = [];
  const runId = cellRunId(spec, c);
  const cfg = cellConfig(spec, c, runsDir, runId);
  cfg.schedule = { ...cfg.schedule, kind: "inverse_sqrt", cooldown_frac: 0, warmup_steps: warm };
  cfg.train = {
    ...cfg.train,
    steps: maxSteps,
    tokens: 0,
    epochs: 0,
    checkpoint_every: 0,
    checkpoint_at_tokens: cuts.map((s) => s * tokensPerStep),
  };
  const long = await trainOrResume(store, cfg, o);
  for (const [j, b] of budgets.entries()) {
    const from = runDirectory(long.runDir).checkpoints.find((k) => k.step === cuts[j])?.path;
    if (!from)
      throw new Error(
        `${long.runDir}: no checkpoint at step ${cuts[j]} to branch the ${b}-step budget from (hint: rerun the sweep: the long run resumes)`,
      );
    const branch: RunConfig = {
      ...cfg,
      run_id: `${runId}-D${b}`,
      name: `${cfg.name}-D${b}`,
      schedule: { ...cfg.schedule, cooldown_frac: 0.2 },
      train: { ...cfg.train, steps: b, checkpoint_at_tokens: [], resume_from: from },
    };
    const r = await trainOrResume(store, branch, o);
    const lora = c.method === "lora";
    const outDir = runDirectory(r.runDir).output;
    out.push({
      cell: c,
      runId: branch.run_id!,
      model: lora ? spec.base.model?.path || runDirectory(long.runDir).base : outDir,
      adapter: lora ? outDir : "",
      duration: b * tokensPerStep,
      tokens: b * tokensPerStep,
    });
  }
  return out;
}
