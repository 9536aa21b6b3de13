// The laboratory `bun run train` runs by default: a complete miniature of the study on this
// machine, nothing downloaded at run time. The base model (datasets/lab/base, pretrained by
// `bun run lab:pretrain` on Moby-Dick and the State of the Union addresses, committed as f16) is
// fine-tuned on a domain it never saw — arithmetic word problems — by full FT, LoRA at several
// ranks, targets and learning rates, and a hybrid; every epoch's checkpoint is scored for
// learning (target accuracy, the GSM8K code path) and forgetting (a cloze built from held-out
// prose, the HellaSwag code path, and held-out perplexity), its ΔW analysed, and a report
// written with the Pareto plot and findings computed from the numbers.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { ensureLabBase } from "./labbase.ts";
import { makeLabData } from "./labdata.ts";
import { basePoint, checkpointPoint, fmtNum, LANE_ENV, type EvalPlan, type Point } from "./points.ts";
import { pairedMdd } from "./decide.ts";
import { divergedPoint, findings, type Finding } from "./findings.ts";
import { writeReport } from "./report.ts";
import { type Cell, cells, type RunProgress, type SweepSpec, sweepCell } from "./sweep.ts";

const root = new URL("../../..", import.meta.url).pathname;
export const LAB_BASE = process.env.LORALAB_LAB_BASE ?? join(root, "datasets/lab/base");

export interface LabResult {
  report: string;
  pngs: string[];
  base: Point;
  points: Point[];
  findings: Finding[];
  gates: { name: string; passed: boolean; detail: string }[];
  /** How many of the study's four findings this run decided, and which it left open. */
  decision: string;
  /** Wall-clock seconds; train and eval are summed over the lanes (worker-seconds). */
  seconds: { total: number; train: number; eval: number; lanes: number };
}

/** The laboratory's sizes and grid: chosen so that every finding is decided (docs/laboratory.md). */
export const LAB = {
  /** Training problems (an epoch), target test questions, cloze questions. */
  sizes: { train: 1200, test: 400, cloze: 1100 },
  quickSizes: { train: 960, test: 400, cloze: 400 },
  /** --full: the cloze the held-out documents' 12–30-word sentences allow (3073). */
  fullSizes: { train: 1200, test: 400, cloze: 3000 },
  /** Half-decade LR grids spanning each method's optimum (the study: LoRA's is about 10× higher). */
  lr: { full: [3e-4, 1e-3, 3e-3], lora: [1e-3, 3e-3, 1e-2] },
  /** Seeds of every LR-grid cell. */
  seeds: 3,
  /** rsLoRA's alpha: 8 = 2·√16, so that rsLoRA (scale alpha/√r) at r=16 is plain LoRA's alpha = 2r
   *  (scale 2); at r=64 its scale is 8/√64 = 1, where plain LoRA's stays 2 and diverged. */
  rsloraAlpha: 8,
};

/** quick: one seed, one LR per method (decides "learns less"); default: the grid at three seeds;
 *  full: the same grid with the larger cloze, every epoch of every seed scored. */
export type LabMode = "quick" | "default" | "full";

/** Lanes the laboratory trains and scores in: one single-threaded worker process per core. On
 *  the 2-core machine two one-thread runs side by side train about 1.6× the runs per hour of one
 *  two-thread run at a time (docs/laboratory.md, "Measured"): the tiny model's matrices are too
 *  small to keep two threads busy. */
export function labLanes(): number {
  return Math.max(1, availableParallelism());
}

/** Run `work` on every item, at most `lanes` at a time, in order of the items. */
async function inLanes<T>(items: T[], lanes: number, work: (item: T) => Promise<void>) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(lanes, items.length) }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

export function labSpecs(mode: LabMode, train: string, records: number, cacheDir: string, seed = 0): SweepSpec[] {
  const base: SweepSpec["base"] = {
    model: { path: LAB_BASE },
    data: { train, format: "ift", template: "{prompt}", chat_template: false, seq_len: 64, cache_dir: cacheDir },
    method: { dropout: 0 },
    optim: { name: "adamw", weight_decay: 0 },
    schedule: { kind: "constant", warmup_frac: 0.05 },
    train: { micro_batch: 32, log_every: 10 },
  };
  if (mode === "quick")
    return [
      {
        name: "labq",
        regime: "ift",
        base,
        methods: ["full", "lora"],
        lr: { full: [1e-3], lora: [3e-3] },
        ranks: [16],
        seeds: [seed],
        durations: [1, 2, 3],
        records_per_epoch: records,
      },
    ];
  const main: SweepSpec = {
    name: "lab",
    regime: "ift",
    base,
    methods: ["full", "lora"],
    lr: { full: LAB.lr.full, lora: LAB.lr.lora },
    ranks: [16],
    targets: ["all"],
    seeds: Array.from({ length: LAB.seeds }, (_, i) => seed + i),
    durations: [1, 2, 3],
    records_per_epoch: records,
  };
  // a high rank where plain alpha = 2r diverged (r=64 at 3e-3: held-out perplexity 9167), with rsLoRA
  const rs64: SweepSpec = {
    ...main,
    methods: ["lora"],
    lr: { lora: [3e-3] },
    ranks: [64],
    rslora_alpha: LAB.rsloraAlpha,
    seeds: [seed],
  };
  return [main, rs64];
}

