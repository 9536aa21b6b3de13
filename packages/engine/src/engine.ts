// One TypeScript face of the engine's protocol (loralab_core::api): an `Engine` sends typed
// requests and gets typed replies, events and errors, whether the engine runs in this process
// (the napi addon) or in a worker process (the sidecar). Both speak the same lines; which one
// a job uses is decided here, in `openEngine`, and nowhere else.
import * as native from "@loralab/native";
import { Sidecar, SidecarCrashed, SidecarError, type SidecarOptions, sidecarPath } from "@loralab/native/sidecar";
import type { Protocol } from "./protocol.gen.ts";

export type { Protocol } from "./protocol.gen.ts";
/** The protocol version this package speaks (the engine's `api::PROTOCOL`). */
export const PROTOCOL = 2;

export type Op = keyof Protocol["requests"];
export type Fields<O extends Op> = Protocol["requests"][O];
export type Reply<O extends Op> = Protocol["replies"][O];
export type EngineEvent = Protocol["event"];
export type Failure = Protocol["failure"];

// ------------------------------------------------------------------ errors

/** Any engine failure (data, checkpoint, non-finite loss...); `hint` is what to do about it. */
export class EngineError extends Error {
  override name = "EngineError";
  hint = "";
}

/** A request or config the engine refused before doing any work; `field` names the offending key. */
export class ConfigError extends Error {
  override name = "ConfigError";
  hint = "";
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** The device ran out of memory; `config` is the run config that asked for too much. */
export class OutOfMemoryError extends EngineError {
  override name = "OutOfMemoryError";
  constructor(
    message: string,
    readonly config: unknown,
  ) {
    super(message);
  }
}

/** The worker process died during the request (a crash, the OOM killer, a kill). */
export class WorkerDied extends EngineError {
  override name = "WorkerDied";
}

/** A panic in the engine: a loralab bug. */
export class InternalError extends EngineError {
  override name = "InternalError";
}

/** A request this protocol does not speak (a bug in the caller, or mismatched builds). */
export class ProtocolError extends EngineError {
  override name = "ProtocolError";
}

/** The typed error for a failure, built from its fields (never from its message). */
export function errorFrom(f: Failure): Error {
  let e: EngineError | ConfigError;
  switch (f.code) {
    case "config":
      e = new ConfigError(f.message, f.field ?? "");
      break;
    case "oom":
      e = new OutOfMemoryError(f.message, f.config);
      break;
    case "interrupted":
      e = new WorkerDied(f.message);
      break;
    case "internal":
      e = new InternalError(f.message);
      break;
    case "protocol":
      e = new ProtocolError(f.message);
      break;
    default:
      e = new EngineError(f.message);
  }
  e.hint = f.hint ?? "";
  return e;
}

type Line = { id?: unknown; event?: string; data?: unknown; error?: Failure };

function unwrap(text: string): unknown {
  const line = JSON.parse(text) as Line;
  if (line.event === "error") throw errorFrom(line.error ?? { code: "protocol", message: "an error without a body" });
  return line.data;
}

// ------------------------------------------------------------------ the interface

export interface RequestOptions {
  /** Progress events (train: prepared, start, progress, checkpoint; analyze: matrix). */
  onEvent?: (e: EngineEvent) => void;
  /** Aborting asks the request to stop (a train: after its current step, with a checkpoint). */
  signal?: AbortSignal;
}

export interface Engine {
  readonly transport: "in-process" | "sidecar";
  /** One request; resolves with its reply, rejects with ConfigError, OutOfMemoryError,
   *  WorkerDied, InternalError, ProtocolError or EngineError. */
  request<O extends Op>(op: O, fields: Fields<O>, opts?: RequestOptions): Promise<Reply<O>>;
  /** Stop whatever runs now, losing its work (before a train's first step there is nothing to
   *  keep): the sidecar's process is killed (its requests fail with WorkerDied); in process, a
   *  running request is asked to stop. */
  interrupt(): void;
  /** Release the engine (the sidecar: a clean shutdown; in process: it unloads the models it loaded). */
  close(): Promise<void>;
}

// the addon's session is the whole process's: ids unique across every copy of this module
const idPrefix = `in-process-${crypto.randomUUID().slice(0, 8)}`;
let nextId = 1;

/** The engine in this process: every request off the JS thread (the addon's `call`). */
export class InProcessEngine implements Engine {
  readonly transport = "in-process";
  private running = new Set<string>();
  /** Models this engine loaded and has not unloaded: `close()` unloads them. */
  private handles = new Set<string>();

