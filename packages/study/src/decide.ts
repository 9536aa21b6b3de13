// How the laboratory decides a finding. Each finding is a statistic of the sweep's points, a
// 95 % interval for it, and a decision threshold the interval must not straddle: HELD when the
// whole interval lies on the claim's side, REFUTED when it lies wholly on the other, UNDECIDED
// otherwise. The interval comes from one bootstrap that resamples everything that varies, the
// same draw for every point so that every comparison is paired:
//   - the target-task questions, the cloze questions and the held-out documents (one multinomial
//     reweighting of each per replicate, shared by all checkpoints: McNemar's pairing, carried
//     through any statistic);
//   - the seeds of each cell (drawn with replacement within the cell), so between-seed variance
//     enters every interval;
//   - for ΔW's rank, the weight matrices (the same draw for every run).
// Statistics re-select what they select (the best cell, the frontier, the LR optimum) inside
// each replicate, so the interval includes the selection's own noise.

import { frontier, frontierGap, interpolate } from "@loralab/engine";

export { frontier, frontierGap, interpolate };

export type Verdict = "HELD" | "REFUTED" | "UNDECIDED";

/** A claim about a statistic: above a threshold, or within a band. */
export type Rule = { kind: "above"; threshold: number } | { kind: "within"; lo: number; hi: number };

/** HELD / REFUTED / UNDECIDED from a 95 % interval and the claim's rule. */
export function decide(ci: readonly [number, number], rule: Rule): Verdict {
  const [lo, hi] = ci;
  if (!Number.isFinite(lo) || !Number.isFinite(hi) || lo > hi) return "UNDECIDED";
  if (rule.kind === "above") return lo > rule.threshold ? "HELD" : hi < rule.threshold ? "REFUTED" : "UNDECIDED";
  if (lo >= rule.lo && hi <= rule.hi) return "HELD";
  return hi < rule.lo || lo > rule.hi ? "REFUTED" : "UNDECIDED";
}

/** A bootstrap estimate's verdict: its interval against the rule, and UNDECIDED when the
 *  statistic was undefined (no shared learning range, an optimum off the grid) in more than
 *  2.5 % of the replicates: those would fall outside any 95 % interval drawn from the rest. */
export function decideEstimate(e: Estimate, rule: Rule): Verdict {
  return e.defined < 0.975 * e.replicates ? "UNDECIDED" : decide([e.lo, e.hi], rule);
}

/** Exact two-sided McNemar test on paired 0/1 outcomes (same questions, two models): the p-value
 *  of b discordant pairs one way and c the other under "equally likely". */
export function mcnemar(a: ArrayLike<number>, b: ArrayLike<number>): { b: number; c: number; p: number } {
  let nb = 0;
  let nc = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i]! > 0.5 && !(b[i]! > 0.5)) nb++;
    else if (!(a[i]! > 0.5) && b[i]! > 0.5) nc++;
  }
  const n = nb + nc;
  const k = Math.min(nb, nc);
  // P(X ≤ k) for X ~ Binomial(n, 1/2), in logs so large n does not underflow
  let logC = 0;
  let tail = 0;
  for (let i = 0; i <= k; i++) {
    if (i > 0) logC += Math.log(n - i + 1) - Math.log(i);
    tail += Math.exp(logC - n * Math.LN2);
  }
  return { b: nb, c: nc, p: n === 0 ? 1 : Math.min(1, 2 * tail) };
}

/** Smallest paired difference of two accuracies on n shared questions detectable at two-sided
 *  95 % with 80 % power, when a fraction `discordant` of the questions are answered differently
 *  (the normal approximation to McNemar: (z.975 + z.8)·√(discordant/n)). */
export function pairedMdd(n: number, discordant: number): number {
  return (1.96 + 0.8416) * Math.sqrt(discordant / Math.max(1, n));
}

// ------------------------------------------------------------------ the observations

/** What names a cell at one duration. */
interface CellId {
  /** The cell (method, rank, targets, LR: everything but the seed). */
  cell: string;
  group: string;
  method: string;
  rank: number | null;
  targets: string;
  rslora: boolean;
  lr: number;
  duration: number;
}

/** One checkpoint of one run, with its per-item outcomes. */
export interface Observation extends CellId {
  seed: number;
  /** Per target question, 1 when answered correctly. */
  learning: ArrayLike<number>;
  /** Per cloze question, 1 when the true ending scored best (acc_norm). */
  retention: ArrayLike<number>;
  /** Per held-out document: Σ negative log-likelihood (nats) and its token count. */
  nll: ArrayLike<number>;
  tokens: ArrayLike<number>;
  /** ΔW's rank@90 % per matrix, in one matrix order (by module and layer) for every observation;
   *  NaN for a matrix this run did not change (attention-only LoRA's MLP); empty: none. */
  ranks: ArrayLike<number>;
  diverged: boolean;
}

