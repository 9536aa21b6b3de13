// The laboratory's decision logic held to hand-computed examples: the verdict rule, McNemar's
// exact p, the power formula, the interpolated frontiers and the area between them, the LR
// optimum on log LR, and whole sweeps that must come out HELD, REFUTED and UNDECIDED.
import { expect, test } from "bun:test";
import {
  decide,
  decideEstimate,
  findings,
  frontier,
  frontierGap,
  interpolate,
  logOptimum,
  mcnemar,
  pairedMdd,
  type Point,
} from "@loralab/study";

test("a verdict needs the whole interval on one side of the threshold", () => {
  const above = { kind: "above", threshold: 0 } as const;
  expect(decide([0.01, 0.3], above)).toBe("HELD");
  expect(decide([-0.3, -0.01], above)).toBe("REFUTED");
  expect(decide([-0.01, 0.3], above)).toBe("UNDECIDED");
  expect(decide([0, 0], above)).toBe("UNDECIDED"); // on the threshold is not beyond it
  expect(decide([Number.NaN, 1], above)).toBe("UNDECIDED");
  const band = { kind: "within", lo: Math.sqrt(10), hi: 10 * Math.sqrt(10) } as const;
  expect(decide([5, 20], band)).toBe("HELD");
  expect(decide([1.2, 3.1], band)).toBe("REFUTED");
  expect(decide([40, 90], band)).toBe("REFUTED");
  expect(decide([2, 5], band)).toBe("UNDECIDED");
});

test("McNemar's exact p and the paired power formula, by hand", () => {
  // 8 questions only the first model solved, 2 only the second: p = 2·(C(10,0)+C(10,1)+C(10,2))/2^10
  const a = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0];
  const b = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0];
  const m = mcnemar(a, b);
  expect([m.b, m.c]).toEqual([8, 2]);
  expect(m.p).toBeCloseTo(112 / 1024, 12);
  expect(mcnemar([1, 0], [1, 0]).p).toBe(1);
  // (1.96 + 0.8416)·√(0.5/400)
  expect(pairedMdd(400, 0.5)).toBeCloseTo(2.8016 * Math.sqrt(0.00125), 10);
});

test("frontiers, their interpolation and the mean gap between them, by hand", () => {
  expect(
    frontier([
      { x: 0, y: 0.8 },
      { x: 0.2, y: 0.7 },
      { x: 0.6, y: 0.5 },
      { x: 0.2, y: 0.6 },
    ]),
  ).toEqual([
    { x: 0, y: 0.8 },
    { x: 0.2, y: 0.7 },
    { x: 0.6, y: 0.5 },
  ]);
  const lora = frontier([
    { x: 0, y: 0.8 },
    { x: 0.1, y: 0.8 },
    { x: 0.4, y: 0.75 },
    { x: 0.1, y: 0.78 },
  ]);
  expect(lora).toEqual([
    { x: 0.1, y: 0.8 },
    { x: 0.4, y: 0.75 },
  ]);
  expect(interpolate(lora, 0)).toBe(0.8); // below its first point: that point's retention
  expect(interpolate(lora, 0.25)).toBeCloseTo(0.775, 12);
  expect(interpolate(lora, 0.5)).toBeNaN(); // past its last: never reached
  const full = frontier([
    { x: 0, y: 0.8 },
    { x: 0.2, y: 0.7 },
    { x: 0.6, y: 0.5 },
  ]);
  // over [0, 0.4]: areas 0.0025 + 0.0066667 + 0.0233333 = 0.0325; mean 0.08125
  const g = frontierGap(lora, full, 0, 0.02);
  expect(g.area).toBeCloseTo(0.0325, 10);
  expect(g.mean).toBeCloseTo(0.08125, 10);
  expect(g.range).toEqual([0, 0.4]);
  expect(frontierGap(lora, full, 0.39, 0.02).mean).toBeNaN(); // under 2 points of shared learning
});

test("the LR optimum: a parabola's vertex on log LR, and a grid that does not bracket it", () => {
  // log10 x = -4, -3, -2 with y 10, 30, 20: vertex at -3 + (10 - 20)/(2·(10 - 60 + 20)) = -2.8333
  const o = logOptimum([
    { x: 1e-4, y: 10 },
    { x: 1e-3, y: 30 },
    { x: 1e-2, y: 20 },
  ]);
  expect(o.bracketed).toBe(true);
  expect(Math.log10(o.x)).toBeCloseTo(-3 + 1 / 6, 10);
  expect(
    logOptimum([
      { x: 1e-4, y: 10 },
      { x: 1e-3, y: 20 },
      { x: 1e-2, y: 30 },
    ]),
  ).toEqual({ x: 1e-2, bracketed: false });
});