  async request<O extends Op>(op: O, fields: Fields<O>, opts: RequestOptions = {}): Promise<Reply<O>> {
    const id = `${idPrefix}-${nextId++}`;
    let last: (line: string) => void = () => {};
    const final = new Promise<string>((resolve) => {
      last = resolve;
    });
    // events and the final line come through one callback, in order
    const onLine = (l: string) => {
      const parsed = JSON.parse(l) as Line;
      if (parsed.event === "progress") opts.onEvent?.(parsed.data as EngineEvent);
      else last(l);
    };
    const line = JSON.stringify({ ...fields, v: PROTOCOL, id, op });
    const task = native.call(line, onLine); // accepted (and cancellable) from here
    this.running.add(id);
    const onAbort = () => cancel(id);
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const [answer] = await Promise.all([final, task]);
      const reply = unwrap(answer) as Reply<O>;
      if (op === "load") this.handles.add((reply as Reply<"load">).engine);
      if (op === "unload") this.handles.delete((fields as Fields<"unload">).engine);
      return reply;
    } finally {
      this.running.delete(id);
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  interrupt(): void {
    for (const id of this.running) cancel(id);
  }

  async close(): Promise<void> {
    for (const engine of this.handles) quick("unload", { engine });
    this.handles.clear();
  }
}

/** The engine in a worker process (loralab-sidecar): requests run there in arrival order. */
export class SidecarEngine implements Engine {
  readonly transport = "sidecar";
  private constructor(readonly sidecar: Sidecar) {}

  static async start(o: SidecarOptions & { device?: string } = {}): Promise<SidecarEngine> {
    try {
      return new SidecarEngine(await Sidecar.start({ ...o, path: o.path ?? sidecarPath(o.device ?? "cuda") }));
    } catch (e) {
      throw new WorkerDied((e as Error).message);
    }
  }

  async request<O extends Op>(op: O, fields: Fields<O>, opts: RequestOptions = {}): Promise<Reply<O>> {
    const { id, result } = this.sidecar.request<Reply<O>>(op, fields as Record<string, unknown>, (data) =>
      opts.onEvent?.(data as EngineEvent),
    );
    const onAbort = () => this.sidecar.cancel(id);
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await result;
    } catch (e) {
      if (e instanceof SidecarError) {
        const { message, code, field, hint, config } = e;
        throw errorFrom({ code: code as Failure["code"], message, field, hint, config: config as Failure["config"] });
      }
      if (e instanceof SidecarCrashed) throw errorFrom({ code: "interrupted", message: e.message });
      throw e;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  interrupt(): void {
    this.sidecar.kill();
  }

  close(): Promise<void> {
    return this.sidecar.shutdown();
  }
}

export interface EngineOptions {
  /** cpu, cuda or cuda:N. A CUDA device always gets a sidecar (Bun never loads CUDA). */
  device?: string;
  /** Run in a sidecar process even on the CPU (isolation: a crash cannot take this process down). */
  sidecar?: boolean | SidecarOptions;
}

/** The one place that chooses a transport. */
export async function openEngine(o: EngineOptions = {}): Promise<Engine> {
  const device = o.device ?? "cpu";
  if (!o.sidecar && device === "cpu") return new InProcessEngine();
  return SidecarEngine.start({ ...(typeof o.sidecar === "object" ? o.sidecar : {}), device });
}

// ------------------------------------------------------------------ quick requests

/** A quick request (config, schema, maths, the run directory, cancel) answered on this
 *  thread by the in-process engine. */
export function quick<O extends Op>(op: O, fields: Fields<O>): Reply<O> {
  return unwrap(
    native.callSync(JSON.stringify({ ...fields, v: PROTOCOL, id: `${idPrefix}-${nextId++}`, op })),
  ) as Reply<O>;
}

function cancel(target: string): void {
  quick("cancel", { target });
}

// JSON has no NaN or ±∞: the maths' numbers travel as numbers or as "NaN", "Infinity",
// "-Infinity" (api::nonfinite), both ways
type Num = number | "NaN" | "Infinity" | "-Infinity";
const out = (x: number): Num => (Number.isFinite(x) ? x : (String(x) as Num));
const outs = (xs: ArrayLike<number>): Num[] => Array.from(xs, out);
const opt = (x: number | null | undefined): Num | null => (x == null ? null : out(x));
const back = (x: Num): number => (typeof x === "string" ? Number(x) : x);

/** The analysis maths the report shares with its WebAssembly build (loralab-maths). */
export const maths = {
  passAtK: (n: number, c: number, k: number): number => back(quick("pass_at_k", { n, c, k })),
  paretoFrontier: (x: number[], y: number[]): number[] => quick("pareto_frontier", { x: outs(x), y: outs(y) }),
  rankAt: (sigma: number[], threshold: number, totalSq?: number | null): number | null =>
    quick("rank_at", { sigma: outs(sigma), threshold: out(threshold), total_sq: opt(totalSq) }) ?? null,
  explainedVariance: (sigma: number[], totalSq?: number | null): number[] =>
    quick("explained_variance", { sigma: outs(sigma), total_sq: opt(totalSq) }).map(back),
  effectiveRank: (sigma: number[]): number => back(quick("effective_rank", { sigma: outs(sigma) })),
  stableRank: (sigma: number[]): number => back(quick("stable_rank", { sigma: outs(sigma) })),
  singularValues: (a: number[], m: number, n: number): number[] =>
    quick("singular_values", { a: outs(a), m, n }).map(back),
};
