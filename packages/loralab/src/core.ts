// The training half of the library: typed config, train with progress and cancellation,
// held-out loss, merge. Thin: the engine (crates/core, via the napi addon) validates and works.
// `loralab` (index.ts) re-exports it with evaluation, analysis, the store and the server.
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { engineReadable, normalize, RECIPES, type Mapping } from "@loralab/data";
import * as native from "@loralab/native";
import type { RunConfig } from "./config.gen.ts";
import { ConfigSyntaxError, readConfigFile } from "./configfile.ts";
import { Sidecar, SidecarCrashed, SidecarError, sidecarPath, type SidecarOptions } from "@loralab/native/sidecar";

export {
  Sidecar,
  SidecarCrashed,
  SidecarError,
  sidecarPath,
  type Ready,
  type SidecarOptions,
} from "@loralab/native/sidecar";

export type { RunConfig } from "./config.gen.ts";
export { CONFIG_EXTENSIONS, ConfigSyntaxError, nearestName, parseConfigText, readConfigFile } from "./configfile.ts";

type DeepRequired<T> = T extends (infer U)[]
  ? DeepRequired<U>[]
  : T extends object
    ? { [K in keyof T]-?: DeepRequired<T[K]> }
    : T;
/** A config after `resolveConfig`: every field present, every default applied. */
export type ResolvedRunConfig = DeepRequired<RunConfig>;

export interface StartEvent {
  type: "start";
  run_id: string;
  run_dir: string;
  total_steps: number;
  start_step: number;
  params: number;
  trainable_params: number;
  rows: number;
}
export interface ProgressEvent {
  type: "progress";
  step: number;
  total_steps: number;
  tokens: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  elapsed_s: number;
}
export interface CheckpointEvent {
  type: "checkpoint";
  step: number;
  tokens: number;
  path: string;
}
/** The prepare step's account of the data (also `data.json` in the run directory). */
export interface PreparedEvent {
  type: "prepared";
  source: string;
  documents: number;
  rows: number;
  seq_len: number;
  tokens: number;
  loss_tokens: number;
  truncated: number;
  dropped: number;
  dropped_tokens: number;
}
export type TrainEvent = PreparedEvent | StartEvent | ProgressEvent | CheckpointEvent;

export interface RunSummary {
  run_id: string;
  run_dir: string;
  status: "completed" | "cancelled";
  method: "full" | "lora";
  steps: number;
  total_steps: number;
  tokens: number;
  /** Passes over the prepared data. */
  epochs: number;
  /** Loss of this process's first and last step; null when it trained no step (resumed from
   *  the final checkpoint). */
  first_loss: number | null;
  final_loss: number | null;
  tokens_per_s: number;
  elapsed_s: number;
  params: number;
  trainable_params: number;
  /** Final model (HF layout) or adapter (PEFT layout) directory; empty when cancelled. */
  output: string;
  last_checkpoint: string;
}

/** A config the engine refused before doing any work; `field` names the offending key. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** Any other engine failure (data, checkpoint, non-finite loss...). */
export class EngineError extends Error {
  override name = "EngineError";
}

/** CUDA ran out of memory; `config` is the run config that asked for too much. */
export class OutOfMemoryError extends EngineError {
  override name = "OutOfMemoryError";
  constructor(
    message: string,
    readonly config: unknown,
  ) {
    super(message);
  }
}

/** The worker process died mid-run. The run directory says "interrupted"; resume it from
 *  `lastCheckpoint` (empty when it had none: then it starts over). */
export class RunInterrupted extends EngineError {
  override name = "RunInterrupted";
  constructor(
    message: string,
    readonly runDir: string,
    readonly lastCheckpoint: string,
  ) {
    super(message);
  }
}

function mapError(e: unknown): Error {
  const err = e as { code?: string; message?: string };
  const msg = err?.message ?? String(e);
  if (err?.code === "InvalidArg") {
    const m = /^config ([^:]+): /.exec(msg);
    return new ConfigError(msg, m?.[1] ?? "");
  }
  return new EngineError(msg);
}

/** Apply defaults and validate; throws ConfigError naming the field. */
export function resolveConfig(config: RunConfig): ResolvedRunConfig {
  try {
    return native.resolveConfig(JSON.stringify(config)) as ResolvedRunConfig;
  } catch (e) {
    throw mapError(e);
  }
}

/** The config's JSON Schema: every field with its default and the reason for it. */
export function configSchema(): Record<string, unknown> {
  return native.configSchema() as Record<string, unknown>;
}

/** Read a .toml, .yaml/.yml or .json run config (one schema; syntax errors with line and column). */
export async function loadConfigFile(path: string): Promise<RunConfig> {
  try {
    const v = readConfigFile(path);
    if (typeof v !== "object" || v === null || Array.isArray(v))
      throw new ConfigSyntaxError(
        `config file ${path}: expected a table of sections (hint: [model], [data], ... as in configs/tiny-lora.toml)`,
        path,
        0,
        0,
      );
    return v as RunConfig;
  } catch (e) {
    if (e instanceof ConfigSyntaxError) throw new ConfigError(e.message, "");
    throw e;
  }
}