// ------------------------------------------------------------------ whole sweeps

const N = 1000;
/** k of n items correct: the first k (nested, so paired comparisons are tight). */
const first = (k: number, n = N) => Array.from({ length: n }, (_, i) => Number(i < k));
/** k of n correct, from item `from` on. */
const from = (start: number, k: number, n = N) =>
  Array.from({ length: n }, (_, i) => Number(i >= start && i < start + k));

function point(
  method: "base" | "full" | "lora",
  lr: number,
  learning: number[],
  retention: number[],
  ranks: number[],
  seed = 0,
  module = "q_proj",
): Point {
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return {
    key: method === "base" ? "base" : `${method}-lr${lr}-s${seed}`,
    group: method === "full" ? "full FT" : method === "lora" ? "LoRA r=16" : "base",
    method,
    rank: method === "lora" ? 16 : null,
    targets: method === "lora" ? "all" : "",
    lr,
    seed,
    duration: method === "base" ? 0 : 1,
    tokens: 0,
    learning: { value: mean(learning), stderr: 0 },
    forgetting: { value: mean(retention), stderr: 0 },
    perplexity: 40,
    rank90: ranks.length ? mean(ranks) : null,
    rank90By: ranks.map((r, i) => ({ module, layer: i, rank: r, maxRank: 128 })),
    items: { learning, retention, nll: Array(10).fill(400), tokens: Array(10).fill(100) },
  };
}

const verdicts = (base: Point, ps: Point[]) =>
  Object.fromEntries(findings(base, ps, { replicates: 400 }).map((f) => [f.id, f.verdict]));
const base = point("base", 0, first(0), first(800), []);

test("a sweep that bears the study out: every finding HELD", () => {
  const ps = [
    // full FT: optimum 1e-3 (0.2, 0.6, 0.2 on log LR: the vertex at 1e-3), ΔW rank 20
    point("full", 1e-4, first(200), first(700), [20, 20, 20, 20]),
    point("full", 1e-3, first(600), first(500), [20, 20, 20, 20]),
    point("full", 1e-2, first(200), first(600), [20, 20, 20, 20]),
    // LoRA: optimum 1e-2 (10×), learns 0.4 against 0.6, retains more (mean gap 8.1 points), rank 4
    point("lora", 1e-3, first(100), first(800), [4, 4, 4, 4]),
    point("lora", 1e-2, first(400), first(750), [4, 4, 4, 4]),
    point("lora", 1e-1, first(100), first(780), [4, 4, 4, 4]),
  ];
  const fs = findings(base, ps, { replicates: 400 });
  const by = Object.fromEntries(fs.map((f) => [f.id, f]));
  expect(by.learns_less!.estimate!.value).toBeCloseTo(0.2, 12);
  expect(by.forgets_less!.estimate!.value).toBeCloseTo(0.08125, 10);
  expect(by.rank!.estimate!.value).toBeCloseTo(5, 12);
  expect(by.lr_ratio!.estimate!.value).toBeCloseTo(10, 8);
  expect(verdicts(base, ps)).toMatchObject({
    learns_less: "HELD",
    forgets_less: "HELD",
    rank: "HELD",
    lr_ratio: "HELD",
  });
});

test("a sweep that contradicts it: every finding REFUTED", () => {
  const ps = [
    point("full", 1e-4, first(100), first(800), [10, 10, 10, 10]),
    point("full", 1e-3, first(400), first(750), [10, 10, 10, 10]),
    point("full", 1e-2, first(100), first(780), [10, 10, 10, 10]),
    point("lora", 1e-4, first(200), first(700), [10, 10, 10, 10]),
    point("lora", 1e-3, first(600), first(500), [10, 10, 10, 10]),
    point("lora", 1e-2, first(200), first(600), [10, 10, 10, 10]),
  ];
  const fs = findings(base, ps, { replicates: 400 });
  const by = Object.fromEntries(fs.map((f) => [f.id, f]));
  expect(by.learns_less!.estimate!.value).toBeCloseTo(-0.2, 12);
  expect(by.forgets_less!.estimate!.value).toBeCloseTo(-0.08125, 10);
  expect(by.lr_ratio!.estimate!.value).toBeCloseTo(1, 8);
  expect(verdicts(base, ps)).toMatchObject({
    learns_less: "REFUTED",
    forgets_less: "REFUTED",
    rank: "REFUTED",
    lr_ratio: "REFUTED",
  });
});

