// The training half of the library: typed config, train with progress and cancellation,
// held-out loss, merge, the run directory. Thin: the engine (crates/core) validates and works,
// reached through one `Engine` (engine.ts) in this process or in a worker process.
// `loralab` re-exports it with evaluation and analysis; `loralab/server`, `loralab/store` add the rest.
import { openTrackers, type Trackers } from "@loralab/track";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { DataError, engineReadable, type Mapping, normalize, RECIPES } from "@loralab/data";
import { HubError, pinnedOfCachePath, resolveData, resolveModel } from "@loralab/hub";
import type { SidecarOptions } from "@loralab/native/sidecar";
import type { RunConfig } from "./config.gen.ts";
import { prepareRecipe, tokenizerOf } from "./recipes.ts";
import type { ResolvedRunConfig } from "./protocol.gen.ts";
import { ConfigSyntaxError, readConfigFile } from "./configfile.ts";
import {
  ConfigError,
  type EngineEvent,
  EngineError,
  type Fields,
  openEngine,
  quick,
  type Reply,
  WorkerDied,
} from "./engine.ts";

export {
  Sidecar,
  SidecarCrashed,
  SidecarError,
  sidecarPath,
  type Ready,
  type SidecarOptions,
} from "@loralab/native/sidecar";
export {
  ConfigError,
  type Engine,
  type EngineEvent,
  EngineError,
  type EngineOptions,
  errorFrom,
  type Failure,
  type Fields,
  InProcessEngine,
  InternalError,
  maths,
  type Op,
  openEngine,
  OutOfMemoryError,
  PROTOCOL,
  ProtocolError,
  type Protocol,
  quick,
  type Reply,
  type RequestOptions,
  SidecarEngine,
  WorkerDied,
} from "./engine.ts";

export type { RunConfig } from "./config.gen.ts";
export { frontier, frontierGap, interpolate } from "./frontier.ts";
export { CONFIG_EXTENSIONS, ConfigSyntaxError, nearestName, parseConfigText, readConfigFile } from "./configfile.ts";

/** A config after `resolveConfig`: every field present, every default applied. */
export type { ResolvedRunConfig } from "./protocol.gen.ts";

// events and replies: generated from the engine's protocol schema (protocol.gen.ts)
export type TrainEvent = Extract<
  EngineEvent,
  { type: "prepared" | "start" | "progress" | "checkpoint" | "validation" }
>;
/** The held-out loss at a step (data.validation, every train.eval_every steps). */
export type ValidationEvent = Extract<TrainEvent, { type: "validation" }>;
export type StartEvent = Extract<TrainEvent, { type: "start" }>;
export type ProgressEvent = Extract<TrainEvent, { type: "progress" }>;
export type CheckpointEvent = Extract<TrainEvent, { type: "checkpoint" }>;
/** The prepare step's account of the data (also `data.json` in the run directory). */
export type PreparedEvent = Extract<TrainEvent, { type: "prepared" }>;
export type RunSummary = Reply<"train">;
export type RunDirectory = Reply<"run_directory">;
export type RunStatus = NonNullable<RunDirectory["status"]>;

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

/** Apply defaults and validate; throws ConfigError naming the field. */
export function resolveConfig(config: RunConfig): ResolvedRunConfig {
  return quick("resolve_config", { config });
}

/** The config's JSON Schema: every field with its default and the reason for it. */
export function configSchema(): Record<string, unknown> {
  return quick("config_schema", {}) as Record<string, unknown>;
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
  /** A tracker's one-line warning (default: stderr). */
  onWarning?: (line: string) => void;
  /** Log more metrics by step to the run's trackers (what the library scores while it trains). */
  onTrackers?: (log: (step: number, values: Record<string, number>) => void) => void;
  /** Awaited once the engine's run ends, before the trackers close (work still scoring it). */
  beforeFinish?: () => Promise<void>;
}

type DataConfig = NonNullable<RunConfig["data"]>;

/** Datasets the engine cannot read as they are (other formats, directories, recipes) become a
 *  normalised JSONL in the shard cache; the engine then prepares from it. */