export async function runLab(o: {
  mode?: LabMode;
  /** Worker processes side by side (default: labLanes()). */
  lanes?: number;
  /** The first training seed (each LR-grid cell trains seeds seed, seed+1, seed+2). */
  seed?: number;
  out: string;
  log?: (m: string) => void;
  progress?: RunProgress;
}): Promise<LabResult> {
  const log = o.log ?? ((m: string) => console.log(m));
  const t0 = performance.now();
  if (!process.env.LORALAB_LAB_BASE) ensureLabBase(LAB_BASE); // the committed f16 gzip, expanded once
  if (!existsSync(join(LAB_BASE, "model.safetensors")))
    throw new Error(`${LAB_BASE}: the laboratory's base model is missing (hint: \`bun run lab:pretrain\` makes it)`);
  mkdirSync(o.out, { recursive: true });
  const mode = o.mode ?? "default";
  const quick = mode === "quick";
  const seed = o.seed ?? 0;
  const data = makeLabData(join(o.out, "data"), quick ? LAB.quickSizes : mode === "full" ? LAB.fullSizes : LAB.sizes);
  log(
    `laboratory${mode === "default" ? "" : ` (${mode})`}: base ${LAB_BASE}; target: ${data.counts.train} arithmetic word problems (test ${data.counts.test}); source: a ${data.counts.cloze}-question cloze and ${data.counts.heldOutDocs} held-out documents`,
  );
  const store = await openStore({ path: join(o.out, "lab.db") });
  const cache = join(o.out, "cache");
  const plan: EvalPlan = {
    gsm8k: data.gsm8k,
    cloze: data.cloze,
    heldOut: data.heldOut,
    maxNewTokens: 20,
  };
  const runs = join(o.out, "runs");
  let trainS = 0;
  let evalS = 0;
  try {
    let t = performance.now();
    const base = await basePoint(LAB_BASE, plan);
    evalS += (performance.now() - t) / 1000;
    log(
      `base: target accuracy ${(100 * base.learning.value).toFixed(1)} %, source cloze ${(100 * base.forgetting.value).toFixed(1)} % (chance 25 %), held-out perplexity ${fmtNum(base.perplexity, 1)}`,
    );
    const power = powerPlan(base, data.counts, quick);
    for (const l of power.lines) log(`power: ${l}`);
    const vocab = (JSON.parse(readFileSync(join(LAB_BASE, "config.json"), "utf8")) as { vocab_size: number })
      .vocab_size;
    // every cell of every spec, trained and then scored in one of the lanes: the full laboratory
    // scores every epoch of every seed; the default every epoch of the first seed and the further
    // seeds at the longest duration (the LR grid and learns-less read it; the frontiers get the
    // first seed's curve over training)
    const scored = (spec: SweepSpec, c: Cell) => mode === "full" || c.seed === spec.seeds![0];
    const work = labSpecs(mode, data.train, data.trainRecords, cache, seed)
      .flatMap((spec) => cells(spec).map((c) => ({ spec, c })))
      .map((w, order) => ({ ...w, order }))
      // the longest first (more checkpoints to score, a higher rank), so that no lane is left with
      // a long run at the end while the others wait: a stable sort keeps the grid's order otherwise
      .sort((a, b) => Number(scored(b.spec, b.c)) - Number(scored(a.spec, a.c)) || (b.c.rank ?? 0) - (a.c.rank ?? 0));
    const lanes = Math.max(1, Math.min(o.lanes ?? labLanes(), work.length));
    const lane = lanes > 1;
    log(
      `${work.length} runs in ${lanes} lane${lane ? "s" : ""}${lane ? " (worker processes side by side, one thread each)" : ""}`,
    );
    const byCell: Point[][] = work.map(() => []);
    const failed: string[] = [];
    let started = 0;
    await inLanes(work, lanes, async ({ spec, c, order }) => {
      log(`[${++started}/${work.length}] ${c.key}`);
      try {
        let t = performance.now();
        const cks = await sweepCell(spec, c, store, runs, {
          log,
          progress: o.progress,
          ...(lane ? { train: { sidecar: { env: LANE_ENV } } } : {}),
        });
        trainS += (performance.now() - t) / 1000;
        t = performance.now();
        const maxD = Math.max(...spec.durations);
        for (const ck of cks.filter((k) => scored(spec, c) || k.duration === maxD)) {
          const p = await checkpointPoint(ck, LAB_BASE, plan, { lane });
          p.diverged = divergedPoint(p, vocab);
          byCell[order]!.push(p); // the report lists them in the grid's order
        }
        evalS += (performance.now() - t) / 1000;
      } catch (e) {
        failed.push(`${c.key}: ${(e as Error).message.split("\n")[0]}`);
        log(`  failed: ${c.key}: ${(e as Error).message.split("\n")[0]} (the other cells go on)`);
      }
    });
    // the laboratory decides from every cell: one missing is not a finding
    if (failed.length)
      throw new Error(
        `laboratory: ${failed.length} cell(s) failed: ${failed.join("; ")} (hint: run again: finished cells are kept, the failed ones resume)`,
      );
    const points = byCell.flat();
    t = performance.now();
    const fs = findings(base, points);
    evalS += (performance.now() - t) / 1000;
    const maxD = Math.max(...points.map((p) => p.duration));
    const bestFull = Math.max(
      ...points.filter((p) => p.method === "full" && p.duration === maxD).map((p) => p.learning.value),
    );
    const primary = fs.filter((f) => f.primary);
    const open = primary.filter((f) => f.verdict === "UNDECIDED");
    // --quick must decide only whether LoRA learns less
    const undecided = quick ? open.filter((f) => f.id === "learns_less") : open;
    const decision = `${primary.length - open.length} of the study's ${primary.length} findings decided at 95 %${open.length ? `; undecided: ${open.map((f) => f.claim).join("; ")}` : ""}`;
    const gates = [
      {
        name: "the base model knows its source domain",
        passed: base.forgetting.value - 1.96 * base.forgetting.stderr > 0.25 + 0.05,
        detail: `source cloze ${(100 * base.forgetting.value).toFixed(1)} % ± ${(196 * base.forgetting.stderr).toFixed(1)} % against 25 % chance (needs its 95 % interval above 30 %)`,
      },
      {
        name: "full fine-tuning learns the target domain",
        passed: bestFull >= base.learning.value + 0.2,
        detail: `best full FT ${(100 * bestFull).toFixed(1)} % vs base ${(100 * base.learning.value).toFixed(1)} % target accuracy (needs +20 points)`,
      },
      {
        name: "the experiment is powered for the effects it must resolve",
        passed: power.powered,
        detail: power.lines.join("; "),
      },
      {
        // an undecided finding fails the laboratory: it is built to decide (issue 18)
        name: quick
          ? "the quick laboratory decides whether LoRA learns less"
          : "the laboratory decides its four findings",
        passed: undecided.length === 0,
        detail: undecided.length
          ? `undecided: ${undecided.map((f) => f.claim).join("; ")}`
          : quick
            ? "decided (the other findings need the full grid: bun run train)"
            : "each is HELD or REFUTED at 95 %",
      },
    ];
    const notes = [
      `Durations are epochs of instruction fine-tuning: the checkpoint at the end of each epoch of one run per cell and seed (the study's IFT choice); ${mode === "full" ? "every epoch of every seed is evaluated" : "every epoch of the first seed is evaluated, the further seeds at the longest duration"}.`,
      `Runs trained and scored in ${lanes} lane${lanes > 1 ? "s (worker processes side by side, one thread each)" : " (this process)"}.`,
      "Learning: strict-match accuracy (GSM8K's lm-eval filter and exact_match) on held-out generated arithmetic word problems, 0-shot, greedy. Source retention: acc_norm on a 4-way cloze built from held-out Moby-Dick chapters and State of the Union addresses (lm-eval's HellaSwag path); higher means less forgotten. Held-out perplexity: per held-out document, from an empty context, in pieces the model's positions hold.",
      "Table intervals are 95 % bootstrap intervals over the test items of one checkpoint. Findings are decided by one paired bootstrap (1000 resamples) over target questions, cloze questions, held-out documents, each cell's seeds and ΔW's matrices, the same draw for every point; each finding's interval must lie wholly on one side of its stated threshold (findings.ts).",
      `A run counts as diverged when its held-out perplexity exceeds the vocabulary's size (${vocab}: worse than a uniform guess) or is not finite; diverged points are drawn as crosses and left out of the frontiers and the rank comparison, and kept in the LR curves (a diverged LR learned what it learned).`,
      `rsLoRA cells (scale alpha/√r) use alpha = ${LAB.rsloraAlpha}: at r=16 that is plain LoRA with alpha = 2r (scale 2), at r=64 a scale of ${LAB.rsloraAlpha / Math.sqrt(64)}; every other LoRA cell uses alpha = 2r (the study's choice), under which r=64 at 3e-3 diverged (held-out perplexity 9167 in an earlier grid).`,
      ...power.lines.map((l) => `Power (before training): ${l}.`),
      "Generation diversity (the study's HumanEval measure) is not drawn: the laboratory's target task is scored greedily; `loralab eval --tasks humaneval --n 50` reports it for code models.",
      `Base model: ${LAB_BASE} (pretrained by \`bun run lab:pretrain\`).`,
    ];
    const title = `loralab laboratory${mode === "default" ? "" : ` (${mode})`}: LoRA vs full fine-tuning, learning vs forgetting`;
    writeFileSync(
      join(o.out, "points.json"),
      JSON.stringify({ title, base, points, durationLabel: "epochs", notes, gates, decision, findings: fs }),
    );
    const rep = await writeReport(join(o.out, "report"), {
      title,
      base,
      points,
      durationLabel: "epochs",
      notes,
      gates,
      findings: fs,
    });
    return {
      report: rep.html,
      pngs: rep.pngs,
      base,
      points,
      findings: rep.findings,
      gates,
      decision,
      seconds: { total: (performance.now() - t0) / 1000, train: trainS, eval: evalS, lanes },
    };
  } finally {
    await store.close();
  }
}

