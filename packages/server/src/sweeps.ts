// A sweep the server runs: one base run config and a grid over some of its fields (dotted paths,
// `optim.lr`, `method`), a run per combination, each scored while it trains (train.eval_tasks).
// Its summary is what the sweep page draws as the scores come: every scored checkpoint as a
// point on the learning–forgetting plane, each method's Pareto frontier, and the study's
// comparisons as they stand on the points so far — provisional, since live scores are on
// train.eval_limit documents and keep no per-item outcomes (`loralab sweep` decides at 95 %).
import type { EvalRow, RunRow } from "@loralab/db";
import { frontier, frontierGap } from "@loralab/engine";

export const MAX_SWEEP_CELLS = 64;
const MAX_VALUES = 16;
const KEY = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,2}$/;

export interface SweepRequest {
  name: string;
  base: Record<string, unknown>;
  grid: Record<string, unknown[]>;
}

/** The request checked: a name, a base config, a grid of at most MAX_SWEEP_CELLS combinations;
 *  else the offending field and why. */
export function parseSweep(body: unknown): SweepRequest | { field: string; message: string } {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    return { field: "", message: "a sweep is a JSON object: {name, base, grid}" };
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b))
    if (!["name", "base", "grid"].includes(k))
      return { field: k, message: "unknown field (a sweep has name, base, grid)" };
  if (typeof b.name !== "string" || !/^[\w.-]{1,100}$/.test(b.name))
    return { field: "name", message: "a name of 1 to 100 letters, digits, '_', '-' or '.'" };
  if (typeof b.base !== "object" || b.base === null || Array.isArray(b.base))
    return { field: "base", message: "the run config every cell starts from (a JSON object)" };
  if (typeof b.grid !== "object" || b.grid === null || Array.isArray(b.grid) || !Object.keys(b.grid).length)
    return {
      field: "grid",
      message: 'an object of dotted config paths to lists of values, e.g. {"optim.lr": [1e-4, 3e-4]}',
    };
  let cells = 1;
  for (const [k, v] of Object.entries(b.grid)) {
    if (!KEY.test(k)) return { field: `grid.${k}`, message: "a config path of 1 to 3 snake_case names joined by '.'" };
    if (k === "name" || k === "run_id" || k === "out_dir" || k.startsWith("tracking"))
      return { field: `grid.${k}`, message: "not a field a sweep varies" };
    if (!Array.isArray(v) || !v.length || v.length > MAX_VALUES)
      return { field: `grid.${k}`, message: `a list of 1 to ${MAX_VALUES} values` };
    cells *= v.length;
  }
  if (cells > MAX_SWEEP_CELLS)
    return { field: "grid", message: `${cells} combinations: at most ${MAX_SWEEP_CELLS} runs per sweep` };
  return { name: b.name, base: b.base as Record<string, unknown>, grid: b.grid as Record<string, unknown[]> };
}

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v));

/** A cell is scored while it trains: it names its tasks and how often. */
export const SCORES_WHILE_TRAINING =
  'a sweep\'s runs are scored while they train: train.eval_tasks and train.eval_every (hint: a learning task, gsm8k or humaneval, and forgetting tasks, e.g. ["gsm8k", "arc_challenge"])';
export const scoresWhileTraining = (c: { train?: { eval_tasks?: unknown[]; eval_every?: number } }) =>
  Boolean(c.train?.eval_tasks?.length && c.train.eval_every);

/** Each combination of the grid, in order (the last key varies fastest), with its values. */
export function expand(s: SweepRequest): { config: Record<string, unknown>; params: Record<string, unknown> }[] {
  let out: Record<string, unknown>[] = [{}];
  for (const [k, vs] of Object.entries(s.grid)) out = out.flatMap((p) => vs.map((v) => ({ ...p, [k]: v })));
  return out.map((params, i) => {
    const config = clone(s.base);
    for (const [k, v] of Object.entries(params)) {
      const path = k.split(".");
      let at = config;
      for (const seg of path.slice(0, -1)) {
        const next = at[seg];
        at[seg] = typeof next === "object" && next !== null && !Array.isArray(next) ? next : {};
        at = at[seg] as Record<string, unknown>;
      }
      at[path[path.length - 1]!] = clone(v);
    }
    config.name = `${s.name}-${String(i + 1).padStart(2, "0")}`;
    return { config, params };
  });
}

export interface SweepPoint {
  run: string;
  /** The method (full, lora), the frontier it belongs to. */
  group: string;
  checkpoint: string;
  step: number;
  learning: number;
  forgetting: number;
}

export interface SweepFinding {
  id: "learns_less" | "forgets_less";
  claim: string;
  /** Where the points so far lean, or "not yet" while they cannot compare. */
  leaning: "held" | "refuted" | "not yet";
  evidence: string;
}

/** A sweep's points (each run's checkpoints scored while it trained, with both scores), the
 *  base's, each group's frontier (indices into points, -1 the base, by learning ascending) and
 *  the provisional findings. Scores of later jobs (`job:*` keys: other tasks, other limits) are
 *  not points. Runs whose bases scored differently (a grid over the model or the eval data) have
 *  no common base: then `base` is null and nothing is compared. */
