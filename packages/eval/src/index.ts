// @loralab/eval: what a fine-tune learned (HumanEval pass@1, GSM8K strict match) and what it
// forgot (HellaSwag, WinoGrande, ARC-Challenge by log-likelihood), each next to the base
// model's. The engine (napi addon) generates and scores; this package builds the prompts
// exactly as the reference harnesses do, runs code in the sandbox and aggregates.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { datasetFiles, readRecords } from "@loralab/data";
import { type Engine, openEngine } from "@loralab/engine";
import { HubError, resolveData, resolveModel } from "@loralab/hub";
import { GSM8K_STOP, GSM8K_VERSION, gsm8kPrompts, scoreGsm8k, type Gsm8kDoc } from "./gsm8k.ts";
import { HUMANEVAL_STOP, humanevalPrompt, scoreHumanEval, type HumanEvalProblem } from "./humaneval.ts";
import {
  aggregateMc,
  fewshotPrefixes,
  MC_TASKS,
  mcDoc,
  mcRequests,
  meanWithBootstrap,
  scoreMcDoc,
  type McDoc,
  type McTask,
  type Metric,
} from "./mc.ts";
import { Sandbox, type SandboxOptions } from "./sandbox.ts";
import { fetchBenchmark } from "./sources.ts";

export * from "./gsm8k.ts";
export * from "./humaneval.ts";
export * from "./mc.ts";
export { BENCHMARKS, BenchmarkError, type BenchmarkName, type BenchmarkSource, fetchBenchmark } from "./sources.ts";
export { type EvaluatedRun, type EvalPoint, forgettingDrop, scoreModel, trainWithEval } from "./during.ts";
export { PyRandom } from "./pyrandom.ts";
export { Sandbox, SandboxUnavailable, wrapProgram, type ExecResult, type SandboxOptions } from "./sandbox.ts";
export { pyCapitalize, pyStrip } from "./text.ts";

export type TaskName = "humaneval" | "gsm8k" | McTask;
export const TASKS: TaskName[] = ["humaneval", "gsm8k", ...MC_TASKS];

// biome-ignore lint/suspicious/noShadowRestrictedNames: the evaluation's own error class, exported under this name
export class EvalError extends Error {
  override name = "EvalError";
}

// ------------------------------------------------------------------ the engine, typed

export interface GenerateOptions {
  max_new_tokens?: number;
  max_length?: number;
  temperature?: number;
  top_p?: number;
  seed?: number;
  stop?: string[];
  batch_size?: number;
  add_special_tokens?: boolean;
  cache?: boolean;
  /** Left-truncate each prompt to the model's positions − max_new_tokens (lm-eval's generate_until). */
  truncate?: boolean;
}
export interface Generation {
  text: string;
  prompt_tokens: number;
  tokens: number;
  finish: "stop" | "eos" | "length";
}
export interface Loglik {
  logprob: number;
  tokens: number;
  greedy: boolean;
}

/** A model nobody closed gives its engine handle back when it is collected. */
const unloadUnclosed = new FinalizationRegistry<{ engine: Engine; handle: string }>(({ engine, handle }) => {
  void engine.request("unload", { engine: handle }).catch(() => {});
});

/** A model loaded once: generation and log-likelihoods (the engine's, off the JS thread; on
 *  `device: "cuda"` in a worker process, which `close()` stops). */
export class Model {
  private constructor(
    private readonly engine: Engine,
    private readonly handle: string,
    readonly path: string,
    readonly adapter: string,
  ) {}

  static async load(o: {
    model: string;
    adapter?: string;
    merged?: boolean;
    tokenizer?: string;
    device?: string;
    /** The sidecar's environment (a GPU slot's CUDA_VISIBLE_DEVICES); in process on the CPU without it. */
    env?: Record<string, string>;
  }): Promise<Model> {
    const device = o.device ?? "cpu";
    const engine = await openEngine({ device, ...(o.env ? { sidecar: { env: o.env } } : {}) });
    try {
      const request = {
        model: o.model,
        adapter: o.adapter ?? "",
        merged: o.merged ?? false,
        tokenizer: o.tokenizer ?? "",
      };
      const { engine: handle } = await engine.request("load", { ...request, device });
      const m = new Model(engine, handle, o.model, o.adapter ?? "");
      unloadUnclosed.register(m, { engine, handle }, m);
      return m;
    } catch (e) {
      await engine.close();
      throw e;
    }
  }

