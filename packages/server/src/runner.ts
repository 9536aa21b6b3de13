// The runner: runs are queued in the store and executed by this worker, at most
// `concurrency[device]` at a time on each device (the CPU, each GPU; default 1). Progress goes
// to the store (one metric row per step and name, upserted) and to subscribers (the SSE
// streams). A run the store still calls "running" when the runner starts belonged to a process
// that died: it is marked interrupted and queued again to resume from its last checkpoint, so no
// step beyond that checkpoint is lost and no metric row is duplicated.
import { randomBytes } from "node:crypto";
import { existsSync, renameSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import type { RunRow, Store } from "@loralab/db";
import {
  lastCheckpoint,
  resolveConfig,
  runDirectory,
  RunInterrupted,
  type ResolvedRunConfig,
  type RunConfig,
  type SidecarOptions,
  type TrainEvent,
} from "@loralab/engine";
import { type EvalPoint, scoreModel, type TaskName, trainWithEval } from "@loralab/eval";
import { analyzeRun } from "@loralab/spectrum";

export interface RunnerOptions {
  /** Where run directories go (each run's out_dir). */
  runsDir: string;
  /** Runs at once per device: `cpu`, `cuda` (each GPU) or `cuda:N` (that GPU); default 1 each. */
  concurrency?: Record<string, number>;
  /** How often the queue is polled when idle, ms. */
  pollMs?: number;
  /** Attempts a run gets: a run whose worker died (killed for memory, crashed) is queued again
   *  to resume from its last checkpoint until it has had this many (default 2), then it fails
   *  with the reason. The store's `attempts` counts them. */
  maxAttempts?: number;
  /** Where runs execute: in a worker process each (the sidecar; default), so one that dies takes
   *  only itself; `false` runs CPU runs in this process (tests of the in-process path only). */
  sidecar?: boolean | SidecarOptions;
}

export type RunEvent =
  | { type: "status"; run_id: string; status: string; error?: string | null }
  | {
      type: "progress";
      run_id: string;
      step: number;
      total_steps: number;
      loss: number;
      lr: number;
      grad_norm: number;
      tokens: number;
      tokens_per_s: number;
    }
  | { type: "checkpoint"; run_id: string; step: number; path: string }
  | { type: "validation"; run_id: string; step: number; val_loss: number; best: boolean }
  | { type: "eval"; run_id: string; results: unknown[] }
  /** A job on a finished run (`POST .../evaluate` or `.../analyze`): its progress and its end. */
  | {
      type: "job";
      run_id: string;
      job: "evaluate" | "analyze";
      state: "queued" | "running" | "done" | "failed";
      detail: string;
    }
  | { type: "spectra"; run_id: string; results: unknown[] };

/** The store's rows of one scored model (the base, a checkpoint, the final output). */
export function evalRows(p: EvalPoint, checkpoint: string) {
  const rows = Object.entries(p.tasks).flatMap(([task, ms]) =>
    Object.entries(ms).map(([metric, value]) => ({
      checkpoint,
      task,
      metric,
      value,
      stderr: null as number | null,
      n: p.docs[task] ?? 0,
    })),
  );
  if (p.forgetting !== null)
    rows.push({ checkpoint, task: "forgetting", metric: "score", value: p.forgetting, stderr: null, n: 0 });
  if (p.learning !== null)
    rows.push({ checkpoint, task: "learning", metric: "score", value: p.learning, stderr: null, n: 0 });
  return rows;
}

type Listener = (e: RunEvent) => void;

export function newRunId(): string {
  const t = new Date().toISOString().replace(/[-:T]/g, "").slice(0, 14);
  return `r${t}-${randomBytes(3).toString("hex")}`;
}

/** The device a run's `train.device` names, one pool per device: `cuda` is `cuda:0`, `cuda:01`
 * is `cuda:1`; anything else is its own pool (the engine refuses it at submit). */
export function devicePool(device: string): string {
  if (device === "cuda") return "cuda:0";
  const m = /^cuda:(\d+)$/.exec(device);
  return m ? `cuda:${Number(m[1])}` : device;
}

export class Runner {
  private listeners = new Map<string, Set<Listener>>();
  private active = new Map<string, AbortController>();
  private jobs = new Map<string, Promise<void>>();
  private jobTurn: Promise<void> = Promise.resolve();
  private stopping = false;
  private lastJob = new Map<string, Extract<RunEvent, { type: "job" }>>();
  private activeDevice = new Map<string, string>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private ticking = false;
  readonly runsDir: string;

  constructor(
    readonly store: Store,
    private readonly o: RunnerOptions,
  ) {
    this.runsDir = resolve(o.runsDir);
  }

  get maxAttempts(): number {
    return this.o.maxAttempts ?? 2;
  }

  /** Queue a run whose worker died again, to resume from its last checkpoint (what an attempt
   *  without one wrote is kept aside). */
  private async requeue(r: RunRow): Promise<void> {
    const ck = lastCheckpoint(r.runDir);
    const config = { ...(r.config as ResolvedRunConfig) };
    config.train = { ...config.train, resume_from: ck };
    if (!ck && existsSync(r.runDir)) renameSync(r.runDir, `${r.runDir}.attempt-${r.attempts}`);
    await this.store.updateRun(r.id, { status: "queued", config });
    this.emit({ type: "status", run_id: r.id, status: "queued" });
  }

  /** Recover what a dead process left running, then work the queue. */
  async start(): Promise<{ resumed: string[] }> {
    const resumed: string[] = [];
    for (const r of await this.store.listRuns({ status: ["running", "interrupted"] })) {
      if (this.active.has(r.id)) continue;
      if (r.attempts >= this.maxAttempts) {
        // it has taken its process down as often as it may: not again (no crash loop)
        const error = `interrupted in ${r.attempts} of ${this.maxAttempts} attempts, the retry budget: not queued again (hint: a run that dies with its process usually needs more memory than the machine has; lower train.micro_batch or data.seq_len, or set train.gradient_checkpointing = true, and submit it again)`;
        await this.store.updateRun(r.id, { status: "failed", error, finishedAt: new Date().toISOString() });
        this.emit({ type: "status", run_id: r.id, status: "failed", error });
        continue;
      }
      const ck = lastCheckpoint(r.runDir);
      const config = { ...(r.config as ResolvedRunConfig) };
      config.train = { ...config.train, resume_from: ck };
      // no checkpoint yet: the run starts over; what the dead attempt wrote is kept aside
      if (!ck && existsSync(r.runDir)) renameSync(r.runDir, `${r.runDir}.attempt-${r.attempts}`);
      await this.store.updateRun(r.id, { status: "interrupted", error: null });
      this.emit({ type: "status", run_id: r.id, status: "interrupted" });
      await this.store.updateRun(r.id, { status: "queued", config });
      resumed.push(r.id);
    }
    this.timer = setInterval(() => void this.tick(), this.o.pollMs ?? 250);
    void this.tick();
    return { resumed };
  }

  /** Stop taking new runs; with `cancel`, also stop the running ones (they checkpoint first). */
  async stop(cancel = false): Promise<void> {
    // queued jobs are dropped (told as failed); a running one is waited for by settled()
    this.stopping = true;
    clearInterval(this.timer);
    this.timer = undefined;
    if (cancel) for (const a of this.active.values()) a.abort();
    while (this.active.size) await Bun.sleep(20);
  }

  /** Validate (the engine's own resolution: ConfigError names the field) and queue a run. */
  async submit(config: RunConfig, device?: string, sweepId?: string): Promise<RunRow> {
    const id = newRunId();
    const resolved = resolveConfig({ ...config, run_id: id, out_dir: this.runsDir });
    device ??= resolved.train.device;
    const row = await this.store.createRun({
      id,
      name: resolved.name,
      method: resolved.method.kind,
      config: resolved as unknown as Record<string, unknown>,
      device,
      runDir: join(this.runsDir, id),
      sweepId: sweepId ?? null,
    });
    this.emit({ type: "status", run_id: id, status: "queued" });
    void this.tick();
    return row;
  }

  /** Cancel a queued or running run; false when it had already finished. */
  async cancel(id: string): Promise<boolean> {
    const a = this.active.get(id);
    if (a) {
      a.abort();
      return true;
    }
    const r = await this.store.getRun(id);
    if (!r || !["queued", "interrupted"].includes(r.status)) return false;
    await this.store.updateRun(id, { status: "cancelled", finishedAt: new Date().toISOString() });
    this.emit({ type: "status", run_id: id, status: "cancelled" });
    return true;
  }

  subscribe(id: string, fn: Listener): () => void {
    let set = this.listeners.get(id);
    if (!set) {
      set = new Set();
      this.listeners.set(id, set);
    }
    set.add(fn);
    return () => {
      set!.delete(fn);
      if (!set!.size) this.listeners.delete(id);
    };
  }

  /** Read what later stages wrote into a finished run's directory (eval.json, spectrum/) into the
   * store, and tell subscribers about the eval results. */
  async ingest(r: RunRow): Promise<void> {
    await this.store.ingestRunDir(r.runDir, r.device, r.id);
    this.emit({ type: "eval", run_id: r.id, results: await this.store.evalResults(r.id) });
  }

  isActive(id: string): boolean {
    return this.active.has(id) || this.jobs.has(id);
  }

  /** Score a finished run's final model (its last checkpoint when it has no output) on its
   *  `train.eval_tasks` (or `o.tasks`), with its own `train.eval_data`: the rows go under "job:final" (or "job:<checkpoint>"), replacing that key's earlier ones, apart
   *  from the scores taken while it trained; told to watchers as `job` and `eval` events. On the
   *  CPU. Jobs wait their turn, one at a time; false when the run already has one. */
  evaluate(r: RunRow, o: { tasks?: TaskName[]; limit?: number } = {}): boolean {
    return this.job(r, "evaluate", async () => {
      const rd = runDirectory(r.runDir);
      const last = rd.checkpoints[rd.checkpoints.length - 1];
      const model = rd.output || last?.path || "";
      if (!model) throw new Error(`run ${r.id} has no final model and no checkpoint to evaluate`);
      const run = r.config as unknown as ResolvedRunConfig;
      const p = await scoreModel(
        run,
        r.runDir,
        { step: rd.output ? (rd.total_steps ?? 0) : (last?.step ?? 0), tokens: 0, checkpoint: model },
        // on the CPU, in this process, as while it trained: a GPU here belongs to the device pools
        o,
      );
      const key = `job:${rd.output ? "final" : basename(model)}`;
      await this.store.clearEval(r.id, key);
      await this.store.recordEval(r.id, evalRows(p, key));
      this.emit({ type: "eval", run_id: r.id, results: await this.store.evalResults(r.id) });
      const f = p.forgetting === null ? "" : `forgetting ${p.forgetting.toFixed(4)}`;
      const l = p.learning === null ? "" : `learning ${p.learning.toFixed(4)}`;
      return [f, l].filter(Boolean).join(", ") || "scored";
    });
  }

  /** The spectrum of ΔW at each checkpoint of a finished run (spectrum/ in its directory, then
   *  the store), told to watchers as `job` and `spectra` events; false when it already has a job. */
  analyze(r: RunRow): boolean {
    return this.job(r, "analyze", async () => {
      const cks = await analyzeRun(r.runDir, {
        onCheckpoint: (name, i, n) =>
          this.emit({ type: "job", run_id: r.id, job: "analyze", state: "running", detail: `${name} (${i}/${n})` }),
      });
      await this.store.ingestRunDir(r.runDir, r.device, r.id);
      this.emit({ type: "spectra", run_id: r.id, results: await this.store.spectra(r.id) });
      return `${cks.length} checkpoint${cks.length === 1 ? "" : "s"} analysed`;
    });
  }

  /** A job on a finished run, queued behind the others (one runs at a time, in this process:
   *  several at once would share its CPU and memory with the training). */
  private job(r: RunRow, job: "evaluate" | "analyze", fn: () => Promise<string>): boolean {
    if (this.jobs.has(r.id) || this.active.has(r.id)) return false;
    this.emit({ type: "job", run_id: r.id, job, state: "queued", detail: "" });
    const p = this.jobTurn
      .then(() => {
        // the server is stopping: what has not started does not
        if (this.stopping) throw new Error("the server is stopping: not started");
        this.emit({ type: "job", run_id: r.id, job, state: "running", detail: "" });
        return fn();
      })
      .then(
        (detail) => ({ state: "done" as const, detail }),
        // the first line only, and not all of it: a data error may quote a record
        (e) => ({ state: "failed" as const, detail: (e as Error).message.split("\n")[0]!.slice(0, 300) }),
      )
      .then((end) => {
        // gone from the jobs before it is told: a watcher that hears the end sees the run idle
        this.jobs.delete(r.id);
        this.emit({ type: "job", run_id: r.id, job, ...end });
      });
    // a listener that throws fails this job's report, never the next job's turn
    this.jobTurn = p.catch(() => {});
    this.jobs.set(r.id, p);
    return true;
  }

  /** Until every evaluate/analyze job has ended (the server's close waits for them). */
  async settled(): Promise<void> {
    while (this.jobs.size) await Promise.allSettled([...this.jobs.values()]);
  }

  /** The run's job now, or its last one (what a stream opened late starts from). */
  jobState(id: string): Extract<RunEvent, { type: "job" }> | null {
    return this.lastJob.get(id) ?? null;
  }

  private emit(e: RunEvent) {
    if (e.type === "job") {
      if (this.lastJob.size > 10_000) this.lastJob.clear();
      this.lastJob.set(e.run_id, e);
    }
    for (const fn of this.listeners.get(e.run_id) ?? []) fn(e);
  }

  private async tick() {
    if (this.ticking || !this.timer) return;
    this.ticking = true;
    try {
      // one pool per device: cpu runs in-process, each GPU's runs each in their own sidecar process
      const pools = new Map<string, string[]>();
      for (const d of await this.store.queuedDevices()) {
        const p = devicePool(d);
        pools.set(p, [...(pools.get(p) ?? []), d]);
      }
      for (const [pool, names] of pools) {
        const limit = this.o.concurrency?.[pool] ?? this.o.concurrency?.[pool.replace(/:\d+$/, "")] ?? 1;
        const busy = [...this.activeDevice.values()].filter((d) => devicePool(d) === pool).length;
        for (const r of await this.store.claimQueued(names, limit - busy)) void this.execute(r);
      }
    } finally {
      this.ticking = false;
    }
  }

  private async execute(r: RunRow) {
    const abort = new AbortController();
    this.active.set(r.id, abort);
    this.activeDevice.set(r.id, r.device);
    this.emit({ type: "status", run_id: r.id, status: "running" });
    const config = r.config as unknown as RunConfig;
    let pending = Promise.resolve();
    const onEvent = (e: TrainEvent) => {
      if (e.type === "progress") {
        const rows = (["loss", "lr", "grad_norm", "tokens_per_s", "tokens"] as const).map((name) => ({
          step: e.step,
          name,
          value: e[name],
        }));
        // metric writes are serialised behind one another, never blocking the training thread
        pending = pending.then(() => this.store.recordMetrics(r.id, rows)).catch(() => {});
        this.emit({
          type: "progress",
          run_id: r.id,
          step: e.step,
          total_steps: e.total_steps,
          loss: e.loss,
          lr: e.lr,
          grad_norm: e.grad_norm,
          tokens: e.tokens,
          tokens_per_s: e.tokens_per_s,
        });
      } else if (e.type === "checkpoint") this.emit({ type: "checkpoint", run_id: r.id, step: e.step, path: e.path });
      else if (e.type === "validation") {
        const row = { step: e.step, name: "val_loss", value: e.val_loss };
        pending = pending.then(() => this.store.recordMetrics(r.id, [row])).catch(() => {});
        this.emit({ type: "validation", run_id: r.id, step: e.step, val_loss: e.val_loss, best: e.best });
      }
    };
    let status: "completed" | "cancelled" | "failed" | "interrupted" = "failed";
    let error: string | null = null;
    try {
      // train.eval_tasks scored while it trains: each result into the store, and to the watchers
      const s = await trainWithEval(config, {
        signal: abort.signal,
        onEvent,
        sidecar: this.o.sidecar ?? true,
        onEval: async (p) => {
          await this.store
            .recordEval(r.id, evalRows(p, p.checkpoint ? basename(p.checkpoint) : "base"))
            .catch(() => {});
          this.emit({ type: "eval", run_id: r.id, results: await this.store.evalResults(r.id).catch(() => []) });
        },
      });
      status = s.status;
    } catch (e) {
      error = (e as Error).message;
      // the worker died under it: queued again to resume from its last checkpoint, until the
      // retry budget is spent; this process stays up either way
      if (e instanceof RunInterrupted) {
        if (abort.signal.aborted) status = "cancelled";
        else if (r.attempts < this.maxAttempts) status = "interrupted";
        else
          error = `the worker process died in ${r.attempts} of ${this.maxAttempts} attempts, the retry budget: ${error} (hint: a run that dies with its process usually needs more memory than the machine has; lower train.micro_batch or data.seq_len, or set train.gradient_checkpointing = true)`;
      }
    }
    await pending;
    try {
      if (existsSync(join(r.runDir, "run.json"))) await this.store.ingestRunDir(r.runDir, r.device, r.id);
    } catch (e) {
      error ??= `ingesting the run directory: ${(e as Error).message}`;
    }
    await this.store.updateRun(r.id, { status, error, finishedAt: new Date().toISOString() });
    this.emit({ type: "status", run_id: r.id, status, error });
    if (status === "interrupted") await this.requeue(r);
    this.active.delete(r.id);
    this.activeDevice.delete(r.id);
    void this.tick();
  }
}
