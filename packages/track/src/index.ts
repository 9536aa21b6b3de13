// Experiment trackers, opt-in by a run's `track` list, each through its own client: TensorBoard
// event files (tensorboard.ts), an MLflow tracking server's REST API (mlflow.ts), and wandb's
// Python client behind a line-JSON bridge (wandb_bridge.py; offline unless WANDB_MODE says
// otherwise). What a run logs: its config as params, every logged step's metrics, its files as
// artifacts at the end, and how it ended. A tracker that fails warns once and is dropped for the
// rest of the run; the run goes on.
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { EventWriter } from "./tensorboard.ts";
import { MlflowClient, type MlflowRun } from "./mlflow.ts";

export { EventWriter } from "./tensorboard.ts";
export { MlflowClient, MlflowError } from "./mlflow.ts";

export type TrackerName = "tensorboard" | "mlflow" | "wandb";

export interface TrackOptions {
  track: TrackerName[];
  tracking: { mlflow_uri?: string; experiment?: string; tensorboard_dir?: string; wandb_dir?: string };
  runId: string;
  name: string;
  runDir: string;
  /** The resolved config: params (flattened, `optim.lr`), and TensorBoard's config text. */
  config: unknown;
  warn?: (line: string) => void;
  /** The Python that has wandb (default $LORALAB_PYTHON, else python3). */
  python?: string;
}

export interface Trackers {
  /** One step's metrics (`train/loss`, `val/loss`, …). */
  log(step: number, values: Record<string, number>): void;
  /** Upload the artifacts (files or directories), record how the run ended, close. */
  finish(status: "completed" | "cancelled" | "failed", artifacts: string[]): Promise<void>;
}

interface Backend {
  log(step: number, values: Record<string, number>): void | Promise<void>;
  finish(status: "completed" | "cancelled" | "failed", artifacts: string[]): Promise<void>;
}

/** The trackers' state in the run directory (`trackers.json`): a resumed run logs to the same
 *  MLflow run and wandb id. */
const STATE_FILE = "trackers.json";
type State = { mlflow?: { uri: string; run_id: string; experiment_id: string; artifact_uri: string } };

export async function openTrackers(o: TrackOptions): Promise<Trackers> {
  const warn = o.warn ?? ((l: string) => console.error(`loralab: warning: ${l}`));
  const statePath = join(o.runDir, STATE_FILE);
  let state: State = {};
  try {
    if (existsSync(statePath)) state = JSON.parse(readFileSync(statePath, "utf8")) as State;
  } catch (e) {
    warn(`${statePath}: unreadable (${(e as Error).message}): a resumed run's trackers start new runs`);
  }
  const save = () => {
    writeFileSync(`${statePath}.tmp`, JSON.stringify(state, null, 2));
    renameSync(`${statePath}.tmp`, statePath);
  };
  // the config as the trackers show it: no credentials in a tracking server's URI
  o = { ...o, config: withoutCredentials(o.config) };
  const backends = new Map<TrackerName, Backend>();
  const say = (name: TrackerName, e: unknown) =>
    warn(
      `tracker ${name}: ${(e as Error).message.split("\n")[0]}: not logging to it for the rest of this run (the run goes on)`,
    );
  const drop = (name: TrackerName, e: unknown) => backends.delete(name) && say(name, e);
  for (const name of new Set(o.track)) {
    try {
      const b =
        name === "tensorboard" ? tensorboard(o) : name === "mlflow" ? await mlflow(o, state, save) : await wandb(o);
      backends.set(name, b);
    } catch (e) {
      say(name, e);
    }
  }
  return {
    log(step, values) {
      for (const [name, b] of backends) {
        try {
          const r = b.log(step, values);
          if (r) r.catch((e) => drop(name, e));
        } catch (e) {
          drop(name, e);
        }
      }
    },
    async finish(status, artifacts) {
      const files = artifacts.filter((a) => a && existsSync(a));
      for (const [name, b] of [...backends]) await b.finish(status, files).catch((e) => drop(name, e));
    },
  };
}