export async function prepareData(
  data: DataConfig,
  signal?: AbortSignal,
  model?: NonNullable<RunConfig["model"]>,
): Promise<DataConfig> {
  const train = data.train ?? "";
  if (train.startsWith("recipe:")) return streamRecipe(train.slice("recipe:".length), data, model, signal);
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
      source: data.source || train,
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

/** `data.train = "recipe:NAME"`: the study's dataset streamed from the Hub (recipes.ts) into
 *  the JSONL the engine prepares from, within `data.max_tokens` / `data.max_records`. */
async function streamRecipe(
  name: string,
  data: DataConfig,
  model: NonNullable<RunConfig["model"]> | undefined,
  signal?: AbortSignal,
): Promise<DataConfig> {
  if (!model?.path && !model?.tokenizer)
    throw new ConfigError(
      `data.train recipe:${name}: the budget is counted in the model's tokens, and no model is given (hint: set model.path)`,
      "data.train",
    );
  const tok = tokenizerOf(model);
  try {
    const r = await prepareRecipe(name, {
      cacheDir: data.cache_dir ?? ".cache/loralab/shards",
      maxTokens: data.max_tokens ?? 0,
      maxRecords: data.max_records ?? 0,
      count: (texts) => quick("token_counts", { tokenizer: tok.path, texts }),
      tokenizerKey: tok.key,
      signal,
    });
    return {
      ...data,
      train: r.output,
      source: r.pinned,
      recipe: "",
      format: r.mapping.format,
      text_field: "text",
      prompt_field: "prompt",
      response_field: "response",
      messages_field: "messages",
    };
  } catch (e) {
    if (e instanceof HubError) throw new ConfigError(e.message, "data.train");
    if (e instanceof DataError && /unknown recipe/.test(e.message)) throw new ConfigError(e.message, "data.train");
    throw new EngineError((e as Error).message);
  }
}

/** A model input as the engine reads it: a local path as it is, a Hub id (`org/name[@rev]`,
 *  `hf://org/name[@rev]/FILE.gguf`) fetched into the Hugging Face cache and named by its
 *  snapshot; `pinned` is `org/name@sha` for a Hub id, else "". A Hub failure is a ConfigError
 *  on `field`, with its hint. */
export async function resolveModelInput(spec: string, field: string): Promise<{ path: string; pinned: string }> {
  try {
    return await resolveModel(spec);
  } catch (e) {
    if (e instanceof HubError) throw new ConfigError(e.message, field);
    throw e;
  }
}

/** `model.path` and `data.train` given as Hub references, made local (the commit recorded in
 *  `model.source` / `data.source`, and so in run.json). */
async function resolveHubInputs(config: RunConfig): Promise<RunConfig> {
  const path = config.model?.path ?? "";
  const train = config.data?.train ?? "";
  let out = config;
  if (path) {
    // the source is what the path is, never a value left over from another config
    const m = await resolveModelInput(path, "model.path");
    out = { ...out, model: { ...out.model, path: m.path, source: m.pinned || pinnedOfCachePath(m.path) } };
  }
  if (train.startsWith("hf://")) {
    try {
      const d = await resolveData(train);
      out = { ...out, data: { ...out.data, train: d.path, source: d.pinned } };
    } catch (e) {
      if (e instanceof HubError) throw new ConfigError(e.message, "data.train");
      throw e;
    }
  }
  return out;
}

/** Train one run: in this process on the CPU, in a worker process for CUDA (or when
 *  `opts.sidecar`). Resolves with the run summary. */
export async function train(config: RunConfig, opts: TrainOptions = {}): Promise<RunSummary> {
  // a cancel while the data is being prepared (a large dataset normalised to JSONL) ends it there
  const cancelled = () => cancelledBeforeSteps(config, join(config.out_dir ?? "runs", config.run_id ?? ""));
  if (opts.signal?.aborted) return cancelled();
  config = await resolveHubInputs(config);
  if (config.data) {
    try {
      config = { ...config, data: await prepareData(config.data, opts.signal, config.model) };
      const v = config.data?.validation ?? "";
      if (v) {
        // held-out records in any format the library reads, as the training set's are
        const held = await prepareData(
          { ...config.data, train: v, source: "", max_records: 0, max_tokens: 0 },
          opts.signal,
        );
        config = { ...config, data: { ...config.data, validation: held.train ?? v } };
      }
    } catch (e) {
      if (opts.signal?.aborted) return cancelled();
      throw e;
    }
  }
  if (opts.signal?.aborted) return cancelled();
  // resolved here, so the run directory is known even if the worker dies before saying it
  const resolved = resolveConfig(config);
  const runDir = join(resolved.out_dir, resolved.run_id);
  const engine = await openEngine({ device: resolved.train.device, sidecar: opts.sidecar });
  // a cancel once steps run stops after the current one and checkpoints; before the first step
  // (loading, preparing the data) there is nothing to keep, so the request is interrupted at once
  let stepping = false;
  let interruptedBeforeSteps = false;
  const stop = new AbortController();
  const onAbort = () => {
    if (stepping) return stop.abort();
    interruptedBeforeSteps = true;
    engine.interrupt();
  };
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  // the trackers the config names, opened once the engine has taken the run directory (its
  // "start"): a run it refuses (one already there, one another process trains) touches none.
  // Each warns once and drops out if it fails; the run goes on.
  let trackersP: Promise<Trackers> | null = null;
  const openTracking = () => {
    trackersP = openTrackers({
      track: resolved.track,
      tracking: resolved.tracking,
      runId: resolved.run_id,
      name: resolved.name,
      runDir,
      config: resolved,
      warn: opts.onWarning,
    });
  };
  // in order, once they are open (a promise's callbacks run in the order they were added)
  const track = (step: number, values: Record<string, number>) => void trackersP?.then((t) => t.log(step, values));
  opts.onTrackers?.(track);
  const onEvent = (e: EngineEvent) => {
    const ev = e as TrainEvent;
    if (ev.type === "start") {
      stepping = true;
      if (resolved.track.length) openTracking();
    }
    opts.onEvent?.(ev);
    if (ev.type === "progress") {
      opts.onProgress?.(ev);
      if (loggedStep(ev, resolved.train.log_every))
        track(ev.step, {
          "train/loss": ev.loss,
          "train/lr": ev.lr,
          "train/grad_norm": ev.grad_norm,
          "train/tokens_per_s": ev.tokens_per_s,
          "train/tokens": ev.tokens,
        });
    }
    if (ev.type === "validation") track(ev.step, { "val/loss": ev.val_loss });
  };
  // how the trackers close: the output (adapter or model) or, stopped, the last checkpoint, and
  // the run's own files; a run that failed, with none
  let ended: { status: "completed" | "cancelled" | "failed"; files: string[] } = { status: "failed", files: [] };
  try {
    const summary = engine.request("train", { config: resolved }, { onEvent, signal: stop.signal });
    if (opts.signal?.aborted) onAbort();
    const s = await summary;
    await opts.beforeFinish?.();
    ended = {
      status: s.status === "completed" ? "completed" : "cancelled",
      files: [s.output || s.last_checkpoint, join(runDir, "config.json"), join(runDir, "metrics.jsonl")],
    };
    return s;
  } catch (e) {
    if (e instanceof WorkerDied && interruptedBeforeSteps) {
      quick("mark_interrupted", { run_dir: runDir, status: "cancelled", error: "" });
      return cancelledBeforeSteps(config, runDir);
    }
    if (e instanceof WorkerDied) {
      // run.json says "running" until its process says otherwise; a dead worker cannot, so this does
      quick("mark_interrupted", { run_dir: runDir, status: "interrupted", error: e.message });
      const ck = lastCheckpoint(runDir);
      const hint = ck ? `resume with --train.resume_from=${ck}` : "it had no checkpoint yet: run it again";
      throw new RunInterrupted(`run ${resolved.run_id} interrupted: ${e.message} (hint: ${hint})`, runDir, ck);
    }
    throw e;
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    // the engine (a GPU sidecar's memory) let go before the uploads
    await engine.close();
    await (await (trackersP as Promise<Trackers> | null))?.finish(ended.status, ended.files);
  }
}

/** Is this one of the steps metrics.jsonl has (every `train.log_every`, and the last)? What a
 *  watcher of the progress events keeps, to log what the run directory logs. */
export const loggedStep = (p: ProgressEvent, logEvery: number) =>
  p.step % Math.max(1, logEvery) === 0 || p.step === p.total_steps;

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
    best_checkpoint: "",
    stopped_early_at: null,
  };
}