export function summarize(runs: RunRow[], evals: Map<string, EvalRow[]>) {
  const points: SweepPoint[] = [];
  const bases: { learning: number; forgetting: number }[] = [];
  for (const r of runs) {
    const rows = evals.get(r.id) ?? [];
    for (const ck of [...new Set(rows.map((x) => x.checkpoint))]) {
      if (ck !== "base" && !/^step-\d+$/.test(ck)) continue;
      const score = (task: string) => rows.find((x) => x.checkpoint === ck && x.task === task && x.metric === "score");
      const l = score("learning");
      const f = score("forgetting");
      if (!l || !f) continue;
      if (ck === "base") bases.push({ learning: l.value, forgetting: f.value });
      else
        points.push({
          run: r.id,
          group: r.method,
          checkpoint: ck,
          step: Number(ck.slice("step-".length)),
          learning: l.value,
          forgetting: f.value,
        });
    }
  }
  const one = bases.every((b) => b.learning === bases[0]!.learning && b.forgetting === bases[0]!.forgetting);
  const base = bases.length && one ? bases[0]! : null;
  const groups = [...new Set(points.map((p) => p.group))];
  const frontiers: Record<string, number[]> = {};
  const curve: Record<string, { x: number; y: number }[]> = {};
  for (const g of groups) {
    // the study's frontier: the method's points with the base on it
    const mine = points.flatMap((p, i) => (p.group === g ? [{ x: p.learning, y: p.forgetting, i }] : []));
    const f = frontier([...(base ? [{ x: base.learning, y: base.forgetting, i: -1 }] : []), ...mine]);
    frontiers[g] = f.map((p) => p.i);
    curve[g] = f.map(({ x, y }) => ({ x, y }));
  }
  const latest = runs.flatMap((r) => {
    const mine = points.filter((p) => p.run === r.id);
    return mine.length ? [mine.reduce((a, b) => (b.step > a.step ? b : a))] : [];
  });
  const findings =
    bases.length && !one
      ? notYet(
          "the runs' bases scored differently (the grid varies the model or the eval data): there is no one base to compare them from",
        )
      : provisional(latest, curve, base);
  return { base, points, frontiers, findings };
}

/** Both comparisons, not yet made, and why. */
function notYet(evidence: string): SweepFinding[] {
  return [
    { id: "learns_less", claim: "LoRA learns less than full fine-tuning", leaning: "not yet", evidence },
    { id: "forgets_less", claim: "LoRA forgets less at matched learning", leaning: "not yet", evidence },
  ];
}

const pts = (x: number) => (100 * x).toFixed(1);

/** The study's two comparisons on the points so far: learning by each method's best run at its
 *  latest scored checkpoint (the study's longest duration), forgetting by the mean gap between
 *  the two frontiers over the learning both reach (HELD above the study's 1-point margin). */
function provisional(
  latest: SweepPoint[],
  curve: Record<string, { x: number; y: number }[]>,
  base: { learning: number; forgetting: number } | null,
): SweepFinding[] {
  const best = (g: string) => Math.max(...latest.filter((p) => p.group === g).map((p) => p.learning));
  const out: SweepFinding[] = [];
  const tail = " (provisional: live scores on train.eval_limit documents; `loralab sweep` decides it at 95 %)";
  if (!latest.some((p) => p.group === "full") || !latest.some((p) => p.group === "lora"))
    return notYet("needs scored checkpoints of both full and lora runs");
  const gap = best("full") - best("lora");
  out.push({
    id: "learns_less",
    claim: "LoRA learns less than full fine-tuning",
    leaning: gap > 0 ? "held" : gap < 0 ? "refuted" : "not yet",
    evidence: `best learning at each run's latest scored checkpoint: full ${pts(best("full"))}, lora ${pts(best("lora"))}: ${
      gap > 0 ? `full ahead by ${pts(gap)} points` : gap < 0 ? `lora ahead by ${pts(-gap)} points` : "level"
    }${tail}`,
  });
  // matched learning: the two frontiers share at least 2 points of it (the study's MIN_RANGE)
  const g = frontierGap(curve.lora!, curve.full!, base?.learning ?? 0, 0.02);
  const range = `over learning ${pts(g.range[0])}–${pts(g.range[1])}`;
  out.push({
    id: "forgets_less",
    claim: "LoRA forgets less at matched learning",
    leaning: Number.isNaN(g.mean) ? "not yet" : g.mean > 0.01 ? "held" : "refuted",
    evidence: Number.isNaN(g.mean)
      ? "the two frontiers do not yet share 2 points of learning"
      : g.mean > 0.01
        ? `LoRA retains ${pts(g.mean)} points more of the forgetting score than full FT ${range}${tail}`
        : g.mean > 0
          ? `LoRA retains more, by ${pts(g.mean)} points ${range}, but by less than the 1-point margin${tail}`
          : `LoRA retains ${pts(-g.mean)} points less than full FT ${range}${tail}`,
  });
  return out;
}