test("a sweep too noisy or too coarse to tell: UNDECIDED, never a verdict", () => {
  const ps = [
    // both learn 50 %, on disjoint halves of the questions: the paired difference is 0 ± ~4 points
    point("full", 1e-3, from(0, 500), first(700), [1, 5]),
    point("lora", 3e-3, from(500, 500), first(700), [1, 1]),
  ];
  const fs = findings(base, ps, { replicates: 400 });
  const by = Object.fromEntries(fs.map((f) => [f.id, f]));
  expect(by.learns_less!.estimate!.value).toBe(0);
  expect(by.learns_less!.estimate!.lo).toBeLessThan(-0.02);
  expect(by.learns_less!.estimate!.hi).toBeGreaterThan(0.02);
  // ΔW rank 3× on the point estimate, 1× to 5× as the two matrices are resampled: straddles 3×
  expect(by.rank!.estimate!.value).toBeCloseTo(3, 12);
  expect(by.lr_ratio!.evidence).toContain("does not bracket");
  expect(verdicts(base, ps)).toMatchObject({ learns_less: "UNDECIDED", rank: "UNDECIDED", lr_ratio: "UNDECIDED" });
  // and points without per-item outcomes cannot be decided at all
  const bare = ps.map(({ items: _, ...p }) => p);
  expect(findings({ ...base, items: undefined }, bare).map((f) => f.verdict)).toEqual(["UNDECIDED"]);
});

test("between-seed variance widens the interval; undefined resamples, other matrices, repeated LRs", () => {
  // the same means (full FT 50 %, LoRA 30 %), once with identical seeds and once with seeds 40/50/60 %
  const sweep = (ks: number[]) => [
    ...ks.map((k, s) => point("full", 1e-3, first(k), first(700), [8, 8], s)),
    point("lora", 3e-3, first(300), first(750), [2, 2]),
  ];
  const width = (ks: number[]) => {
    const e = findings(base, sweep(ks), { replicates: 400 }).find((f) => f.id === "learns_less")!.estimate!;
    expect(e.value).toBeCloseTo(0.2, 12);
    return e.hi - e.lo;
  };
  // identical seeds: question resampling only, the 200 questions between: ±1.96·√(0.2·0.8/1000)
  const same = width([500, 500, 500]);
  expect(same).toBeGreaterThan(0.03);
  expect(same).toBeLessThan(0.07);
  // seeds 40/50/60 %: a resampled seed mean can be 40 % (all three the first, 1/27 > 2.5 %)
  expect(width([400, 500, 600])).toBeGreaterThan(0.15);
  // cells that adapt different matrices (attention-only LoRA against MLP-only) are ranked on their own
  const ps = [
    point("full", 1e-3, first(500), first(700), [8, 8]),
    point("lora", 3e-3, first(300), first(750), [2, 2], 0, "up_proj"),
  ];
  expect(findings(base, ps, { replicates: 50 }).find((f) => f.id === "rank")!.estimate!.value).toBeCloseTo(4, 12);
  // a statistic undefined in over 2.5 % of the resamples decides nothing
  const e = { value: 1, lo: 0.5, hi: 1.5, defined: 974, replicates: 1000 };
  expect(decideEstimate(e, { kind: "above", threshold: 0 })).toBe("UNDECIDED");
  expect(decideEstimate({ ...e, defined: 975 }, { kind: "above", threshold: 0 })).toBe("HELD");
  // two cells at one LR are averaged before the parabola: 20 and 40 at 1e-3 count as 30
  const o = logOptimum([
    { x: 1e-4, y: 10 },
    { x: 1e-3, y: 20 },
    { x: 1e-3, y: 40 },
    { x: 1e-2, y: 20 },
  ]);
  expect(Math.log10(o.x)).toBeCloseTo(-3 + 1 / 6, 10);
});