  generate(prompts: string[], o: GenerateOptions = {}): Promise<Generation[]> {
    return this.engine.request("generate", { engine: this.handle, prompts, options: o }) as Promise<Generation[]>;
  }

  loglikelihood(reqs: { context: string; continuation: string }[], batchSize = 8): Promise<Loglik[]> {
    return this.engine.request("loglik", { engine: this.handle, requests: reqs, batch_size: batchSize });
  }

  countTokens(text: string): Promise<number> {
    return this.engine.request("count_tokens", { engine: this.handle, text });
  }

  /** Release the model (and stop its worker process, if it has one). */
  async close(): Promise<void> {
    unloadUnclosed.unregister(this);
    await this.engine.request("unload", { engine: this.handle }).catch(() => {});
    await this.engine.close();
  }
}

// ------------------------------------------------------------------ data

export function cacheDir(): string {
  return process.env.LORALAB_CACHE ?? join(homedir(), ".cache", "loralab");
}

/** Where each benchmark is read from unless the caller names a path: `<cache>/benchmarks/<task>`
 * (a file, or a Hugging Face dataset directory holding its splits). HumanEval is fetched there by
 * `bun run fetch humaneval`; the others are the user's copies of the HF datasets. */
export function defaultDataPath(task: TaskName): string {
  const dir = join(cacheDir(), "benchmarks");
  return task === "humaneval" ? join(dir, "humaneval", "HumanEval.jsonl.gz") : join(dir, task);
}

/** The split each task is scored on, and where its few-shot examples come from. */
export const SPLITS: Record<TaskName, { eval: string; shots: string | null }> = {
  humaneval: { eval: "test", shots: null },
  gsm8k: { eval: "test", shots: "train" },
  hellaswag: { eval: "validation", shots: "train" },
  winogrande: { eval: "validation", shots: "train" },
  arc_challenge: { eval: "test", shots: "train" },
};

/** The files of one split: the path itself when it is a file, else the data files under the
 * directory whose path names the split (test-00000-of-00001.parquet, validation.jsonl, ...). */
export function splitFiles(path: string, split: string): string[] {
  if (!existsSync(path))
    throw new EvalError(
      `${path}: not found (hint: point --data at the benchmark's file or Hugging Face dataset directory)`,
    );
  if (statSync(path).isFile()) return [path];
  const out = datasetFiles(path, split);
  if (!out.length)
    throw new EvalError(
      `${path}: no data files for the ${split} split (hint: a file named like ${split}.jsonl or ${split}-00000-of-00001.parquet)`,
    );
  return out;
}

async function records(files: string[], limit = Infinity): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const f of files)
    for await (const r of readRecords(f)) {
      if (out.length >= limit) return out;
      out.push(r);
    }
  return out;
}

function field(r: Record<string, unknown>, k: string, file: string, i: number): string {
  const v = r[k];
  if (typeof v !== "string") throw new EvalError(`${file}, record ${i + 1}: lacks the string field \`${k}\``);
  return v;
}

// ------------------------------------------------------------------ options and results

export interface EvalOptions {
  model: string;
  adapter?: string;
  /** Fold the adapter into the weights first (same scores, faster generation). */
  merged?: boolean;
  tokenizer?: string;
  /** cpu (in process) or cuda / cuda:N (in the sidecar process). */
  device?: string;
  /** The sidecar's environment: a worker's GPU slot evaluates with its CUDA_VISIBLE_DEVICES. */
  env?: Record<string, string>;
  tasks: TaskName[];
  /** First N documents of each task (lm-eval's --limit). */
  limit?: number;
  /** task → file or dataset directory; default defaultDataPath(task). */
  data?: Partial<Record<TaskName, string>>;
  batchSize?: number;
  humaneval?: {
    n?: number;
    temperature?: number;
    topP?: number;
    maxLength?: number;
    ks?: number[];
    seed?: number;
    sandbox?: SandboxOptions;
  };
  gsm8k?: { shots?: number; maxNewTokens?: number };
  /** Shots per multiple-choice task (default 0). */
  shots?: Partial<Record<McTask, number>>;
  forgetting?: ForgettingDefinition;
  onProgress?: (task: TaskName, done: number, total: number) => void;
  /** A model already loaded (its caller closes it): `model`, `adapter` and `merged` then only name it. */
  loaded?: Model;
}

