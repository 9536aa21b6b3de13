// Every checkpoint of a sweep becomes a point: learning (the target task) and forgetting (the
// source tasks), each with its bootstrap standard error, perplexity on held-out source text,
// and the rank of its weight change. Results are cached beside the checkpoint, so a resumed
// study does not evaluate twice.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { evaluate, type EvalResult } from "@loralab/eval";
import type { RunFields } from "@loralab/report";
import { analyze } from "@loralab/spectrum";
import type { Checkpoint } from "./sweep.ts";
import { perplexity } from "./sweep.ts";

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
}

export interface EvalPlan {
  gsm8k: string;
  cloze: string;
  heldOut: string;
  cacheDir: string;
  /** Generated tokens per target problem. */
  maxNewTokens: number;
  limit?: number;
}

const metric = (r: EvalResult, task: "gsm8k" | "hellaswag", name: string): Metric => {
  const m = r.tasks[task]!.metrics[name] as { value: number; stderr: number };
  return { value: m.value, stderr: m.stderr };
};

async function measure(model: string, adapter: string, plan: EvalPlan) {
  const r = await evaluate({
    model,
    adapter: adapter || undefined,
    merged: true,
    tasks: ["gsm8k", "hellaswag"],
    data: { gsm8k: plan.gsm8k, hellaswag: plan.cloze },
    gsm8k: { shots: 0, maxNewTokens: plan.maxNewTokens },
    batchSize: 16,
    limit: plan.limit,
  });
  return {
    learning: metric(r, "gsm8k", "strict_match"),
    forgetting: metric(r, "hellaswag", "acc_norm"),
    perplexity: await perplexity(model, adapter, plan.heldOut, plan.cacheDir),
  };
}

export async function basePoint(base: string, plan: EvalPlan): Promise<Point> {
  const m = await measure(base, "", plan);
  return {
    key: "base",
    group: "base",
    method: "base",
    rank: null,
    targets: "",
    lr: 0,
    seed: 0,
    duration: 0,
    tokens: 0,
    ...m,
    rank90: null,
    rank90By: [],
  };
}

export function groupOf(c: Checkpoint["cell"]): string {
  if (c.method === "lora") return `LoRA r=${c.rank}${c.targets !== "all" ? ` (${c.targets})` : ""}`;
  if (c.method === "hybrid") return `hybrid (LoRA r=${c.rank} → full ${c.targets})`;
  if (c.method === "full_wd") return "full FT + weight decay";
  if (c.method === "full_dropout") return "full FT + attention dropout";
  return "full FT";
}

export async function checkpointPoint(ck: Checkpoint, base: string, plan: EvalPlan): Promise<Point> {
  const dir = ck.adapter || ck.model;
  const cache = join(dir, "lab-point.json");
  if (existsSync(cache)) {
    const p = JSON.parse(readFileSync(cache, "utf8")) as Point;
    if (p.rank90By.every((r) => r.sigma)) return p; // else cached before spectra were kept
  }
  const m = await measure(ck.model, ck.adapter, plan);
  const a = await analyze(ck.adapter ? { base, adapter: ck.adapter } : { base, tuned: ck.model }, {
    spectra: false,
    keep: SIGMA_KEEP,
  });
  const rank90By = matrixRanks(a.matrices);
  const p: Point = {
    key: ck.cell.key,
    group: groupOf(ck.cell),
    method: ck.cell.method,
    rank: ck.cell.rank,
    targets: ck.cell.targets,
    lr: ck.cell.lr,
    seed: ck.cell.seed,
    duration: ck.duration,
    tokens: ck.tokens,
    ...m,
    rank90: meanRank(rank90By),
    rank90By,
  };
  mkdirSync(dir, { recursive: true });
  writeFileSync(cache, JSON.stringify(p));
  return p;
}