/** Apply `--a.b=value` overrides; values are parsed as JSON when they parse, else kept as strings. */
export function applyOverrides(config: RunConfig, overrides: string[]): RunConfig {
  const out = structuredClone(config) as Record<string, unknown>;
  for (const o of overrides) {
    const body = o.replace(/^--/, "");
    const eq = body.indexOf("=");
    if (eq <= 0) throw new ConfigError(`override ${o}: expected --key=value (hint: --method.rank=64)`, body);
    const path = body.slice(0, eq).split(".");
    const raw = body.slice(eq + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {}
    let node = out;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      if (next === undefined) node[key] = {};
      else if (typeof next !== "object" || next === null || Array.isArray(next))
        throw new ConfigError(`override ${o}: ${key} is not a section`, path.join("."));
      node = node[key] as Record<string, unknown>;
    }
    node[path[path.length - 1]!] = value;
  }
  return out as RunConfig;
}

export interface TrainOptions {
  /** Called after every optimizer step. */
  onProgress?: (p: ProgressEvent) => void;
  /** Every event: start, progress, checkpoint. */
  onEvent?: (e: TrainEvent) => void;
  /** Aborting stops the run after its current step, writes a checkpoint, and resolves with status "cancelled". */
  signal?: AbortSignal;
  /** Run in the sidecar process. Always so for `train.device = "cuda"`; `true` also sends a cpu
   *  run there (isolation: a crash cannot take this process down). */
  sidecar?: boolean | SidecarOptions;
}

type DataConfig = NonNullable<RunConfig["data"]>;

/** Datasets the engine cannot read as they are (other formats, directories, recipes) become a
 *  normalised JSONL in the shard cache; the engine then prepares from it. */
export async function prepareData(data: DataConfig, signal?: AbortSignal): Promise<DataConfig> {
  const train = data.train ?? "";
  const recipe = data.recipe ?? "";
  // a missing path or a plain .jsonl/.txt goes to the engine as it is (it names the error)
  if (!train || !existsSync(train) || (!recipe && engineReadable(train))) return data;
  if (recipe && !RECIPES[recipe])
    throw new ConfigError(
      `config data.recipe: unknown recipe \`${recipe}\` (hint: one of ${Object.keys(RECIPES).join(", ")})`,
      "data.recipe",
    );
  const m: Mapping = {
    format: data.format ?? "cpt",
    text_field: data.text_field ?? "text",
    prompt_field: data.prompt_field ?? "prompt",
    response_field: data.response_field ?? "response",
    messages_field: data.messages_field ?? "messages",
    ...(recipe ? RECIPES[recipe] : {}),
  };
  try {
    const r = await normalize(train, m, data.cache_dir ?? ".cache/loralab/shards", signal);
    return {
      ...data,
      train: r.output,
      source: train,
      recipe: "",
      format: m.format,
      text_field: "text",
      prompt_field: "prompt",
      response_field: "response",
      messages_field: "messages",
    };
  } catch (e) {
    throw new EngineError((e as Error).message);
  }
}

/** Train one run: in-process on CPU, in the sidecar process for CUDA (or when `opts.sidecar`).
 *  Resolves with the run summary. */
export async function train(config: RunConfig, opts: TrainOptions = {}): Promise<RunSummary> {
  // a cancel while the data is being prepared (a large dataset normalised to JSONL) ends it there
  const cancelled = () => cancelledBeforeSteps(config, join(config.out_dir ?? "runs", config.run_id ?? ""));
  if (opts.signal?.aborted) return cancelled();
  if (config.data) {
    try {
      config = { ...config, data: await prepareData(config.data, opts.signal) };
    } catch (e) {
      if (opts.signal?.aborted) return cancelled();
      throw e;
    }
  }
  if (opts.signal?.aborted) return cancelled();
  const device = config.train?.device ?? "cpu";
  if (opts.sidecar || device !== "cpu")
    return trainInSidecar(
      resolveConfig(config),
      opts,
      typeof opts.sidecar === "object" ? opts.sidecar : { path: undefined },
    );
  const token = new native.CancelToken();
  const onAbort = () => token.cancel();
  if (opts.signal?.aborted) token.cancel();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  const onEvent = (json: string) => {
    const ev = JSON.parse(json) as TrainEvent;
    opts.onEvent?.(ev);
    if (ev.type === "progress") opts.onProgress?.(ev);
  };
  try {
    return JSON.parse(await native.train(JSON.stringify(config), token, onEvent)) as RunSummary;
  } catch (e) {
    throw mapError(e);
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
  }
}

