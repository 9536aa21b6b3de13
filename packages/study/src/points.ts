// Every checkpoint of a sweep becomes a point: learning (the target task) and forgetting (the
// source tasks), each with its bootstrap standard error, perplexity on held-out source text,
// and the rank of its weight change. Results are cached beside the checkpoint, so a resumed
// study does not evaluate twice.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { evaluate, Model, type EvalResult } from "@loralab/eval";
import type { RunFields } from "@loralab/report";
import { analyze } from "@loralab/spectrum";
import type { Checkpoint } from "./sweep.ts";

export interface Metric {
  value: number;
  stderr: number;
}

export interface MatrixRank {
  module: string;
  layer: number;
  rank: number;
  maxRank: number;
  /** ΔW's largest singular values (at most SIGMA_KEEP). */
  sigma?: number[];
  /** Σσ² over ΔW's whole spectrum. */
  totalSq?: number;
}

/** Singular values of ΔW kept per matrix for the interactive report. */
export const SIGMA_KEEP = 128;

type Analysed = {
  module: string;
  layer: number;
  delta: { rank_at: Record<string, number>; max_rank: number; singular_values?: number[]; frobenius?: number };
};

/** A point's per-matrix ranks from an analysis (ΔW's rank@90 % and its stored spectrum). */
export function matrixRanks(matrices: Analysed[]): MatrixRank[] {
  return matrices.map((x) => ({
    module: x.module,
    layer: x.layer,
    rank: x.delta.rank_at["0.9"] ?? 0,
    maxRank: x.delta.max_rank,
    ...(x.delta.singular_values?.length
      ? { sigma: x.delta.singular_values, totalSq: (x.delta.frobenius ?? 0) ** 2 }
      : {}),
  }));
}

/** A number that may be missing, for tables: "–" when it is null or not finite. */
export function fmtNum(x: number | null | undefined, digits: number): string {
  return x === null || x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(digits);
}

export function meanRank(r: MatrixRank[]): number | null {
  return r.length ? r.reduce((s, x) => s + x.rank, 0) / r.length : null;
}

export interface Point extends RunFields {
  tokens: number;
  learning: Metric;
  forgetting: Metric;
  /** Held-out source perplexity; null where it was not measured (user sweeps, run reports). */
  perplexity: number | null;
  /** Mean over matrices of the smallest k explaining 90 % of ΔW's Σσ² (null for the base). */
  rank90: number | null;
  /** rank@90 % per module and layer, with ΔW's largest singular values and Σσ² (the interactive
   *  report recomputes rank at any threshold from them, in the browser). */
  rank90By: MatrixRank[];
  /** HumanEval learning only: the study's diversity measure (distinct completions per problem). */
  diversity?: { all: number; passing: number; failing: number };
  /** Per-item outcomes, for the paired bootstrap that decides the findings (decide.ts). */
  items?: PointItems;
  /** LoRA with rsLoRA's scale (alpha/√rank). */
  rslora?: boolean;
  /** Marked diverged (findings.ts: divergedPoint): left out of frontiers and ranks, drawn apart. */
  diverged?: boolean;
}

/** What a point scored on each item, in the same item order for every point of a sweep. */
export interface PointItems {
  /** Per target question: 1 correct, 0 not (HumanEval: the problem's pass@1 estimate). */
  learning: number[];
  /** Per forgetting question: 1 when the true choice scored best. Over several tasks, each task's
   *  items are scaled so that their plain mean is the mean of the task means (the forgetting score). */
  retention: number[];
  /** Per held-out document: Σ negative log-likelihood (nats) and its tokens (empty: not measured). */
  nll: number[];
  tokens: number[];
}

/** The per-item outcomes of an evaluation: learning from its learning task, retention over the
 *  forgetting tasks (equal weight per task, as the forgetting score). */
export function evalItems(
  r: EvalResult,
  learning: "gsm8k" | "humaneval",
  forgetting: { task: string; metric: string }[],
) {
  const lt = r.tasks[learning];
  const ls = (lt?.samples ?? []) as { strict_correct?: boolean; pass_at?: Record<string, number> }[];
  const l = ls.map((x) => (learning === "gsm8k" ? Number(Boolean(x.strict_correct)) : (x.pass_at?.["1"] ?? 0)));
  const parts = forgetting.map((f) => {
    const t = r.tasks[f.task as keyof EvalResult["tasks"]];
    return ((t?.samples ?? []) as Record<string, number>[]).map((x) => Number(x[f.metric] ?? 0));
  });
  const total = parts.reduce((a, p) => a + p.length, 0);
  const retention = parts.flatMap((p) => p.map((x) => (x * total) / (p.length * parts.length)));
  return { learning: l, retention };
}

/** The point's run cell: its key without the seed. */
export const cellOf = (key: string) => key.replace(/-s\d+$/, "");

/** Held-out documents cut into pieces the model's positions hold (at spaces, ≤ `chars`), each
 *  scored from an empty context; per document Σ NLL and tokens. */
export function heldOutPieces(docs: string[], chars = 360): { doc: number; text: string }[] {
  const out: { doc: number; text: string }[] = [];
  docs.forEach((d, doc) => {
    const words = d.replace(/\s+/g, " ").trim().split(" ");
    let cur = "";
    for (const w of words) {
      if (cur && cur.length + 1 + w.length > chars) {
        out.push({ doc, text: cur });
        cur = "";
      }
      cur = cur ? `${cur} ${w}` : w;
    }
    if (cur) out.push({ doc, text: cur });
  });
  return out;
}