export interface ForgettingDefinition {
  /** Metric per task: acc, acc_norm or acc_per_token. */
  metrics: Record<McTask, "acc" | "acc_norm" | "acc_per_token">;
}

/** The default forgetting score: HellaSwag acc_norm, WinoGrande acc, ARC-Challenge acc_norm. */
export const FORGETTING_DEFAULT: ForgettingDefinition = {
  metrics: { hellaswag: "acc_norm", winogrande: "acc", arc_challenge: "acc_norm" },
};
/** The study's MosaicML Gauntlet variant: mean log-prob per token for every task. */
export const FORGETTING_GAUNTLET: ForgettingDefinition = {
  metrics: { hellaswag: "acc_per_token", winogrande: "acc_per_token", arc_challenge: "acc_per_token" },
};

export function describeForgetting(def: ForgettingDefinition, shots: Partial<Record<McTask, number>> = {}): string {
  return (
    "forgetting score = mean of " +
    MC_TASKS.map((t) => `${t} ${def.metrics[t]} (${shots[t] ?? 0}-shot)`).join(", ") +
    " (acc: sum of log-probs; acc_norm: per character, lm-eval; acc_per_token: per token, the Gauntlet)"
  );
}

export interface TaskResult {
  task: TaskName;
  docs: number;
  metrics: Record<string, Metric | number>;
  settings: Record<string, unknown>;
  seconds: number;
  /** Per-document detail (generations, log-probs, shots). */
  samples: unknown[];
}

export interface EvalResult {
  model: string;
  adapter: string;
  /** `org/name@sha` when the model came from the Hub. */
  model_source?: string;
  adapter_source?: string;
  limit: number | null;
  tasks: Partial<Record<TaskName, TaskResult>>;
  learning: { metric: string; value: number } | null;
  /** The forgetting score over the forgetting tasks that ran; `complete` only when all three
   *  did (a partial score is not comparable with a complete one). Null when none ran. */
  forgetting: { value: number; definition: string; parts: Partial<Record<McTask, number>>; complete: boolean } | null;
}

// ------------------------------------------------------------------ tasks

