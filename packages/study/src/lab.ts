// The laboratory `bun run train` runs by default: a complete miniature of the study on this
// machine, nothing downloaded at run time. The base model (datasets/lab/base, pretrained by
// `bun run lab:pretrain` on Moby-Dick and the State of the Union addresses, committed as f16) is
// fine-tuned on a domain it never saw — arithmetic word problems — by full FT, LoRA at several
// ranks, targets and learning rates, and a hybrid; every epoch's checkpoint is scored for
// learning (target accuracy, the GSM8K code path) and forgetting (a cloze built from held-out
// prose, the HellaSwag code path, and held-out perplexity), its ΔW analysed, and a report
// written with the Pareto plot and findings computed from the numbers.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { ensureLabBase } from "./labbase.ts";
import { makeLabData } from "./labdata.ts";
import { basePoint, checkpointPoint, fmtNum, type EvalPlan, type Point } from "./points.ts";
import { writeReport, type Finding } from "./report.ts";
import { runSweep, type RunProgress, type SweepSpec } from "./sweep.ts";

const root = new URL("../../..", import.meta.url).pathname;
export const LAB_BASE = process.env.LORALAB_LAB_BASE ?? join(root, "datasets/lab/base");

export interface LabResult {
  report: string;
  pngs: string[];
  base: Point;
  points: Point[];
  findings: Finding[];
  gates: { name: string; passed: boolean; detail: string }[];
  seconds: { total: number; train: number; eval: number };
}

export function labSpecs(quick: boolean, train: string, records: number, cacheDir: string): SweepSpec[] {
  const base: SweepSpec["base"] = {
    model: { path: LAB_BASE },
    data: { train, format: "ift", template: "{prompt}", chat_template: false, seq_len: 64, cache_dir: cacheDir },
    method: { dropout: 0 },
    optim: { name: "adamw", weight_decay: 0 },
    schedule: { kind: "constant", warmup_frac: 0.05 },
    train: { micro_batch: 32, log_every: 10 },
  };
  if (quick)
    return [
      {
        name: "labq",
        regime: "ift",
        base,
        methods: ["full", "lora"],
        lr: { full: [1e-3], lora: [3e-3] },
        ranks: [16],
        durations: [1, 2, 3],
        records_per_epoch: records,
      },
    ];
  const main: SweepSpec = {
    name: "lab",
    regime: "ift",
    base,
    methods: ["full", "lora", "hybrid"],
    lr: { full: [3e-4, 1e-3, 3e-3], lora: [1e-3, 3e-3, 1e-2], hybrid: [2e-3] },
    ranks: [16],
    targets: ["all", "attention"],
    durations: [1, 2, 3],
    records_per_epoch: records,
    hybrid: { lora_fraction: 1 / 3, full_targets: ["gate_proj", "up_proj", "down_proj"], rank: 16 },
  };
  // other ranks at the middle LoRA learning rate, and a second seed for the headline comparison
  const ablation: SweepSpec = {
    ...main,
    methods: ["lora"],
    lr: { lora: [3e-3] },
    ranks: [16],
    targets: ["attention"],
    hybrid: undefined,
  };
  const ranks: SweepSpec = {
    ...main,
    methods: ["lora"],
    lr: { lora: [3e-3] },
    ranks: [4, 64],
    targets: ["all"],
    hybrid: undefined,
  };
  const seed1: SweepSpec = {
    ...main,
    methods: ["full", "lora"],
    lr: { full: [1e-3], lora: [3e-3] },
    ranks: [16],
    targets: ["all"],
    seeds: [1],
    hybrid: undefined,
  };
  return [{ ...main, targets: ["all"] }, ablation, ranks, seed1];
}

export async function runLab(o: {
  quick?: boolean;
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
  const quick = o.quick ?? false;
  const data = makeLabData(
    join(o.out, "data"),
    quick ? { train: 960, test: 80, cloze: 160 } : { train: 1200, test: 120, cloze: 240 },
  );
  log(
    `laboratory${quick ? " (quick)" : ""}: base ${LAB_BASE}; target: ${data.counts.train} arithmetic word problems (test ${data.counts.test}); source: a ${data.counts.cloze}-question cloze and ${data.counts.heldOutDocs} held-out documents`,
  );
  const store = await openStore({ path: join(o.out, "lab.db") });
  const cache = join(o.out, "cache");
  const plan: EvalPlan = {
    gsm8k: data.gsm8k,
    cloze: data.cloze,
    heldOut: data.heldOut,
    cacheDir: cache,
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
    const points: Point[] = [];
    for (const spec of labSpecs(quick, data.train, data.trainRecords, cache)) {
      t = performance.now();
      const cks = await runSweep(spec, store, runs, log, o.progress);
      trainS += (performance.now() - t) / 1000;
      t = performance.now();
      for (const ck of cks) points.push(await checkpointPoint(ck, LAB_BASE, plan));
      evalS += (performance.now() - t) / 1000;
    }
    const maxD = Math.max(...points.map((p) => p.duration));
    const bestFull = Math.max(
      ...points.filter((p) => p.method === "full" && p.duration === maxD).map((p) => p.learning.value),
    );
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
    ];
    const notes = [
      "Durations are epochs of instruction fine-tuning: the checkpoint at the end of each epoch of one run per cell (the study's IFT choice); for CPT sweeps loralab branches budgets from the checkpoint at 0.8·D of one long run with a 20 % linear cooldown.",
      "Learning: strict-match accuracy (GSM8K's lm-eval filter and exact_match) on held-out generated arithmetic word problems, 0-shot, greedy. Forgetting score: acc_norm on a 4-way cloze built from held-out Moby-Dick chapters and State of the Union addresses (lm-eval's HellaSwag path); higher means less forgotten. Held-out perplexity is in the table.",
      "Intervals are 95 % from bootstrap standard errors over test items; findings compare differences against them and say 'within noise' when they do not exceed them.",
      "Generation diversity (the study's HumanEval measure) is not drawn: the laboratory's target task is scored greedily; `loralab eval --tasks humaneval --n 50` reports it for code models.",
      `Base model: ${LAB_BASE} (pretrained by \`bun run lab:pretrain\`).`,
    ];
    const title = `loralab laboratory${quick ? " (quick)" : ""}: LoRA vs full fine-tuning, learning vs forgetting`;
    writeFileSync(
      join(o.out, "points.json"),
      JSON.stringify({ title, base, points, durationLabel: "epochs", notes, gates }, null, 1),
    );
    const rep = await writeReport(join(o.out, "report"), {
      title,
      base,
      points,
      durationLabel: "epochs",
      notes,
      gates,
    });
    return {
      report: rep.html,
      pngs: rep.pngs,
      base,
      points,
      findings: rep.findings,
      gates,
      seconds: { total: (performance.now() - t0) / 1000, train: trainS, eval: evalS },
    };
  } finally {
    await store.close();
  }
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