/** The checkpoint a resumed run resumes from (its config's train.resume_from), or "": the
 *  trackers' runs then continue (MLflow's, wandb's, TensorBoard's file). */
const resumeFrom = (o: TrackOptions) =>
  (o.config as { train?: { resume_from?: string } } | null)?.train?.resume_from ?? "";

/** A URI with its user and password taken out (`http://u:p@host` → `http://host`). */
export function redactUri(uri: string): string {
  try {
    const u = new URL(uri);
    if (!u.username && !u.password) return uri;
    u.username = "";
    u.password = "";
    return u.href.replace(/\/$/, uri.endsWith("/") ? "/" : "");
  } catch {
    return uri;
  }
}

function withoutCredentials(config: unknown): unknown {
  const c = config as { tracking?: { mlflow_uri?: string } } | null;
  const uri = c?.tracking?.mlflow_uri;
  if (!uri) return config;
  return { ...c, tracking: { ...c!.tracking, mlflow_uri: redactUri(uri) } };
}

/** The config as flat `a.b.c` → string params (arrays as JSON). */
export function flatParams(v: unknown, prefix = ""): [string, string][] {
  if (v && typeof v === "object" && !Array.isArray(v))
    return Object.entries(v as Record<string, unknown>).flatMap(([k, x]) =>
      flatParams(x, prefix ? `${prefix}.${k}` : k),
    );
  const s = typeof v === "string" ? v : JSON.stringify(v ?? null);
  // MLflow's limit on a param's value
  return [[prefix, s.length > 6000 ? `${s.slice(0, 5999)}…` : s]];
}

function tensorboard(o: TrackOptions): Backend {
  const dir = o.tracking.tensorboard_dir ? join(o.tracking.tensorboard_dir, o.runId) : join(o.runDir, "tensorboard");
  const w = new EventWriter(dir);
  // resumed from step-N: the reader forgets what came after N the first time
  const from = /step-(\d+)\/?$/.exec(resumeFrom(o))?.[1];
  if (from !== undefined) w.restart(Number(from) + 1);
  w.text(0, "config", `\`\`\`json\n${JSON.stringify(o.config, null, 2)}\n\`\`\``);
  return {
    log: (step, values) => w.scalars(step, Object.entries(values)),
    finish: async (status) => w.text(0, "status", status),
  };
}