async function runHumanEval(m: Model, o: EvalOptions, sandbox: Sandbox): Promise<TaskResult> {
  const h = o.humaneval ?? {};
  const [n, temperature, topP, maxLength, seed] = [
    h.n ?? 1,
    h.temperature ?? (h.n && h.n > 1 ? 0.2 : 0),
    h.topP ?? 0.95,
    h.maxLength ?? 512,
    h.seed ?? 0,
  ];
  const ks = h.ks ?? [1];
  const file = o.data?.humaneval ?? defaultDataPath("humaneval");
  if (!existsSync(file))
    throw new EvalError(
      `${file}: HumanEval's problems are not there (hint: \`bun run fetch humaneval\`, or --data humaneval=PATH)`,
    );
  const rows = await records(splitFiles(file, "test"), o.limit);
  const problems: HumanEvalProblem[] = rows.map((r, i) => ({
    task_id: field(r, "task_id", file, i),
    prompt: field(r, "prompt", file, i),
    canonical_solution: typeof r.canonical_solution === "string" ? r.canonical_solution : "",
    test: field(r, "test", file, i),
    entry_point: field(r, "entry_point", file, i),
  }));
  const prompts = problems.flatMap((p) => Array.from({ length: n }, () => humanevalPrompt(p)));
  const gens: string[] = [];
  const bs = o.batchSize ?? 8;
  for (let i = 0; i < prompts.length; i += bs) {
    // bigcode: the tokenizer adds its special tokens; max_length_generation counts prompt + generation
    const chunk = await m.generate(prompts.slice(i, i + bs), {
      max_new_tokens: maxLength,
      max_length: maxLength,
      temperature,
      top_p: topP,
      seed: seed + i,
      stop: HUMANEVAL_STOP,
      batch_size: bs,
      add_special_tokens: true,
    });
    gens.push(...chunk.map((g) => g.text));
    o.onProgress?.("humaneval", gens.length, prompts.length * 2);
  }
  const grouped = problems.map((_, i) => gens.slice(i * n, (i + 1) * n));
  const r = await scoreHumanEval(problems, grouped, sandbox, ks, (d, t) => o.onProgress?.("humaneval", t + d, 2 * t));
  return {
    task: "humaneval",
    docs: problems.length,
    metrics: {
      ...Object.fromEntries(Object.entries(r.pass_at).map(([k, v]) => [`pass@${k}`, v])),
      diversity_all: r.diversity.all,
      diversity_passing: r.diversity.passing,
      diversity_failing: r.diversity.failing,
    },
    settings: {
      harness: "bigcode-evaluation-harness humaneval (prompt stripped)",
      n,
      temperature,
      top_p: topP,
      max_length_generation: maxLength,
      stop: HUMANEVAL_STOP,
      timeout_s: sandbox.opts.timeoutS,
      ks,
    },
    seconds: 0,
    samples: r.per_problem,
  };
}

async function runGsm8k(m: Model, o: EvalOptions): Promise<TaskResult> {
  const path = o.data?.gsm8k ?? defaultDataPath("gsm8k");
  const shots = o.gsm8k?.shots ?? 5;
  const toDoc =
    (file: string) =>
    (r: Record<string, unknown>, i: number): Gsm8kDoc => ({
      question: field(r, "question", file, i),
      answer: field(r, "answer", file, i),
    });
  const test = (await records(splitFiles(path, "test"), o.limit)).map(toDoc(path));
  const train = shots > 0 ? (await records(splitFiles(path, "train"))).map(toDoc(path)) : [];
  if (shots > train.length)
    throw new EvalError(`${path}: ${shots}-shot needs ${shots} train examples, found ${train.length}`);
  const prompts = gsm8kPrompts(test, train, shots);
  const gens: string[] = [];
  const bs = o.batchSize ?? 8;
  for (let i = 0; i < prompts.length; i += bs) {
    const chunk = await m.generate(
      prompts.slice(i, i + bs).map((p) => p.prompt),
      // lm-eval's generate_until: max_gen_toks 256, the context left-truncated to max_length − 256
      {
        max_new_tokens: o.gsm8k?.maxNewTokens ?? 256,
        temperature: 0,
        stop: GSM8K_STOP,
        batch_size: bs,
        truncate: true,
      },
    );
    gens.push(...chunk.map((g) => g.text));
    o.onProgress?.("gsm8k", gens.length, prompts.length);
  }
  const r = scoreGsm8k(
    test,
    gens,
    prompts.map((p) => p.shots),
  );
  return {
    task: "gsm8k",
    docs: test.length,
    metrics: {
      strict_match: meanWithBootstrap(r.samples.map((s) => Number(s.strict_correct))),
      flexible_extract: meanWithBootstrap(r.samples.map((s) => Number(s.flexible_correct))),
    },
    settings: {
      harness: GSM8K_VERSION,
      shots,
      fewshot_seed: 1234,
      stop: GSM8K_STOP,
      max_new_tokens: o.gsm8k?.maxNewTokens ?? 256,
      truncation: "left, to max_position_embeddings − max_new_tokens",
    },
    seconds: 0,
    samples: r.samples,
  };
}

/** Every log-likelihood request of a multiple-choice task, per document, as lm-eval 0.4.4
 *  builds them (tests/lm-eval-parity.test.ts checks them against lm-eval itself). */
