// The study's four findings, decided on a sweep's points (decide.ts says how):
//   1. LoRA learns less than full fine-tuning: best full FT − best LoRA target accuracy at the
//      longest duration, above 0.
//   2. LoRA forgets less at matched learning: the mean gap between the two methods' interpolated
//      learning–retention frontiers over the learning both reach, above +1 point of source
//      retention (the smallest effect the laboratory counts; below it, "forgets less" does not
//      hold at this scale). Held-out perplexity gives the same comparison as a supporting measure.
//   3. Full FT's ΔW has a much higher rank: the ratio of mean rank@90 %, above 3×.
//   4. LoRA's best LR is about 10× full FT's: the ratio of the two interpolated optima, within a
//      factor of 2 of 10× (5× to 20×), and only when the grid brackets both optima.
import {
  bootstrap,
  type CellPoint,
  decideEstimate,
  type Estimate,
  frontier,
  frontierGap,
  logOptimum,
  mcnemar,
  measuredPoints,
  type Observation,
  type Rule,
  type Verdict,
} from "./decide.ts";
import { cellOf, fmtNum, type Point } from "./points.ts";

export interface Finding {
  id: "learns_less" | "forgets_less" | "forgets_less_ppl" | "rank" | "lr_ratio";
  claim: string;
  verdict: Verdict;
  /** One of the study's four findings (the laboratory's gate counts these); else supporting. */
  primary: boolean;
  /** true HELD, false REFUTED, null UNDECIDED. */
  held: boolean | null;
  evidence: string;
  estimate?: Estimate;
  rule?: Rule;
}

/** The thresholds the findings are decided against (see the header). */
export const RULES = {
  learns_less: { kind: "above", threshold: 0 },
  forgets_less: { kind: "above", threshold: 0.01 },
  forgets_less_ppl: { kind: "above", threshold: 1.1 },
  rank: { kind: "above", threshold: 3 },
  lr_ratio: { kind: "within", lo: 5, hi: 20 },
} as const satisfies Record<Finding["id"], Rule>;

/** A run diverged when its held-out perplexity is above the vocabulary's size (worse than a
 *  uniform guess over every token) or not finite. */