export type EvalLossRequest = Omit<Fields<"eval_loss">, "data"> & { data: DataConfig };
export type EvalLoss = Reply<"eval_loss">;

/** Mean held-out next-token loss of a model (+ adapter) on a data file. */
export async function evalLoss(req: EvalLossRequest): Promise<EvalLoss> {
  const engine = await openEngine();
  try {
    return await engine.request("eval_loss", { ...req, data: await prepareData(req.data) });
  } finally {
    await engine.close();
  }
}

export interface MergeOptions {
  /** The written weights' dtype (the fold itself is f32). Default f32; anything else is a ConfigError on field `dtype`. */
  dtype?: "bf16" | "f16" | "f32";
}
/** What the base lacked, for the user (`notes`: e.g. no chat template, so the merged model has none). */
export type MergeResult = Reply<"merge">;

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
  base = (await resolveModelInput(base, "base")).path;
  adapter = (await resolveModelInput(adapter, "adapter")).path;
  const engine = await openEngine();
  try {
    return await engine.request("merge", { base, adapter, out, options: { dtype } });
  } finally {
    await engine.close();
  }
}

export interface ExportOptions {
  /** `hf`: a Hugging Face model directory; `gguf`: one llama.cpp file; `gguf-lora`: a LoRA
   *  adapter for `llama-cli --lora`; `vllm`: a PEFT adapter directory for vLLM. */
  format: "hf" | "gguf" | "gguf-lora" | "vllm";
  /** hf, vllm: bf16 | f16 | f32 (default f32, vllm bf16); gguf: f32 | f16 | bf16 | q8_0 (default
   *  f16); gguf-lora: f32 | f16 (default f16). */
  dtype?: string;
  /** The base an adapter applies to (path or Hub id); a run directory's own base by default. */
  base?: string;
  /** The base's Hub id to record in a vLLM adapter (`org/name[@sha]`); the base's pin by default. */
  baseSource?: string;
}
export type ExportResult = Reply<"export">;