export function mcTaskRequests(
  task: McTask,
  docs: McDoc[],
  evalRows: Record<string, unknown>[],
  train: McDoc[],
  trainRows: Record<string, unknown>[],
  shots: number,
): {
  docs: McDoc[];
  prefixes: { prefix: string; shots: number[] }[];
  requests: { context: string; continuation: string }[][];
} {
  // lm-eval 0.4.4's task configs: HellaSwag and WinoGrande set neither fewshot_split nor test_split;
  // a drawn doc is dropped when it equals the evaluated one as a record (Python's dict ==)
  const rowKey = (r: Record<string, unknown>) => JSON.stringify(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : 1)));
  const trainKeys = trainRows.map(rowKey);
  const evalKeys = evalRows.map(rowKey);
  const prefixes = fewshotPrefixes(docs, train, shots, {
    sameSplit: task === "hellaswag" || task === "winogrande",
    same: (t, d) => trainKeys[t] === evalKeys[d],
  });
  return { docs, prefixes, requests: docs.map((d, i) => mcRequests(d, prefixes[i]!.prefix)) };
}

async function runMc(m: Model, task: McTask, o: EvalOptions): Promise<TaskResult> {
  const path = o.data?.[task] ?? defaultDataPath(task);
  const shots = o.shots?.[task] ?? 0;
  const toDocs = (rows: Record<string, unknown>[]) =>
    rows.map((r, i) => {
      try {
        return mcDoc(task, r);
      } catch (e) {
        throw new EvalError(`${path}, record ${i + 1}: ${(e as Error).message}`);
      }
    });
  const evalRows = await records(splitFiles(path, SPLITS[task].eval), o.limit);
  const trainRows = shots > 0 ? await records(splitFiles(path, SPLITS[task].shots!)) : [];
  const { docs, prefixes, requests } = mcTaskRequests(
    task,
    toDocs(evalRows),
    evalRows,
    toDocs(trainRows),
    trainRows,
    shots,
  );
  const results = [];
  const per = 16; // documents per engine call: a progress tick each
  for (let i = 0; i < docs.length; i += per) {
    const batch = docs.slice(i, i + per);
    const reqs = requests.slice(i, i + per);
    const ll = await m.loglikelihood(reqs.flat(), o.batchSize ?? 8);
    let k = 0;
    for (const [j, d] of batch.entries()) {
      const mine = ll.slice(k, k + reqs[j]!.length);
      k += reqs[j]!.length;
      results.push({ ...scoreMcDoc(d, mine), shots: prefixes[i + j]!.shots });
    }
    o.onProgress?.(task, results.length, docs.length);
  }
  return {
    task,
    docs: docs.length,
    metrics: aggregateMc(task, results),
    settings: { harness: `lm-evaluation-harness v0.4.4 ${task}`, shots, fewshot_seed: 1234, split: SPLITS[task].eval },
    seconds: 0,
    samples: results,
  };
}

function metricValue(m: Metric | number | undefined): number {
  return typeof m === "number" ? m : (m?.value ?? NaN);
}

/** Learning metric and forgetting score of a set of task results. */
export function summarize(
  tasks: Partial<Record<TaskName, TaskResult>>,
  def: ForgettingDefinition = FORGETTING_DEFAULT,
  shots: Partial<Record<McTask, number>> = {},
): Pick<EvalResult, "learning" | "forgetting"> {
  const learning = tasks.humaneval
    ? { metric: "humaneval pass@1", value: metricValue(tasks.humaneval.metrics["pass@1"]) }
    : tasks.gsm8k
      ? { metric: "gsm8k strict_match", value: metricValue(tasks.gsm8k.metrics.strict_match) }
      : null;
  let forgetting: EvalResult["forgetting"] = null;
  const ran = MC_TASKS.filter((t) => tasks[t]);
  if (ran.length) {
    const parts = Object.fromEntries(ran.map((t) => [t, metricValue(tasks[t]!.metrics[def.metrics[t]])])) as Partial<
      Record<McTask, number>
    >;
    const complete = ran.length === MC_TASKS.length;
    const definition = complete
      ? describeForgetting(def, shots)
      : `${describeForgetting(def, shots).replace("mean of ", `PARTIAL (${ran.length} of ${MC_TASKS.length} tasks: ${ran.join(", ")}) mean of `)}; not comparable with the full three-task score`;
    forgetting = { value: ran.reduce((a, t) => a + parts[t]!, 0) / ran.length, definition, parts, complete };
  }
  return { learning, forgetting };
}

