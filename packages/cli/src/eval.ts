// `loralab eval`: learning and forgetting scores of a model (+ adapter) or a run, next to
// its base model's, with a progress bar per task; results into the run directory as JSON.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "@loralab/engine";
import { cliArgs } from "./args.ts";
import { countBars } from "./progress.ts";
import {
  evaluate,
  evaluateBase,
  FORGETTING_DEFAULT,
  FORGETTING_GAUNTLET,
  MC_TASKS,
  runModels,
  TASKS,
  writeJsonAtomic,
  writeRunEvaluation,
  type EvalOptions,
  type EvalResult,
  type McTask,
  type TaskName,
} from "@loralab/eval";

export const EVAL_USAGE = `usage: loralab eval (--model M [--adapter A] | --run ID|DIR) --tasks T1,T2 [options]
  M and A: a directory, a .gguf, or a Hub id (org/name[@revision], hf://org/name/FILE.gguf) fetched into the
  Hugging Face cache; the benchmarks are fetched by name from the Hub (lm-eval's datasets) unless --data names them
  --tasks            ${TASKS.join(",")} (default: all)
  --limit N          first N documents of each task
  --data TASK=PATH   a benchmark's file, Hugging Face dataset directory or hf://datasets/org/name[@rev]/path
                     (default <cache>/benchmarks/TASK when there, else the Hub: \`loralab fetch TASK\`)
  --merged           fold the adapter into the weights first (same scores, faster)
  --device D         cpu (default, in process) or cuda / cuda:N (in the CUDA sidecar)
  --n N              HumanEval samples per problem (default 1; the study: 50 at --temperature 0.2)
  --temperature T    HumanEval sampling temperature (default 0 for n=1, else 0.2)
  --top-p P          (default 0.95)
  --max-length N     HumanEval prompt + generation tokens (default 512)
  --k 1,10           pass@k to report (each k ≤ n)
  --gsm8k-shots N    (default 5)
  --shots TASK=K     few-shot for hellaswag, winogrande, arc_challenge (default 0)
  --gauntlet         forgetting score from per-token means (the MosaicML Gauntlet) instead of acc/acc_norm
  --batch-size N     (default 8)
  --no-base          skip the base model's scores
  --out FILE         also write the results here`;

function fmt(v: number | undefined | null): string {
  return v === undefined || v === null || Number.isNaN(v) ? "—" : v.toFixed(4);
}

function table(r: EvalResult, base: EvalResult | null): string {
  const lines = [
    `${"task".padEnd(15)}${"metric".padEnd(18)}${"this".padStart(9)}${"± se".padStart(9)}${base ? "base".padStart(9) + "Δ".padStart(9) : ""}`,
  ];
  for (const [task, t] of Object.entries(r.tasks)) {
    for (const [name, m] of Object.entries(t!.metrics)) {
      const v = typeof m === "number" ? m : m.value;
      const se = typeof m === "number" ? undefined : m.stderr;
      const bm = base?.tasks[task as TaskName]?.metrics[name];
      const bv = bm === undefined ? undefined : typeof bm === "number" ? bm : bm.value;
      lines.push(
        `${task.padEnd(15)}${name.padEnd(18)}${fmt(v).padStart(9)}${fmt(se).padStart(9)}${base ? fmt(bv).padStart(9) + (bv === undefined ? "" : (v - bv >= 0 ? "+" : "") + (v - bv).toFixed(4)).padStart(9) : ""}`,
      );
    }
  }
  if (r.learning)
    lines.push(
      `\nlearning:   ${r.learning.metric} = ${fmt(r.learning.value)}${base?.learning ? ` (base ${fmt(base.learning.value)})` : ""}`,
    );
  if (r.forgetting)
    lines.push(
      `forgetting: ${fmt(r.forgetting.value)}${base?.forgetting ? ` (base ${fmt(base.forgetting.value)})` : ""}\n  ${r.forgetting.definition}`,
    );
  return lines.join("\n");
}

function pairs(list: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of list ?? []) {
    const at = p.indexOf("=");
    if (at < 1) throw new ConfigError(`--${what} ${p}: expected TASK=VALUE`, what);
    out[p.slice(0, at)] = p.slice(at + 1);
  }
  return out;
}

function int(v: string | undefined, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(`--${flag} ${v}: expected an integer ≥ ${min}`, flag);
  return n;
}