/** Export a model or adapter for deployment. `src` is a run directory (its final output, and
 *  for an adapter the run's base), a model (HF directory, .gguf, Hub id) or a PEFT adapter
 *  directory. */
export async function exportModel(src: string, out: string, opts: ExportOptions): Promise<ExportResult> {
  let base = opts.base ?? "";
  let baseSource = opts.baseSource ?? "";
  // a model's own Hub id is its GGUF's source only when it is the Hub's model, unmodified
  let fromRun = false;
  if (existsSync(join(src, "run.json"))) {
    const rd = runDirectory(src);
    if (!rd.output)
      throw new ConfigError(
        `${src}: the run has no final output yet (status ${rd.status ?? "unknown"}) (hint: export a checkpoint directory under ${join(src, "checkpoints")} instead)`,
        "src",
      );
    const model = (rd.config?.model ?? {}) as { path?: string; source?: string };
    src = rd.output;
    fromRun = true;
    // an adapter applies to the run's base
    if (existsSync(join(src, "adapter_config.json"))) {
      if (!base) base = rd.base || model.path || "";
      if (!baseSource) baseSource = model.source ?? "";
    }
  }
  const resolved = await resolveModelInput(src, "src");
  src = resolved.path;
  // (an adapter's own pin is not its base's; a GGUF's is what its metadata says, in the engine)
  const isAdapter = existsSync(join(src, "adapter_config.json"));
  if (!base && !baseSource && !fromRun && !isAdapter && !src.endsWith(".gguf"))
    baseSource = resolved.pinned || pinnedOfCachePath(src);
  if (base) {
    const b = await resolveModelInput(base, "base");
    base = b.path;
    if (!baseSource) baseSource = b.pinned || pinnedOfCachePath(b.path);
  }
  const engine = await openEngine();
  try {
    return await engine.request("export", {
      src,
      out,
      options: { format: opts.format, dtype: opts.dtype ?? "", base, base_source: baseSource },
    });
  } finally {
    await engine.close();
  }
}

/** A run directory as the engine reads it: run.json, config.json, complete checkpoints by step,
 *  the last of them, the final output (docs/run-directory.md; the layout lives in the engine). */
export function runDirectory(runDir: string): RunDirectory {
  return quick("run_directory", { run_dir: runDir });
}

/** The last checkpoint of a run directory (by step; one with its trainer state), or "" when it has none. */
export function lastCheckpoint(runDir: string): string {
  return runDirectory(runDir).last_checkpoint;
}