/** Run the asked-for tasks on one model (+ adapter). */
export async function evaluate(o: EvalOptions): Promise<EvalResult> {
  for (const t of o.tasks)
    if (!TASKS.includes(t)) throw new EvalError(`unknown task \`${t}\` (hint: ${TASKS.join(", ")})`);
  if (o.limit !== undefined && !(Number.isInteger(o.limit) && o.limit > 0))
    throw new EvalError(`limit must be a positive integer, not ${o.limit}`);
  // refuse before loading anything if code cannot be executed safely
  const sandbox = o.tasks.includes("humaneval") ? await Sandbox.open(o.humaneval?.sandbox) : null;
  // Hub ids and benchmark names become files in the Hugging Face cache before anything loads
  const { data, sources } = await taskData(o);
  const model = o.loaded ? { path: o.model, pinned: "" } : await hubInput(resolveModel, o.model);
  const adapter = o.adapter && !o.loaded ? await hubInput(resolveModel, o.adapter) : { path: o.adapter, pinned: "" };
  o = { ...o, data };
  const m =
    o.loaded ??
    (await Model.load({
      model: model.path,
      adapter: adapter.path,
      merged: o.merged,
      tokenizer: o.tokenizer,
      device: o.device,
      env: o.env,
    }));
  const tasks: Partial<Record<TaskName, TaskResult>> = {};
  try {
    for (const t of o.tasks) {
      const t0 = performance.now();
      const r =
        t === "humaneval"
          ? await runHumanEval(m, o, sandbox!)
          : t === "gsm8k"
            ? await runGsm8k(m, o)
            : await runMc(m, t, o);
      r.seconds = (performance.now() - t0) / 1000;
      if (sources[t]) r.settings.data_source = sources[t];
      tasks[t] = r;
    }
  } finally {
    if (!o.loaded) await m.close();
  }
  return {
    model: o.model,
    adapter: o.adapter ?? "",
    ...(model.pinned ? { model_source: model.pinned } : {}),
    ...(adapter.pinned ? { adapter_source: adapter.pinned } : {}),
    limit: o.limit ?? null,
    tasks,
    ...summarize(tasks, o.forgetting, o.shots),
  };
}

/** A model or data input: a local path as it is, a Hub reference resolved into the cache. */
async function hubInput(resolve: typeof resolveModel, spec: string): Promise<{ path: string; pinned: string }> {
  try {
    return await resolve(spec);
  } catch (e) {
    if (e instanceof HubError) throw new EvalError(e.message);
    throw e;
  }
}

/** Each task's data: `--data` as given (a path, or hf://datasets/...), else the cache's copy
 *  (<cache>/benchmarks/TASK), else the benchmark fetched by name from the Hub. */
async function taskData(
  o: EvalOptions,
): Promise<{ data: Partial<Record<TaskName, string>>; sources: Partial<Record<TaskName, string>> }> {
  const data: Partial<Record<TaskName, string>> = {};
  const sources: Partial<Record<TaskName, string>> = {};
  for (const t of o.tasks) {
    const given = o.data?.[t];
    let r: { path: string; pinned: string };
    if (given) r = await hubInput(resolveData, given);
    else if (existsSync(defaultDataPath(t))) r = { path: defaultDataPath(t), pinned: "" };
    else {
      try {
        r = await fetchBenchmark(t, { cache: cacheDir() });
      } catch (e) {
        throw new EvalError(`${t}: ${(e as Error).message}`);
      }
    }
    data[t] = r.path;
    if (r.pinned) sources[t] = r.pinned;
  }
  return { data, sources };
}

