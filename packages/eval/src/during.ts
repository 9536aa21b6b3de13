// Evaluation during training (`train.eval_tasks`): the engine writes a checkpoint every
// `train.eval_every` steps, and each is scored here on the first `train.eval_limit` documents of
// each task while the run goes on: the base model first, then the checkpoints in order, one at
// a time. Every score goes to the run directory's evals.jsonl (one line per model) and to the
// run's trackers (eval/forgetting, eval/learning, eval/<task>/<metric>). With
// `train.forgetting_budget`, the run is stopped once the forgetting score falls more than that
// many points below the base's: it stops after its step with a checkpoint, and the last
// checkpoint within the budget is named.
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { type ResolvedRunConfig, type RunConfig, type RunSummary, train, type TrainOptions } from "@loralab/engine";
import { evaluate, type EvalResult, summarize, type TaskName } from "./index.ts";

/** One scored model: the base (step 0) or a checkpoint. */
export interface EvalPoint {
  step: number;
  tokens: number;
  /** The checkpoint directory; empty for the base. */
  checkpoint: string;
  /** The forgetting score (0–1, the mean of the forgetting tasks that ran) and the learning
   *  metric, where their tasks ran. */
  forgetting: number | null;
  learning: number | null;
  /** Each task's metrics (numbers; a metric with a standard error as its value). */
  tasks: Record<string, Record<string, number>>;
  /** Documents each task scored. */
  docs: Record<string, number>;
  seconds: number;
  /** A checkpoint gone before it was scored (train.keep_checkpoints pruned it). */
  skipped?: string;
}

export interface EvaluatedRun extends RunSummary {
  evals: EvalPoint[];
  /** Set when train.forgetting_budget stopped the run: where, by how many points. */
  forgettingStop: { step: number; drop: number; budget: number } | null;
  /** The score best_checkpoint is the best by (train.keep_best = "eval/..."), else "". */
  keptBy: string;
}

/** Points the forgetting score fell below the base's (percentage points; negative: it rose). */
export const forgettingDrop = (base: number, now: number) => (base - now) * 100;

function flat(r: EvalResult): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const [t, res] of Object.entries(r.tasks))
    out[t] = Object.fromEntries(
      Object.entries(res!.metrics).map(([k, m]) => [k, typeof m === "number" ? m : m.value] as const),
    );
  return out;
}

/** Score one model of a run on its `train.eval_tasks` (or `o.tasks`), on the first
 *  `train.eval_limit` (or `o.limit`) documents each, with the run's `train.eval_data`: the base
 *  when `at.checkpoint` is empty, else that checkpoint (a LoRA adapter merged onto the base);
 *  on the CPU, in this process. */
export async function scoreModel(
  run: ResolvedRunConfig,
  runDir: string,
  at: { step: number; tokens: number; checkpoint: string },
  o: { tasks?: TaskName[]; limit?: number } = {},
): Promise<EvalPoint> {
  const t0 = performance.now();
  const base = run.model.path || join(runDir, "base");
  const lora = run.method.kind === "lora";
  const r = await evaluate({
    model: at.checkpoint && !lora ? at.checkpoint : base,
    adapter: at.checkpoint && lora ? at.checkpoint : undefined,
    merged: true,
    tasks: o.tasks ?? (run.train.eval_tasks as TaskName[]),
    // 0: every document
    limit: (o.limit ?? run.train.eval_limit) || undefined,
    data: run.train.eval_data as Partial<Record<TaskName, string>>,
  });
  const s = summarize(r.tasks);
  return {
    ...at,
    forgetting: s.forgetting?.value ?? null,
    learning: s.learning?.value ?? null,
    tasks: flat(r),
    docs: Object.fromEntries(Object.entries(r.tasks).map(([t, res]) => [t, res!.docs])),
    seconds: (performance.now() - t0) / 1000,
  };
}

/** A scored model's value of train.keep_best's score (`eval/forgetting`, `eval/learning`,
 *  `eval/<task>/<metric>`), or null where it was not scored. */
export function scoreBy(p: EvalPoint, by: string): number | null {
  const [, a, b] = by.split("/");
  if (b === undefined) return a === "forgetting" ? p.forgetting : a === "learning" ? p.learning : null;
  return p.tasks[a!]?.[b] ?? null;
}