async function trainInSidecar(config: ResolvedRunConfig, opts: TrainOptions, so: SidecarOptions): Promise<RunSummary> {
  // resolved here, so the run directory is known even if the worker dies before saying it
  const runDir = join(config.out_dir, config.run_id);
  let sc: Sidecar;
  try {
    sc = await Sidecar.start({ ...so, path: so.path ?? sidecarPath(config.train.device) });
  } catch (e) {
    throw new EngineError((e as Error).message);
  }
  // a cancel once steps run stops after the current one and checkpoints; before the first step
  // (loading, preparing the data) there is nothing to keep, so the worker is stopped at once
  let stepping = false;
  let killedBeforeSteps = false;
  const onAbort = () => {
    if (stepping) return sc.cancel(id);
    killedBeforeSteps = true;
    sc.kill();
  };
  const { id, result } = sc.request<RunSummary>("train", { config }, (data) => {
    const ev = data as TrainEvent;
    if (ev.type === "start") stepping = true;
    opts.onEvent?.(ev);
    if (ev.type === "progress") opts.onProgress?.(ev);
  });
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    return await result;
  } catch (e) {
    if (e instanceof SidecarCrashed && killedBeforeSteps) {
      markInterrupted(runDir, "cancelled before its first step", "cancelled");
      return cancelledBeforeSteps(config as unknown as RunConfig, runDir);
    }
    if (e instanceof SidecarCrashed) {
      const ck = lastCheckpoint(runDir);
      markInterrupted(runDir, e.message);
      const hint = ck ? `resume with --train.resume_from=${ck}` : "it had no checkpoint yet: run it again";
      throw new RunInterrupted(`run ${config.run_id} interrupted: ${e.message} (hint: ${hint})`, runDir, ck);
    }
    if (e instanceof SidecarError) {
      if (e.code === "config") throw new ConfigError(e.message, e.field);
      if (e.code === "oom") throw new OutOfMemoryError(e.message, e.config);
      throw new EngineError(e.message);
    }
    throw e;
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    await sc.shutdown();
  }
}

/** run.json says "running" until its process says otherwise; a dead worker cannot, so Bun does. */
function markInterrupted(runDir: string, why: string, status: "interrupted" | "cancelled" = "interrupted"): void {
  const path = join(runDir, "run.json");
  if (!existsSync(path)) return;
  const run = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  if (run.status !== "running") return;
  writeFileSync(
    path,
    JSON.stringify(
      { ...run, status, error: status === "cancelled" ? null : why, updated_at: new Date().toISOString() },
      null,
      2,
    ),
  );
}

/** The summary of a run cancelled before it trained a step. */
function cancelledBeforeSteps(config: RunConfig, runDir: string): RunSummary {
  const method = (config.method?.kind ?? "lora") as RunSummary["method"];
  return {
    run_id: config.run_id ?? "",
    run_dir: runDir,
    status: "cancelled",
    method,
    steps: 0,
    total_steps: 0,
    tokens: 0,
    epochs: 0,
    first_loss: null,
    final_loss: null,
    tokens_per_s: 0,
    elapsed_s: 0,
    params: 0,
    trainable_params: 0,
    output: "",
    last_checkpoint: lastCheckpoint(runDir),
  };
}

export interface EvalLossRequest {
  /** Hugging Face model directory. */
  model: string;
  /** PEFT adapter directory (optional). */
  adapter?: string;
  merged?: boolean;
  tokenizer?: string;
  data: NonNullable<RunConfig["data"]>;
  micro_batch?: number;
}
export interface EvalLoss {
  loss: number;
  loss_tokens: number;
  rows: number;
}

/** Mean held-out next-token loss of a model (+ adapter) on a data file. */
export async function evalLoss(req: EvalLossRequest): Promise<EvalLoss> {
  req = { ...req, data: await prepareData(req.data) };
  try {
    return JSON.parse(await native.evalLoss(JSON.stringify(req))) as EvalLoss;
  } catch (e) {
    throw mapError(e);
  }
}

export interface MergeOptions {
  /** The written weights' dtype (the fold itself is f32). Default f32; anything else is a ConfigError on field `dtype`. */
  dtype?: "bf16" | "f16" | "f32";
}
export interface MergeResult {
  dtype: string;
  /** What the base lacked, for the user: e.g. no chat template, so the merged model has none. */
  notes: string[];
}

/** Fold a PEFT LoRA adapter into its base model (HF directory or .gguf) and write `out` as a
 *  complete Hugging Face model directory: weights in `dtype`, config.json (its torch_dtype),
 *  generation_config.json, tokenizer.json, tokenizer_config.json (chat template, bos/eos) and
 *  special_tokens_map.json. */
export async function merge(
  base: string,
  adapter: string,
  out: string,
  { dtype = "f32" }: MergeOptions = {},
): Promise<MergeResult> {
  try {
    return JSON.parse(await native.merge(base, adapter, out, JSON.stringify({ dtype }))) as MergeResult;
  } catch (e) {
    throw mapError(e);
  }
}

/** The last checkpoint of a run directory (by step; one with its trainer state), or "" when it has none. */
export function lastCheckpoint(runDir: string): string {
  const dir = join(runDir, "checkpoints");
  if (!existsSync(dir)) return "";
  const steps = readdirSync(dir)
    .filter((n) => /^step-\d+$/.test(n) && existsSync(join(dir, n, "trainer_state.json")))
    .sort();
  return steps.length ? join(dir, steps[steps.length - 1]!) : "";
}