/** Base-model results are reused across runs: cached by model file identity and settings. */
export async function evaluateBase(o: EvalOptions): Promise<EvalResult> {
  const { onProgress, ...settings } = o;
  const st = statSync((await hubInput(resolveModel, o.model)).path);
  // the data each task is scored on, by commit when it came from the Hub (a branch moves)
  const { data, sources } = await taskData(o);
  const key = createHash("sha256")
    .update(JSON.stringify({ ...settings, data, sources, adapter: "", size: st.size, mtime: st.mtimeMs, v: 2 }))
    .digest("hex")
    .slice(0, 16);
  const file = join(cacheDir(), "eval-base", `${key}.json`);
  if (existsSync(file)) return JSON.parse(readFileSync(file, "utf8"));
  const r = await evaluate({ ...o, adapter: undefined, onProgress });
  writeJsonAtomic(file, r);
  return r;
}

export function writeJsonAtomic(file: string, value: unknown) {
  mkdirSync(join(file, ".."), { recursive: true });
  writeFileSync(`${file}.tmp`, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
}

// ------------------------------------------------------------------ runs

/** What a run directory evaluates: its base model and its output (adapter or full model). */
export function runModels(runDir: string): { base: string; model: string; adapter: string; method: string } {
  const cfgFile = join(runDir, "config.json");
  if (!existsSync(cfgFile))
    throw new EvalError(
      `${runDir}: not a run directory (no config.json) (hint: --run takes a run id under runs/ or a run directory)`,
    );
  const cfg = JSON.parse(readFileSync(cfgFile, "utf8")) as { model?: { path?: string }; method?: { kind?: string } };
  const base = cfg.model?.path ? cfg.model.path : join(runDir, "base");
  const method = cfg.method?.kind ?? "full";
  if (method === "lora") {
    if (!existsSync(join(runDir, "adapter")))
      throw new EvalError(
        `${runDir}: no adapter/ yet (hint: is the run finished? evaluate a checkpoint with --model and --adapter)`,
      );
    return { base, model: base, adapter: join(runDir, "adapter"), method };
  }
  if (!existsSync(join(runDir, "model"))) throw new EvalError(`${runDir}: no model/ yet (hint: is the run finished?)`);
  return { base, model: join(runDir, "model"), adapter: "", method };
}

export interface RunEvaluation extends EvalResult {
  base: Pick<EvalResult, "learning" | "forgetting" | "model"> & {
    tasks: Partial<Record<TaskName, Pick<TaskResult, "metrics" | "docs">>>;
  };
  evaluated_at: string;
}

/** Results as the run directory keeps them: `eval.json` (metrics, settings, learning and
 * forgetting next to the base model's) and `eval/<task>.json` (per-document detail). */
export function writeRunEvaluation(runDir: string, r: EvalResult, base: EvalResult | null): RunEvaluation {
  const strip = (t: TaskResult) => ({ ...t, samples: undefined });
  const out = {
    ...r,
    tasks: Object.fromEntries(Object.entries(r.tasks).map(([k, t]) => [k, strip(t!)])),
    base: base
      ? {
          model: base.model,
          learning: base.learning,
          forgetting: base.forgetting,
          tasks: Object.fromEntries(
            Object.entries(base.tasks).map(([k, t]) => [k, { metrics: t!.metrics, docs: t!.docs }]),
          ),
        }
      : { model: "", learning: null, forgetting: null, tasks: {} },
    evaluated_at: new Date().toISOString(),
  } as RunEvaluation;
  for (const [k, t] of Object.entries(r.tasks)) writeJsonAtomic(join(runDir, "eval", `${k}.json`), t);
  writeJsonAtomic(join(runDir, "eval.json"), out);
  return out;
}

/** Evaluate a run's output (adapter or model) and, unless told not to, its base (cached);
 * write both into the run directory. The library's one call for "how did this run do". */
export async function evaluateRun(
  runDir: string,
  o: Omit<EvalOptions, "model" | "adapter">,
  withBase = true,
): Promise<RunEvaluation> {
  const m = runModels(runDir);
  const r = await evaluate({ ...o, model: m.model, adapter: m.adapter || undefined });
  const b = withBase ? await evaluateBase({ ...o, model: m.base }) : null;
  return writeRunEvaluation(runDir, r, b);
}