/** A cell at one duration, averaged over its (resampled) seeds. */
export interface CellPoint extends CellId {
  seeds: number;
  /** Over every seed, diverged or not (a diverged run learned what it learned). */
  learningAll: number;
  /** Over the seeds that did not diverge (NaN when all did). */
  learning: number;
  retention: number;
  /** Mean over seeds of log held-out perplexity. */
  logPpl: number;
  rank90: number;
  /** Every seed diverged. */
  diverged: boolean;
}

/** One replicate's reweighting: weights summing to 1 over each item set, and each cell's seed draw. */
interface Draw {
  wL: Float64Array;
  wR: Float64Array;
  wD: Float64Array;
  wM: Float64Array;
  seeds: Map<string, number[]>;
}

/** A small fast seeded generator (mulberry32): the bootstrap needs speed and repeatability. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function multinomial(n: number, r: () => number): Float64Array {
  const w = new Float64Array(n);
  for (let i = 0; i < n; i++) w[Math.floor(r() * n)]! += 1 / n;
  return w;
}

const uniform = (n: number) => new Float64Array(n).fill(1 / Math.max(1, n));

function dot(w: Float64Array, x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < w.length; i++) s += w[i]! * x[i]!;
  return s;
}

/** Σ w·x over the entries x has (NaN: a matrix this run did not change), renormalized. */
function dotDefined(w: Float64Array, x: ArrayLike<number>): number {
  let s = 0;
  let t = 0;
  for (let i = 0; i < w.length; i++)
    if (Number.isFinite(x[i]!)) {
      s += w[i]! * x[i]!;
      t += w[i]!;
    }
  return t > 0 ? s / t : NaN;
}

/** Cell points under one draw (`null`: the data as measured). */
function cellPoints(obs: Observation[], draw: Draw | null, sizes: Sizes): CellPoint[] {
  const wL = draw?.wL ?? uniform(sizes.learning);
  const wR = draw?.wR ?? uniform(sizes.retention);
  const wD = draw?.wD ?? uniform(sizes.docs);
  const wM = draw?.wM ?? uniform(sizes.matrices);
  const byCell = new Map<string, Observation[]>();
  for (const o of obs) {
    const k = `${o.cell}\u0000${o.duration}`;
    byCell.set(k, [...(byCell.get(k) ?? []), o]);
  }
  const out: CellPoint[] = [];
  for (const group of byCell.values()) {
    const first = group[0]!;
    const bySeed = [...group].sort((a, b) => a.seed - b.seed);
    const pick = draw?.seeds.get(first.cell);
    const chosen = pick ? pick.map((i) => bySeed[i % bySeed.length]!) : bySeed;
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
    const ok = chosen.filter((o) => !o.diverged);
    out.push({
      cell: first.cell,
      group: first.group,
      method: first.method,
      rank: first.rank,
      targets: first.targets,
      rslora: first.rslora,
      lr: first.lr,
      duration: first.duration,
      seeds: chosen.length,
      learningAll: mean(chosen.map((o) => dot(wL, o.learning))),
      learning: mean(ok.map((o) => dot(wL, o.learning))),
      retention: mean(ok.map((o) => dot(wR, o.retention))),
      logPpl: mean(ok.map((o) => Math.log(dot(wD, o.nll) / Math.max(1e-12, dot(wD, o.tokens))))),
      rank90: mean(ok.filter((o) => o.ranks.length).map((o) => dotDefined(wM, o.ranks))),
      diverged: ok.length === 0,
    });
  }
  return out;
}

interface Sizes {
  learning: number;
  retention: number;
  docs: number;
  matrices: number;
}

/** A statistic's estimate (on the data as measured) and its 95 % percentile interval. */
export interface Estimate {
  value: number;
  lo: number;
  hi: number;
  /** Replicates where the statistic was defined (the rest are left out of the interval). */
  defined: number;
  replicates: number;
}

export type Statistic = (points: CellPoint[], base: BasePoint) => number;

/** The base model's outcomes under the same draw. */
export interface BasePoint {
  learning: number;
  retention: number;
  logPpl: number;
}

export interface BaseObservation {
  learning: ArrayLike<number>;
  retention: ArrayLike<number>;
  nll: ArrayLike<number>;
  tokens: ArrayLike<number>;
}

function percentile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  const i = q * (sorted.length - 1);
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (i - lo);
}