function num(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new ConfigError(`--${flag} ${v}: expected a number ≥ 0`, flag);
  return n;
}

export async function cmdEval(args: string[]): Promise<number> {
  const a = cliArgs(
    "eval",
    args,
    {
      model: { type: "string" },
      adapter: { type: "string" },
      run: { type: "string" },
      tasks: { type: "string" },
      limit: { type: "string" },
      data: { type: "string", multiple: true },
      merged: { type: "boolean" },
      device: { type: "string" },
      n: { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      "max-length": { type: "string" },
      k: { type: "string" },
      "gsm8k-shots": { type: "string" },
      shots: { type: "string", multiple: true },
      gauntlet: { type: "boolean" },
      "batch-size": { type: "string" },
      "no-base": { type: "boolean" },
      out: { type: "string" },
    },
    EVAL_USAGE,
    0,
  ).values;
  if (a.help) {
    console.log(EVAL_USAGE);
    return 0;
  }
  const tasks = (
    a.tasks
      ? a.tasks
          .split(",")
          .map((t) => t.trim())
          .filter(Boolean)
      : TASKS
  ) as TaskName[];
  for (const t of tasks)
    if (!TASKS.includes(t))
      throw new ConfigError(`--tasks: unknown task \`${t}\` (hint: ${TASKS.join(", ")})`, "tasks");
  let runDir: string | undefined;
  let model = a.model;
  let adapter = a.adapter;
  let base: string | undefined;
  if (a.run) {
    runDir = existsSync(join(a.run, "config.json")) ? a.run : join("runs", a.run);
    const m = runModels(runDir);
    model ??= m.model;
    adapter ??= m.adapter || undefined;
    base = m.base;
  } else if (!model) throw new ConfigError(`give --model (and --adapter) or --run\n${EVAL_USAGE}`, "model");
  else if (adapter) base = model;
  const data = pairs(a.data, "data") as Partial<Record<TaskName, string>>;
  for (const k of Object.keys(data))
    if (!TASKS.includes(k as TaskName)) throw new ConfigError(`--data ${k}: unknown task`, "data");
  const shots = Object.fromEntries(
    Object.entries(pairs(a.shots, "shots")).map(([k, v]) => {
      if (!MC_TASKS.includes(k as McTask))
        throw new ConfigError(
          `--shots ${k}: few-shot is set per multiple-choice task (${MC_TASKS.join(", ")}); GSM8K has --gsm8k-shots`,
          "shots",
        );
      return [k, int(v, "shots", 0)!];
    }),
  ) as Partial<Record<McTask, number>>;
  const n = int(a.n, "n");
  const ks = a.k ? a.k.split(",").map((k) => int(k, "k")!) : undefined;
  const opts: EvalOptions = {
    model: model!,
    adapter,
    merged: a.merged,
    device: a.device,
    tasks,
    limit: int(a.limit, "limit"),
    data,
    batchSize: int(a["batch-size"], "batch-size"),
    humaneval: {
      n,
      temperature: num(a.temperature, "temperature"),
      topP: num(a["top-p"], "top-p"),
      maxLength: int(a["max-length"], "max-length"),
      ks,
    },
    gsm8k: { shots: int(a["gsm8k-shots"], "gsm8k-shots", 0) },
    shots,
    forgetting: a.gauntlet ? FORGETTING_GAUNTLET : FORGETTING_DEFAULT,
    onProgress: countBars(),
  };
  console.log(
    `eval: ${model}${adapter ? ` + adapter ${adapter}${a.merged ? " (merged)" : ""}` : ""}: ${tasks.join(", ")}${opts.limit ? ` (first ${opts.limit} each)` : ""}`,
  );
  const r = await evaluate(opts);
  let b: EvalResult | null = null;
  if (base && !a["no-base"]) {
    console.log(`base: ${base} (cached across runs)`);
    b = await evaluateBase({ ...opts, model: base, adapter: undefined });
  }
  console.log(`\n${table(r, b)}`);
  if (runDir) {
    writeRunEvaluation(runDir, r, b);
    console.log(`\nresults: ${join(runDir, "eval.json")} (per-document detail in ${join(runDir, "eval")}/)`);
  }
  if (a.out) {
    writeJsonAtomic(a.out, { ...r, base: b });
    console.log(`results: ${a.out}`);
  }
  return 0;
}