/** The effects the laboratory must resolve, and the smallest paired differences its sets detect
 *  (two-sided 95 %, 80 % power), computed from the set sizes and the base model's scores before
 *  any training. Two fine-tuned models' discordance on shared questions is unknown before
 *  training; it is bounded by independent errors: at most 1/2 for learning (accuracies near
 *  50 %), 2p(1−p) for the cloze at the base's accuracy p (fine-tuning starts from the base). */
export function powerPlan(base: Point, counts: { test: number; cloze: number; heldOutDocs: number }, quick = false) {
  const p = base.forgetting.value;
  const learn = pairedMdd(counts.test, 0.5);
  const ret = pairedMdd(counts.cloze, 2 * p * (1 - p));
  const TARGET_LEARN = 0.1; // the study: full FT ahead of LoRA by about 10 points and more
  const TARGET_RET = 0.05; // the study's forgetting gaps: 5 to 20 points
  return {
    // --quick decides only whether LoRA learns less
    powered: learn <= TARGET_LEARN && (quick || ret <= TARGET_RET),
    lines: [
      `learning: ${counts.test} target questions detect a paired difference of ${(100 * learn).toFixed(1)} points (target: 10, the study's learning gaps)`,
      `retention: ${counts.cloze} cloze questions at the base's ${(100 * p).toFixed(1)} % detect ${(100 * ret).toFixed(1)} points between two checkpoints (target: 5, the smallest of the study's forgetting gaps; the frontier gap pools several checkpoints and is finer)`,
      `perplexity: ${counts.heldOutDocs} held-out documents, resampled as wholes`,
    ],
  };
}

/** The summary table printed at the end of the laboratory. */
export function summaryTable(r: LabResult): string {
  const maxD = Math.max(...r.points.map((p) => p.duration));
  const rows = [r.base, ...r.points.filter((p) => p.duration === maxD)];
  const pct = (m: { value: number; stderr: number }) =>
    `${(100 * m.value).toFixed(1).padStart(5)} ±${(196 * m.stderr).toFixed(1).padStart(4)}`;
  const lines = [
    `${"method".padEnd(34)}${"lr".padStart(7)}${"seed".padStart(5)}  ${"learning %".padStart(12)}  ${"source retention %".padStart(18)}  ${"ppl".padStart(6)}  ${"ΔW rank@90".padStart(10)}`,
  ];
  for (const p of rows)
    lines.push(
      `${p.group.padEnd(34)}${(p.lr ? p.lr.toExponential(0) : "").padStart(7)}${String(p.seed).padStart(5)}  ${pct(p.learning).padStart(12)}  ${pct(p.forgetting).padStart(18)}  ${fmtNum(p.perplexity, 2).padStart(6)}  ${fmtNum(p.rank90, 1).padStart(10)}`,
    );
  return lines.join("\n");
}