/** Estimates and 95 % intervals of several statistics from one paired, seed-aware bootstrap. */
export function bootstrap(
  base: BaseObservation,
  obs: Observation[],
  stats: Record<string, Statistic>,
  o: { replicates?: number; seed?: number } = {},
): Record<string, Estimate> {
  const sizes: Sizes = {
    learning: base.learning.length,
    retention: base.retention.length,
    docs: base.nll.length,
    matrices: Math.max(0, ...obs.map((x) => x.ranks.length)),
  };
  for (const x of obs)
    if (
      x.learning.length !== sizes.learning ||
      x.retention.length !== sizes.retention ||
      x.nll.length !== sizes.docs ||
      (x.ranks.length && x.ranks.length !== sizes.matrices)
    )
      throw new Error(`${x.cell} (seed ${x.seed}, duration ${x.duration}): scored on other items than the base`);
  const basePoint = (d: Draw | null): BasePoint => {
    const wD = d?.wD ?? uniform(sizes.docs);
    return {
      learning: dot(d?.wL ?? uniform(sizes.learning), base.learning),
      retention: dot(d?.wR ?? uniform(sizes.retention), base.retention),
      logPpl: Math.log(dot(wD, base.nll) / Math.max(1e-12, dot(wD, base.tokens))),
    };
  };
  const names = Object.keys(stats);
  const pts0 = cellPoints(obs, null, sizes);
  const b0 = basePoint(null);
  const reps: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  const B = o.replicates ?? 1000;
  const r = rng(o.seed ?? 20240515);
  const seedCounts = new Map<string, number>();
  for (const x of obs) seedCounts.set(x.cell, Math.max(seedCounts.get(x.cell) ?? 0, countSeeds(obs, x.cell)));
  for (let b = 0; b < B; b++) {
    const seeds = new Map<string, number[]>();
    for (const [cell, n] of seedCounts)
      seeds.set(
        cell,
        Array.from({ length: n }, () => Math.floor(r() * n)),
      );
    const d: Draw = {
      wL: multinomial(sizes.learning, r),
      wR: multinomial(sizes.retention, r),
      wD: multinomial(sizes.docs, r),
      wM: multinomial(sizes.matrices, r),
      seeds,
    };
    const pts = cellPoints(obs, d, sizes);
    const bp = basePoint(d);
    for (const n of names) {
      const v = stats[n]!(pts, bp);
      if (Number.isFinite(v)) reps[n]!.push(v);
    }
  }
  const out: Record<string, Estimate> = {};
  for (const n of names) {
    const s = reps[n]!.sort((a, b) => a - b);
    out[n] = {
      value: stats[n]!(pts0, b0),
      lo: percentile(s, 0.025),
      hi: percentile(s, 0.975),
      defined: s.length,
      replicates: B,
    };
  }
  return out;
}

function countSeeds(obs: Observation[], cell: string): number {
  return new Set(obs.filter((o) => o.cell === cell).map((o) => o.seed)).size;
}

/** The cell points as measured (every seed, no resampling). */
export function measuredPoints(base: BaseObservation, obs: Observation[]): CellPoint[] {
  return cellPoints(obs, null, {
    learning: base.learning.length,
    retention: base.retention.length,
    docs: base.nll.length,
    matrices: Math.max(0, ...obs.map((x) => x.ranks.length)),
  });
}

// ------------------------------------------------------------------ the statistics

/** The optimum of y over log10(x) on a grid: the vertex of the parabola through the best grid
 *  point and its two neighbours (kept between those neighbours). `bracketed` is false when the
 *  best point is at an end of the grid: then the optimum is that end, and only a bound. */
export function logOptimum(ps: { x: number; y: number }[]): { x: number; bracketed: boolean } {
  // points at one LR (several alphas, targets) are averaged: one curve value per grid point
  const byX = new Map<number, number[]>();
  for (const p of ps) if (p.x > 0 && Number.isFinite(p.y)) byX.set(p.x, [...(byX.get(p.x) ?? []), p.y]);
  const g = [...byX].map(([x, ys]) => ({ x, y: ys.reduce((a, b) => a + b, 0) / ys.length })).sort((a, b) => a.x - b.x);
  if (!g.length) return { x: NaN, bracketed: false };
  let i = 0;
  for (let j = 1; j < g.length; j++) if (g[j]!.y > g[i]!.y) i = j;
  if (i === 0 || i === g.length - 1) return { x: g[i]!.x, bracketed: false };
  const [x0, x1, x2] = [Math.log10(g[i - 1]!.x), Math.log10(g[i]!.x), Math.log10(g[i + 1]!.x)];
  const [y0, y1, y2] = [g[i - 1]!.y, g[i]!.y, g[i + 1]!.y];
  // vertex of the parabola through three points (unequal spacing allowed)
  const d = (x0 - x1) * (x0 - x2) * (x1 - x2);
  const A = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d;
  const B = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / d;
  const v = A < 0 ? -B / (2 * A) : x1; // a flat or upturned top: the best grid point
  return { x: 10 ** Math.min(x2, Math.max(x0, v)), bracketed: true };
}