export function divergedPoint(p: Point, vocab: number): boolean {
  return p.perplexity !== null && !(Number.isFinite(p.perplexity) && p.perplexity <= vocab);
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
const pts = (x: number) => `${(100 * x).toFixed(1)}`;
const range = (e: Estimate, f: (x: number) => string) => `${f(e.value)} [95 % ${f(e.lo)}, ${f(e.hi)}]`;

/** Matrices in one order for every point (by module and layer): cells may adapt different ones. */
function matrixOrder(points: Point[]): string[] {
  return [...new Set(points.flatMap((p) => p.rank90By.map((r) => `${r.module}.${r.layer}`)))];
}

function toObservation(p: Point, matrices: string[]): Observation {
  const it = p.items!;
  const byName = new Map(p.rank90By.map((r) => [`${r.module}.${r.layer}`, r.rank]));
  return {
    cell: cellOf(p.key),
    group: p.group,
    method: p.method,
    rank: p.rank,
    targets: p.targets,
    rslora: p.rslora ?? false,
    lr: p.lr,
    seed: p.seed,
    duration: p.duration,
    learning: it.learning,
    retention: it.retention,
    nll: it.nll,
    tokens: it.tokens,
    ranks: p.rank90By.length ? matrices.map((m) => byName.get(m) ?? NaN) : [],
    diverged: p.diverged ?? false,
  };
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const final = (ps: CellPoint[]) => {
  const d = Math.max(...ps.map((p) => p.duration));
  return ps.filter((p) => p.duration === d);
};
const best = (ps: CellPoint[]) => [...ps].sort((a, b) => b.learningAll - a.learningAll)[0];

/** The LoRA grid the LR finding reads: plain LoRA (not rsLoRA) on every module at the rank with
 *  the most learning rates. */
function loraGrid(ps: CellPoint[]): CellPoint[] {
  const lora = ps.filter((p) => p.method === "lora" && p.targets === "all" && !p.rslora);
  const ranks = [...new Set(lora.map((p) => p.rank))];
  const nLr = (r: number | null) => new Set(lora.filter((p) => p.rank === r).map((p) => p.lr)).size;
  const r = ranks.sort((a, b) => nLr(b) - nLr(a) || (a ?? 0) - (b ?? 0))[0];
  return lora.filter((p) => p.rank === r);
}

function frontierOf(ps: CellPoint[], method: string, y: (p: CellPoint) => number, base: { x: number; y: number }) {
  return frontier([
    base,
    ...ps.filter((p) => p.method === method && !p.diverged).map((p) => ({ x: p.learning, y: y(p) })),
  ]);
}

/** LoRA's retention frontier against full FT's, over the learning both reach. */
function retentionGap(ps: CellPoint[], b: { learning: number; retention: number }) {
  return frontierGap(
    frontierOf(ps, "lora", (p) => p.retention, { x: b.learning, y: b.retention }),
    frontierOf(ps, "full", (p) => p.retention, { x: b.learning, y: b.retention }),
    b.learning,
    MIN_RANGE,
  );
}

/** Matched learning: both frontiers must share at least this much learning (2 points). */
const MIN_RANGE = 0.02;

export const STATISTICS = {
  learns_less: (ps: CellPoint[]) => {
    const f = final(ps);
    return (
      Math.max(...f.filter((p) => p.method === "full").map((p) => p.learningAll)) -
      Math.max(...f.filter((p) => p.method === "lora").map((p) => p.learningAll))
    );
  },
  forgets_less: (ps: CellPoint[], b: { learning: number; retention: number }) => retentionGap(ps, b).mean,
  forgets_less_area: (ps: CellPoint[], b: { learning: number; retention: number }) => retentionGap(ps, b).area,
  forgets_less_ppl: (ps: CellPoint[], b: { learning: number; logPpl: number }) =>
    Math.exp(
      frontierGap(
        frontierOf(ps, "lora", (p) => -p.logPpl, { x: b.learning, y: -b.logPpl }),
        frontierOf(ps, "full", (p) => -p.logPpl, { x: b.learning, y: -b.logPpl }),
        b.learning,
        MIN_RANGE,
      ).mean,
    ),
  rank: (ps: CellPoint[]) => {
    const f = final(ps).filter((p) => !p.diverged && Number.isFinite(p.rank90));
    return (
      mean(f.filter((p) => p.method === "full").map((p) => p.rank90)) /
      mean(f.filter((p) => p.method === "lora").map((p) => p.rank90))
    );
  },
  lr_ratio: (ps: CellPoint[]) => {
    const f = final(ps);
    const full = logOptimum(f.filter((p) => p.method === "full").map((p) => ({ x: p.lr, y: p.learningAll })));
    const lora = logOptimum(loraGrid(f).map((p) => ({ x: p.lr, y: p.learningAll })));
    // an optimum at an end of its grid is only bounded: the resample has no ratio
    return full.bracketed && lora.bracketed ? lora.x / full.x : NaN;
  },
  full_best: (ps: CellPoint[]) => best(final(ps).filter((p) => p.method === "full"))?.learningAll ?? NaN,
  lora_best: (ps: CellPoint[]) => best(final(ps).filter((p) => p.method === "lora"))?.learningAll ?? NaN,
};

/** The study's findings, decided on this sweep's per-item outcomes. */
export function findings(base: Point, points: Point[], o: { replicates?: number; seed?: number } = {}): Finding[] {
  const usable = points.filter((p) => p.method !== "base");
  if (!base.items || !usable.length || usable.some((p) => !p.items))
    return [
      {
        id: "learns_less",
        claim: "LoRA learns less than full fine-tuning",
        verdict: "UNDECIDED",
        primary: true,
        held: null,
        evidence:
          "these points carry no per-item outcomes (evaluated before loralab kept them): re-run the sweep to decide",
      },
    ];
  const matrices = matrixOrder(usable);
  const obs = usable.map((p) => toObservation(p, matrices));
  const b = base.items;
  const est = bootstrap(b, obs, STATISTICS, o);
  const cp = measuredPoints(b, obs);
  const fin = final(cp);
  const out: Finding[] = [];
  const verdictOf = (id: Finding["id"], e: Estimate) => decideEstimate(e, RULES[id]);
  const undefinedIn = (e: Estimate) =>
    e.defined < e.replicates
      ? `; undefined in ${e.replicates - e.defined} of ${e.replicates} resamples${e.defined < 0.975 * e.replicates ? ", over 2.5 %: UNDECIDED" : ", left out"}`
      : "";
  const push = (f: Omit<Finding, "held">) =>
    out.push({ ...f, held: f.verdict === "HELD" ? true : f.verdict === "REFUTED" ? false : null });
  const seedsOf = (cell: string) => new Set(obs.filter((x) => x.cell === cell).map((x) => x.seed)).size;
  const nSeeds = (cell: string) => `${seedsOf(cell)} seed${seedsOf(cell) === 1 ? "" : "s"}`;

  // 1. learns less
  const bf = best(fin.filter((p) => p.method === "full"));
  const bl = best(fin.filter((p) => p.method === "lora"));
  if (bf && bl) {
    const e = est.learns_less!;
    // McNemar on one run of each (the same seed where both cells have it)
    const at = (cell: string) => obs.filter((x) => x.cell === cell && x.duration === bf.duration);
    const a = at(bf.cell)[0];
    const c = at(bl.cell).find((x) => x.seed === a?.seed) ?? at(bl.cell)[0];
    const mc = a && c ? mcnemar(a.learning, c.learning) : null;
    push({
      id: "learns_less",
      claim: "LoRA learns less than full fine-tuning",
      verdict: verdictOf("learns_less", e),
      primary: true,
      estimate: e,
      rule: RULES.learns_less,
      evidence: `best full FT (${bf.cell}, ${nSeeds(bf.cell)}) ${range(est.full_best!, pct)} target accuracy, best LoRA (${bl.cell}, ${nSeeds(bl.cell)}) ${range(est.lora_best!, pct)}: full FT ahead by ${range(e, pts)} points (paired bootstrap over questions and seeds, the best of each method re-chosen in every resample; decided against 0)${undefinedIn(e)}${mc ? `; McNemar on full FT seed ${a!.seed} vs LoRA seed ${c!.seed}: ${mc.b} questions only full FT solved, ${mc.c} only LoRA, exact p = ${mc.p < 1e-3 ? mc.p.toExponential(1) : mc.p.toPrecision(2)}` : ""}; base ${pct(base.learning.value)}`,
    });
  }

  // 2. forgets less at matched learning
  const bb = { learning: mean([...b.learning]), retention: mean([...b.retention]) };
  const g = retentionGap(cp, bb);
  const e2 = est.forgets_less!;
  const ea = est.forgets_less_area!;
  const nPts = (m: string) => cp.filter((p) => p.method === m && !p.diverged).length;
  const single = cp.filter((p) => !p.diverged && p.seeds === 1 && seedsOf(p.cell) > 1).length;
  push({
    id: "forgets_less",
    claim: "LoRA forgets less than full fine-tuning at matched learning",
    verdict: Number.isFinite(g.mean) ? verdictOf("forgets_less", e2) : "UNDECIDED",
    primary: true,
    estimate: e2,
    rule: RULES.forgets_less,
    evidence: Number.isFinite(g.mean)
      ? `between the interpolated learning–retention frontiers (LoRA: ${nPts("lora")} points, full FT: ${nPts("full")}, each with the base; diverged runs left out) over the learning both reach, ${pct(g.range[0])} to ${pct(g.range[1])}, LoRA's source retention is higher by ${range(e2, pts)} points on average (area between the frontiers ${range(ea, (x) => (1e4 * x).toFixed(1))} point², resampled over questions and seeds${single ? `; ${single} of the frontier points are earlier epochs of one seed, without seed variance` : ""}${undefinedIn(e2)}); decided against +1 point${e2.hi < 0 ? ": full FT retains more at matched learning" : e2.hi < RULES.forgets_less.threshold && e2.lo > 0 ? ": LoRA retains more, but by less than the 1-point margin" : ""}; base ${pct(bb.retention)}`
      : `the two frontiers share ${pct(Math.max(0, g.range[1] - g.range[0]))} of learning (under ${pct(MIN_RANGE)}): learning was never matched`,
  });
  const e3 = est.forgets_less_ppl!;
  if (b.nll.length && Number.isFinite(e3.value))
    push({
      id: "forgets_less_ppl",
      claim: "LoRA forgets less at matched learning (held-out source perplexity)",
      verdict: verdictOf("forgets_less_ppl", e3),
      primary: false,
      estimate: e3,
      rule: RULES.forgets_less_ppl,
      evidence: `over the same learning range, full FT's held-out perplexity is ${range(e3, (x) => `${x.toFixed(2)}×`)} LoRA's (geometric mean between the frontiers of log perplexity; bootstrap over ${b.nll.length} held-out documents, the questions and seeds); decided against 1.1×${undefinedIn(e3)}; base perplexity ${fmtNum(base.perplexity, 1)}. A supporting measure: the gate counts the cloze`,
    });

  // 3. rank
  const e4 = est.rank!;
  if (Number.isFinite(e4.value)) {
    const ok = fin.filter((p) => !p.diverged && Number.isFinite(p.rank90));
    const fr = mean(ok.filter((p) => p.method === "full").map((p) => p.rank90));
    const lr = mean(ok.filter((p) => p.method === "lora").map((p) => p.rank90));
    push({
      id: "rank",
      claim: "Full fine-tuning's weight change has a much higher rank than LoRA's",
      verdict: verdictOf("rank", e4),
      primary: true,
      estimate: e4,
      rule: RULES.rank,
      evidence: `rank needed for 90 % of ΔW's variance, mean over matrices and cells at the longest duration (diverged runs left out): full FT ${fr.toFixed(1)} (of at most ${usable.find((p) => p.method === "full")?.rank90By[0]?.maxRank ?? "?"} per matrix) vs LoRA ${lr.toFixed(1)} (ranks up to ${Math.max(...ok.filter((p) => p.method === "lora").map((p) => p.rank ?? 0))}): ${range(e4, (x) => `${x.toFixed(1)}×`)} (bootstrap over matrices and seeds${undefinedIn(e4)}); decided against 3×`,
    });
  }

  // 4. LR ratio
  const fullGrid = fin.filter((p) => p.method === "full");
  const loraG = loraGrid(fin);
  if (fullGrid.length && loraG.length) {
    const of = logOptimum(fullGrid.map((p) => ({ x: p.lr, y: p.learningAll })));
    const ol = logOptimum(loraG.map((p) => ({ x: p.lr, y: p.learningAll })));
    const e5 = est.lr_ratio!;
    const grid = (ps: CellPoint[]) =>
      [...ps]
        .sort((a, c) => a.lr - c.lr)
        .map((p) => `${p.lr.toExponential(0)}: ${pts(p.learningAll)}${p.diverged ? " (diverged)" : ""}`)
        .join(", ");
    const unbracketed = [!of.bracketed ? "full FT's" : "", !ol.bracketed ? "LoRA's" : ""].filter(Boolean);
    push({
      id: "lr_ratio",
      claim: "LoRA's best learning rate is about 10× full fine-tuning's",
      verdict: unbracketed.length ? "UNDECIDED" : verdictOf("lr_ratio", e5),
      primary: true,
      estimate: e5,
      rule: RULES.lr_ratio,
      evidence: unbracketed.length
        ? `the grid does not bracket ${unbracketed.join(" or ")} optimum (best at an end of its grid; full FT ${grid(fullGrid)}; LoRA ${grid(loraG)}): the ratio is only bounded, so the grid, not noise, leaves this open`
        : `optima interpolated on log LR (a parabola through each grid's best point and its neighbours): full FT ${of.x.toExponential(1)} (${grid(fullGrid)}), LoRA r=${loraG[0]!.rank} ${ol.x.toExponential(1)} (${grid(loraG)}); ratio ${range(e5, (x) => `${x.toFixed(1)}×`)} (bootstrap over questions and seeds${undefinedIn(e5)}); held within 5–20× (10× within a factor of 2), refuted wholly outside it`,
    });
  }
  return out;
}