export interface EvalPlan {
  gsm8k: string;
  cloze: string;
  heldOut: string;
  /** Generated tokens per target problem. */
  maxNewTokens: number;
  limit?: number;
}

const metric = (r: EvalResult, task: "gsm8k" | "hellaswag", name: string): Metric => {
  const m = r.tasks[task]!.metrics[name] as { value: number; stderr: number };
  return { value: m.value, stderr: m.stderr };
};

/** Where a point is scored: in this process (default), or in a single-threaded worker process
 *  (`lane`: one of several scoring side by side, as the laboratory's lanes do). */
export interface MeasureOptions {
  lane?: boolean;
}

/** A lane's worker process: the engine's sidecar on the CPU, one thread. */
export const LANE_ENV = { RAYON_NUM_THREADS: "1" };

async function measure(model: string, adapter: string, plan: EvalPlan, o: MeasureOptions = {}) {
  const m = await Model.load({
    model,
    adapter: adapter || undefined,
    merged: true,
    ...(o.lane ? { env: LANE_ENV } : {}),
  });
  try {
    const r = await evaluate({
      model,
      adapter: adapter || undefined,
      merged: true,
      tasks: ["gsm8k", "hellaswag"],
      data: { gsm8k: plan.gsm8k, hellaswag: plan.cloze },
      gsm8k: { shots: 0, maxNewTokens: plan.maxNewTokens },
      batchSize: 32,
      limit: plan.limit,
      loaded: m,
    });
    // held-out perplexity per document, so that it has an interval (a bootstrap over documents)
    const docs = readFileSync(plan.heldOut, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as { text: string }).text);
    const pieces = heldOutPieces(docs);
    const ll = await m.loglikelihood(
      pieces.map((p) => ({ context: "", continuation: p.text })),
      32,
    );
    const nll = new Array<number>(docs.length).fill(0);
    const tokens = new Array<number>(docs.length).fill(0);
    pieces.forEach((p, i) => {
      nll[p.doc]! -= ll[i]!.logprob;
      tokens[p.doc]! += ll[i]!.tokens;
    });
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    const items: PointItems = {
      ...evalItems(r, "gsm8k", [{ task: "hellaswag", metric: "acc_norm" }]),
      nll,
      tokens,
    };
    return {
      learning: metric(r, "gsm8k", "strict_match"),
      forgetting: metric(r, "hellaswag", "acc_norm"),
      perplexity: Math.exp(sum(nll) / Math.max(1, sum(tokens))),
      items,
    };
  } finally {
    await m.close();
  }
}

export async function basePoint(base: string, plan: EvalPlan, o: MeasureOptions = {}): Promise<Point> {
  return { ...BASE_FIELDS, rank90By: [], ...(await measure(base, "", plan, o)) };
}

export function groupOf(c: Checkpoint["cell"]): string {
  if (c.method === "lora")
    return `LoRA r=${c.rank}${c.rslora ? " rsLoRA" : ""}${c.targets !== "all" ? ` (${c.targets})` : ""}`;
  if (c.method === "hybrid") return `hybrid (LoRA r=${c.rank} → full ${c.targets})`;
  if (c.method === "full_wd") return "full FT + weight decay";
  if (c.method === "full_dropout") return "full FT + attention dropout";
  return "full FT";
}

/** What a point says of its checkpoint (the cell, the duration, the weight change's ranks):
 *  everything but its scores. */
export function checkpointFields(ck: Checkpoint, rank90By: MatrixRank[]) {
  return {
    key: ck.cell.key,
    group: groupOf(ck.cell),
    method: ck.cell.method,
    rank: ck.cell.rank,
    targets: ck.cell.targets,
    lr: ck.cell.lr,
    seed: ck.cell.seed,
    duration: ck.duration,
    tokens: ck.tokens,
    rank90: meanRank(rank90By),
    rank90By,
    ...(ck.cell.rslora ? { rslora: true } : {}),
  };
}

/** What a point says of the base model: everything but its scores. */
export const BASE_FIELDS = {
  key: "base",
  group: "base",
  method: "base",
  rank: null,
  targets: "",
  lr: 0,
  seed: 0,
  duration: 0,
  tokens: 0,
  rank90: null,
  rank90By: [],
} as const;

export async function checkpointPoint(
  ck: Checkpoint,
  base: string,
  plan: EvalPlan,
  o: MeasureOptions = {},
): Promise<Point> {
  const dir = ck.adapter || ck.model;
  const cache = join(dir, "lab-point.json");
  const planKey = JSON.stringify(plan);
  if (existsSync(cache)) {
    const p = JSON.parse(readFileSync(cache, "utf8")) as Point & { plan?: string };
    // else cached before items and spectra were kept, or scored on other sets
    if (p.items && p.rank90By.every((r) => r.sigma) && p.plan === planKey) {
      delete p.plan;
      return p;
    }
  }
  const m = await measure(ck.model, ck.adapter, plan, o);
  const a = await analyze(ck.adapter ? { base, adapter: ck.adapter } : { base, tuned: ck.model }, {
    spectra: false,
    keep: SIGMA_KEEP,
    ...(o.lane ? { threads: 1 } : {}),
  });
  const p: Point = { ...checkpointFields(ck, matrixRanks(a.matrices)), ...m };
  mkdirSync(dir, { recursive: true });
  writeFileSync(cache, JSON.stringify({ ...p, plan: planKey }));
  return p;
}