async function mlflow(o: TrackOptions, state: State, save: () => void): Promise<Backend> {
  const uri = o.tracking.mlflow_uri || process.env.MLFLOW_TRACKING_URI || "";
  if (!/^https?:\/\//.test(uri))
    throw new Error(
      `no tracking server (hint: set tracking.mlflow_uri or MLFLOW_TRACKING_URI to the http(s)://host:port \`mlflow server\` prints)`,
    );
  const c = new MlflowClient(uri);
  let run: MlflowRun;
  const had = state.mlflow;
  if (resumeFrom(o) && had && had.uri === uri) {
    run = { runId: had.run_id, experimentId: had.experiment_id, artifactUri: had.artifact_uri };
    await c.resumeRun(run.runId);
  } else {
    const exp = await c.experiment(o.tracking.experiment || "loralab");
    run = await c.createRun(exp, o.name, { "loralab.run_id": o.runId, "mlflow.source.name": "loralab" });
    const made = run.runId;
    await c.logBatch(made, { params: flatParams(o.config) }).catch(async (e) => {
      await c.endRun(made, "FAILED").catch(() => {});
      throw e;
    });
    state.mlflow = { uri, run_id: run.runId, experiment_id: run.experimentId, artifact_uri: run.artifactUri };
    save();
  }
  // metrics in batches, in order, one request in flight: what comes meanwhile waits for the
  // next, so a slow server gets fewer, larger batches rather than a growing queue
  let pending: { key: string; value: number; step: number; timestamp: number }[] = [];
  let inFlight: Promise<void> | null = null;
  let failed: unknown = null;
  const flush = (): Promise<void> => {
    if (inFlight || failed || !pending.length) return inFlight ?? Promise.resolve();
    const batch = pending;
    pending = [];
    inFlight = c
      .logBatch(run.runId, { metrics: batch })
      .catch((e) => {
        failed = e;
      })
      .finally(() => {
        inFlight = null;
      });
    return inFlight;
  };
  const timer = setInterval(flush, 2000);
  (timer as { unref?: () => void }).unref?.();
  return {
    log(step, values) {
      if (failed) throw failed;
      const t = Date.now();
      for (const [key, value] of Object.entries(values)) pending.push({ key, value, step, timestamp: t });
      if (pending.length >= 1000) void flush();
    },
    async finish(status, artifacts) {
      clearInterval(timer);
      while (inFlight || (pending.length && !failed)) await flush();
      if (failed) throw failed;
      for (const a of artifacts) await c.logArtifacts(run, a, a.split("/").pop()!);
      await c.endRun(run.runId, status === "completed" ? "FINISHED" : status === "cancelled" ? "KILLED" : "FAILED");
    },
  };
}

async function wandb(o: TrackOptions): Promise<Backend> {
  const python = o.python ?? process.env.LORALAB_PYTHON ?? "python3";
  const p = Bun.spawn([python, join(import.meta.dir, "wandb_bridge.py")], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "ignore",
    env: process.env,
  });
  const lines = (async function* () {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of p.stdout as ReadableStream<Uint8Array>) {
      buf += dec.decode(chunk);
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        yield buf.slice(0, i);
        buf = buf.slice(i + 1);
      }
    }
  })();
  // a bridge that died or stalls must not take the run with it: a failed write drops the tracker
  let broken: unknown = null;
  const send = (req: unknown) => {
    if (broken) throw broken;
    try {
      p.stdin.write(
        `${JSON.stringify(req, (_, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))}\n`,
      );
      const f = p.stdin.flush();
      if (f instanceof Promise)
        f.catch((e) => {
          broken = e;
        });
    } catch (e) {
      broken = e;
      throw e;
    }
  };
  const reply = async (what: string) => {
    const timeout = new Promise<never>((_, no) =>
      setTimeout(() => no(new Error(`${what}: no answer in 120 s`)), 120_000).unref?.(),
    );
    const next = await Promise.race([lines.next(), timeout]);
    if (next.done) throw new Error(`${what}: the wandb bridge (${python}) exited`);
    const r = JSON.parse(next.value) as { ok: boolean; missing?: boolean; error?: string; dir?: string };
    if (r.missing)
      throw new Error(
        `the wandb Python package is not importable by ${python} (hint: pip install wandb, or set LORALAB_PYTHON to a Python that has it)`,
      );
    if (!r.ok) throw new Error(`${what}: ${r.error}`);
    return r;
  };
  // wandb ids: letters, digits, - and _; a hash keeps different run ids apart
  const clean = o.runId.replace(/[^A-Za-z0-9_-]/g, "-");
  const id =
    clean === o.runId && clean.length <= 64
      ? clean
      : `${clean.slice(0, 51)}-${Bun.hash(o.runId).toString(16).slice(0, 12)}`;
  try {
    send({
      op: "init",
      project: o.tracking.experiment || "loralab",
      dir: o.tracking.wandb_dir || o.runDir,
      name: o.name,
      id,
      config: o.config,
      resumed: !!resumeFrom(o),
    });
    await reply("init");
  } catch (e) {
    p.kill();
    throw e;
  }
  return {
    log: (step, values) => send({ op: "log", step, data: values }),
    async finish(status, artifacts) {
      try {
        if (artifacts.length) {
          send({ op: "artifact", name: `${id}-files`, type: "model", paths: artifacts });
          await reply("artifact");
        }
        send({ op: "finish", exit_code: status === "completed" ? 0 : 1 });
        await reply("finish");
      } finally {
        try {
          p.stdin.end();
        } catch {}
        // a bridge that does not exit (an upload hung) is ended, not waited for
        const t = setTimeout(() => p.kill(), 60_000);
        await p.exited;
        clearTimeout(t);
      }
    },
  };
}