/** `to` made a copy of the directory `from`: hard links where the file system allows (no second
 *  copy of the weights), else copies. */
function linkTree(from: string, to: string) {
  mkdirSync(to);
  for (const e of readdirSync(from, { withFileTypes: true })) {
    if (e.isDirectory()) linkTree(join(from, e.name), join(to, e.name));
    else
      try {
        linkSync(join(from, e.name), join(to, e.name));
      } catch {
        copyFileSync(join(from, e.name), join(to, e.name));
      }
  }
}

/** `staged` (a checkpoint's whole linked copy, made before it was scored) renamed to `dir`, and
 *  `meta` saying which in `metaFile`: the old `dir` moved aside first, so `dir` is never
 *  half-written and is missing only between two renames. */
function keepAs(staged: string, dir: string, metaFile: string, meta: object) {
  const old = `${dir}.old`;
  rmSync(old, { recursive: true, force: true });
  writeFileSync(`${metaFile}.tmp`, `${JSON.stringify(meta)}\n`);
  if (existsSync(dir)) renameSync(dir, old);
  renameSync(staged, dir);
  renameSync(`${metaFile}.tmp`, metaFile);
  rmSync(old, { recursive: true, force: true });
}

/** train() with `train.eval_tasks` scored while it trains (the engine's train() when none). */
export async function trainWithEval(
  config: RunConfig,
  opts: TrainOptions & {
    log?: (line: string) => void;
    /** Each scored model, as it is scored (the server stores it and tells its watchers). */
    onEval?: (p: EvalPoint) => void | Promise<void>;
  } = {},
): Promise<EvaluatedRun> {
  if (!config.train?.eval_tasks?.length)
    return { ...(await train(config, opts)), evals: [], forgettingStop: null, keptBy: "" };
  // the run as the engine resolved it (Hub inputs fetched, data prepared): its config.json,
  // read at its start
  let run: ResolvedRunConfig | undefined;
  let runDir = "";
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const evals: EvalPoint[] = [];
  let track: ((step: number, values: Record<string, number>) => void) | undefined;
  let forgettingStop: EvaluatedRun["forgettingStop"] = null;
  let withinBudget = "";
  let best: { metric: string; value: number; step: number; checkpoint: string } | null = null;
  let chain: Promise<void> = Promise.resolve();

  const record = (p: EvalPoint) => {
    evals.push(p);
    appendFileSync(join(runDir, "evals.jsonl"), `${JSON.stringify(p)}\n`);
  };
  const score = async (step: number, tokens: number, checkpoint: string) => {
    // stopped by the budget, or by the user: what is still queued is not scored
    if (forgettingStop || opts.signal?.aborted || !run) return;
    const pruned = () =>
      record({
        step,
        tokens,
        checkpoint,
        forgetting: null,
        learning: null,
        tasks: {},
        docs: {},
        seconds: 0,
        skipped: "pruned by train.keep_checkpoints before it was scored",
      });
    if (checkpoint && !existsSync(checkpoint)) return pruned();
    // keep_best by a score: the checkpoint hard-linked aside first and that copy scored, so the
    // engine's pruning (keep_checkpoints) cannot take it away while it is scored or kept
    const by = run.train.keep_best.startsWith("eval/") ? run.train.keep_best : "";
    let staged = "";
    if (by && checkpoint) {
      staged = join(runDir, `.scoring-${step}`);
      try {
        linkTree(checkpoint, staged);
        if (!existsSync(join(staged, "trainer_state.json"))) throw new Error("incomplete");
      } catch {
        rmSync(staged, { recursive: true, force: true });
        return pruned();
      }
    }
    let p: EvalPoint;
    try {
      p = { ...(await scoreModel(run, runDir, { step, tokens, checkpoint: staged || checkpoint })), checkpoint };
    } catch (e) {
      if (staged) rmSync(staged, { recursive: true, force: true });
      throw e;
    }
    record(p);
    const values: Record<string, number> = {};
    if (p.forgetting !== null) values["eval/forgetting"] = p.forgetting;
    if (p.learning !== null) values["eval/learning"] = p.learning;
    for (const [t, ms] of Object.entries(p.tasks))
      for (const [m, v] of Object.entries(ms)) values[`eval/${t}/${m}`] = v;
    track?.(step, values);
    await opts.onEval?.(p);
    if (!checkpoint) {
      if (by && scoreBy(p, by) === null)
        opts.log?.(`train.keep_best = ${by}: the base has no such score, so no checkpoint will be kept by it`);
      return;
    }
    try {
      await judge(p, by, staged);
    } finally {
      if (staged) rmSync(staged, { recursive: true, force: true });
    }
  };
  /** The budget's and keep_best's (`by`, a score) verdicts on a scored checkpoint (`staged`: its
   *  linked copy, which becomes best/ when it is the best so far). */
  const judge = async (p: EvalPoint, by: string, staged: string) => {
    if (!run) return;
    const { step, checkpoint } = p;
    const base0 = evals[0]?.forgetting;
    if (base0 != null && p.forgetting !== null) {
      const drop = forgettingDrop(base0, p.forgetting);
      const vs =
        drop > 0 ? `${drop.toFixed(2)} points below` : drop < 0 ? `${(-drop).toFixed(2)} points above` : "level with";
      opts.log?.(`eval @ step ${step}: forgetting ${p.forgetting.toFixed(4)}, ${vs} the base's`);
      const budget = run.train.forgetting_budget;
      if (budget > 0 && drop > budget) {
        forgettingStop = { step, drop, budget };
        stop.abort();
        return;
      }
      withinBudget = checkpoint;
    }
    // train.keep_best by a score: the best-scored checkpoint so far (within the budget) kept as best/
    const v = by ? scoreBy(p, by) : null;
    if (v !== null && staged && (!best || v > best.value)) {
      try {
        const kept = { metric: by, value: v, step, checkpoint };
        keepAs(staged, join(runDir, "best"), join(runDir, "best.json"), kept);
        best = kept;
        opts.log?.(`eval @ step ${step}: ${by} ${v.toFixed(4)}, the best so far: kept as best/`);
      } catch (e) {
        opts.log?.(
          `eval @ step ${step}: could not keep ${checkpoint} as best/: ${(e as Error).message.split("\n")[0]}`,
        );
      }
    }
  };
  const queue = (step: number, tokens: number, checkpoint: string) => {
    chain = chain.then(() => score(step, tokens, checkpoint));
    // a failed evaluation fails that model's scores, not the run: said, and the next is scored
    chain = chain.catch((e) => {
      opts.log?.(`eval @ step ${step} failed: ${(e as Error).message.split("\n")[0]}`);
    });
  };

  const s = await train(config, {
    ...opts,
    signal,
    onTrackers: (log) => {
      track = log;
      opts.onTrackers?.(log);
    },
    onEvent: (e) => {
      opts.onEvent?.(e);
      // the base once the run has made it (a random init writes base/ first)
      if (e.type === "start") {
        runDir = e.run_dir;
        run = JSON.parse(readFileSync(join(runDir, "config.json"), "utf8")) as ResolvedRunConfig;
        // a resumed run's best so far, by the same score
        const kept = join(runDir, "best.json");
        if (existsSync(kept) && existsSync(join(runDir, "best"))) {
          const b = JSON.parse(readFileSync(kept, "utf8"));
          if (b.metric === run.train.keep_best) best = b;
        }
        queue(0, 0, "");
      }
      if (e.type === "checkpoint" && run && e.step % run.train.eval_every === 0) queue(e.step, e.tokens, e.path);
    },
    beforeFinish: async () => {
      await chain;
      await opts.beforeFinish?.();
    },
  });
  const kept = best ? join(runDir, "best") : "";
  const keptBy = kept ? best!.metric : "";
  if (!forgettingStop) return { ...s, evals, forgettingStop, keptBy, ...(kept ? { best_checkpoint: kept } : {}) };
  // stopped by the budget, not by the user: the best within it (by keep_best's score), else the
  // last checkpoint within it, is the one to keep
  return {
    ...s,
    evals,
    forgettingStop,
    keptBy,
    stopped_early_at: (forgettingStop as { step: number }).step,
    best_checkpoint: kept || withinBudget,
  };
}
