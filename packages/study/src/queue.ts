// Sweeps on a real job queue: pg-boss on the Postgres store. `enqueueSweep` sends one job per
// cell (its singletonKey the cell's deterministic run id, in a `stately` queue, so a second
// enqueue of the same sweep adds nothing); `runWorker` claims one job per device, trains it
// (resuming from its last checkpoint), and heartbeats while it does: a worker that dies loses
// its job after `heartbeatSeconds`, and pg-boss retries it on another worker, which resumes the
// run from the checkpoint on the shared runs directory. A cell that fails `retryLimit` + 1
// times lands in the dead-letter queue with its error, and the sweep goes on.
//
// A study's sweep (a spec with an `eval` section) has point jobs too, on the same queue, ahead
// of training (priority 1): the base model's, sent with the cells, and one per checkpoint, sent
// by the worker that trained the cell. They evaluate and analyse where the devices are, and
// their results (the points) are the jobs' outputs, so the report is drawn from the queue by
// whoever waits for the sweep, on any host. The queue does the scheduling; this file only
// says what a job is.
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { resolve } from "node:path";
import { openStore, type Store } from "@loralab/db";
import { ConfigError, Sidecar, sidecarPath } from "@loralab/engine";
import { type Job, type JobWithMetadata, PgBoss } from "pg-boss";
import type { Point } from "./points.ts";
import { canonical } from "./spec.ts";
import { evalKey, scoreBase, scoreCheckpoint, type StudySpec } from "./study.ts";
import {
  type Cell,
  type Checkpoint,
  cellPlan,
  cellRunId,
  cells,
  DriftError,
  type SweepSpec,
  sweepCell,
} from "./sweep.ts";

export const CELL_QUEUE = "loralab_cells";
/** pg-boss's schema (its default) in the store's database. */
const SCHEMA = "pgboss";
export const DEAD_QUEUE = "loralab_cells_dead";

/** A cell to train. */
export interface CellJob {
  kind?: "cell";
  spec: SweepSpec;
  cell: string;
  runsDir: string;
}

/** A point to score: the base model (checkpoint null) or one checkpoint of a trained cell. */
export interface PointJob {
  kind: "point";
  spec: StudySpec;
  checkpoint: Checkpoint | null;
  /** Where it goes in the report: the cell's index in cells(spec), and the checkpoint's in its
   *  cell (the order an in-process sweep lists them in). */
  order: [number, number];
}

type SweepJob = CellJob | PointJob;

/** What a cell job returns: the checkpoints it had scored as point jobs (their keys follow from
 *  the spec), or its points, scored in the job (a worker with its own runs directory: no other
 *  host sees its checkpoints). */
interface CellOutput {
  sent?: { checkpoint: Checkpoint; order: [number, number] }[];
  points?: { order: [number, number]; point: Point }[];
}

const isStudy = (spec: SweepSpec): spec is StudySpec => (spec as StudySpec).eval !== undefined;
/** A point job's key: the sweep, what scores it (the eval section and the base model: an edited
 *  one is a new point, never the old one's result), and the checkpoint. */
const pointKey = (spec: StudySpec, ck: Checkpoint | null) =>
  `${spec.name}:point:${evalKey(spec)}:${ck ? `${ck.runId}@${ck.duration}` : "base"}`;

/** How long a job stays in the queue's tables: completed and dead ones for good (their outputs
 *  are the sweep's points, and its report is drawn from them), queued ones for a year. */
const RETENTION = { deleteAfterSeconds: 0, retentionSeconds: 365 * 24 * 3600 };

export interface QueueOptions {
  /** postgres://… of the store (the queue lives in its `pgboss` schema). */
  url: string;
  /** Retries of a failing or lost cell before it goes to the dead-letter queue (default 2). */
  retries?: number;
  /** A worker unheard of for this long loses its job (pg-boss's minimum, 10, by default). */
  heartbeatSeconds?: number;
  /** Seconds before a failed or lost cell is tried again, doubling each time (default 30: a
   *  dying worker's sidecar finishes its step and checkpoint first). */
  retryDelaySeconds?: number;
}

/** pg-boss started on the store's database, with the cell queue and its dead-letter queue. */
export async function openQueue(o: QueueOptions): Promise<PgBoss> {
  // a lost heartbeat is noticed within a supervise pass: every 5 s rather than pg-boss's 60
  const boss = new PgBoss({ connectionString: o.url, max: 4, superviseIntervalSeconds: 5, monitorIntervalSeconds: 5 });
  boss.on("error", (e) => console.error(`queue: ${(e as Error).message}`));
  await boss.start();
  // the dead-letter queue first: the cell queue names it
  await boss.createQueue(DEAD_QUEUE, RETENTION).catch(ignoreExists);
  await boss
    .createQueue(CELL_QUEUE, {
      policy: "stately",
      retryLimit: o.retries ?? 2,
      retryDelay: 1,
      heartbeatSeconds: o.heartbeatSeconds ?? 10,
      // pg-boss's longest: a cell active longer is expired and retried, and resumes from its
      // last checkpoint (a lost heartbeat ends it far sooner)
      expireInSeconds: 24 * 3600,
      deadLetter: DEAD_QUEUE,
      ...RETENTION,
    })
    .catch(ignoreExists);
  // queues made by an older loralab kept pg-boss's default (completed jobs deleted after 7 days),
  // and each job carries the deletion delay it was sent with: both set to keep
  for (const q of [DEAD_QUEUE, CELL_QUEUE]) await boss.updateQueue(q, RETENTION);
  await boss
    .getDb()
    .executeSql(
      `UPDATE ${SCHEMA}.job SET deletion_seconds = 0 WHERE name = ANY($1::text[]) AND deletion_seconds <> 0`,
      [[CELL_QUEUE, DEAD_QUEUE]],
    );
  return boss;
}

function ignoreExists(e: unknown): void {
  if (!/exists/i.test((e as Error).message)) throw e;
}

/** One job per cell; a cell already queued or running, or completed with its points known, is
 *  not sent again (a dead one is: enqueueing again retries it). A completed cell's point jobs
 *  missing from the queue are sent again. */
export async function enqueueSweep(
  spec: SweepSpec,
  runsDir: string,
  o: QueueOptions,
): Promise<{ sent: number; already: number; cells: number; drifted: string[] }> {
  const boss = await openQueue(o);
  try {
    let sent = 0;
    const drifted: string[] = [];
    const all = cells(spec);
    // the base's point first: a worker that polls mid-enqueue takes it before any cell
    if (isStudy(spec)) await sendPoint(boss, o, { kind: "point", spec, checkpoint: null, order: [-1, 0] });
    const { cellJobs } = await sweepJobs(spec, boss);
    for (const c of all) {
      const key = cellRunId(spec, c);
      const newest = cellJobs.get(key);
      const out = newest?.state === "completed" ? (newest.output as CellOutput | null) : null;
      if (out && (out.sent || out.points || !isStudy(spec))) {
        for (const x of out.sent ?? []) await sendPoint(boss, o, { kind: "point", spec: spec as StudySpec, ...x });
        continue;
      }
      const job: CellJob = { spec, cell: c.key, runsDir: resolve(runsDir) };
      // per job, not per queue: the queue keeps the options of whoever created it first
      const id = await boss.send(CELL_QUEUE, job, {
        singletonKey: key,
        retryLimit: o.retries ?? 2,
        retryDelay: o.retryDelaySeconds ?? 30,
        retryBackoff: true,
      });
      if (id) sent++;
      // already queued or running: by this spec, or by an edited one (that job trains the old);
      // jsonb reorders an object's keys: compared in a canonical form
      else if (newest && !ENDED.includes(newest.state) && canonical(newest.data.spec) !== canonical(spec))
        drifted.push(c.key);
    }
    return { sent, already: all.length - sent, cells: all.length, drifted };
  } finally {
    await boss.stop({ graceful: false });
  }
}

/** Send a point job unless one for the same point is queued, running or done (stately lets a
 *  second job in beside an active one, so the queue is asked first). Its key. */
async function sendPoint(boss: PgBoss, o: QueueOptions, job: PointJob): Promise<string> {
  const key = pointKey(job.spec, job.checkpoint);
  // a point whose duration the spec no longer lists (a duration dropped, the longest kept)
  if (job.checkpoint && !durationsOf(job.spec, job.checkpoint.cell).includes(job.checkpoint.duration)) return key;
  const had = await boss.findJobs(CELL_QUEUE, { key, limit: 1000 });
  if (had.some((j) => j.state !== "failed" && j.state !== "cancelled")) return key;
  await boss.send(CELL_QUEUE, job, {
    singletonKey: key,
    priority: 1,
    retryLimit: o.retries ?? 2,
    retryDelay: o.retryDelaySeconds ?? 30,
    retryBackoff: true,
  });
  return key;
}

export interface WorkerOptions extends QueueOptions {
  /** One slot per entry: "cpu", or a GPU index ("0", "1", …: of those this process sees, where
   *  CUDA_VISIBLE_DEVICES is set) trained and evaluated with CUDA_VISIBLE_DEVICES. */
  devices: string[];
  /** Where runs go on this host, if not the enqueuer's (then a lost cell resumes only here). */
  runsDir?: string;
  signal?: AbortSignal;
  log?: (line: string) => void;
  /** The breaker's first pause in seconds (default 60), doubling each time it trips again. */
  breakerPauseSeconds?: number;
}

/** Failures in a row that pause a worker's slot, and its longest pause in seconds. */
export const BREAKER_FAILURES = 3;
const BREAKER_MAX_PAUSE_S = 1800;

/** A failure that is the job's own, not the slot's: a spec the store's run drifted from, a
 *  cell the spec lacks, or a refused training setting (a rank the model cannot take). Not a
 *  model or data path, which may be this host's missing mount or network. */
function ownRefusal(e: unknown): boolean {
  if (e instanceof DriftError) return true;
  if (!(e instanceof ConfigError)) return false;
  return e.field === "cell" || (/^(method|optim|schedule|train)\./.test(e.field) && e.field !== "train.device");
}

/** Work cells until `signal` aborts: one per device at a time, each in a sidecar process. On
 *  the abort the slots stop claiming, and the jobs in hand go back to the queue as they were
 *  (no retry spent): a cell after its sidecar stopped at a step with a checkpoint, an
 *  evaluation (which cannot stop mid-way) at once. */
export async function runWorker(o: WorkerOptions): Promise<void> {
  const log = o.log ?? ((l: string) => console.log(l));
  const stop = o.signal ?? new AbortController().signal;
  const firstPause = o.breakerPauseSeconds ?? 60;
  // a GPU slot's device as this host names it (an inherited CUDA_VISIBLE_DEVICES maps it)
  const visible = o.devices.map((d) => (d === "cpu" ? null : hostGpu(d)));
  const store = await openStore({ url: o.url });
  const who = `${hostname()}:${process.pid}`;
  const boss = await openQueue(o).catch(async (e) => {
    await store.close();
    throw e;
  });
  // the jobs in hand (for the abort to put back), and the ones put back
  const inHand = new Map<string, { job: Job<SweepJob>; point: boolean; ended: Promise<unknown> }>();
  const putBack = new Set<string>();
  const timers = new Set<ReturnType<typeof setTimeout>>();
  /** A job in hand back in the queue as it was: one statement, fenced to this worker's claim
   *  (active, at this attempt), so it cannot touch another worker's. Its retry limit is raised
   *  by one for the attempt pg-boss counts at its next start: no retry spent. A late end of its
   *  handler is fenced out by pg-boss the same way (the claim is gone). */
  const giveBack = async (j: Job<SweepJob>): Promise<void> => {
    if (putBack.has(j.id)) return;
    putBack.add(j.id);
    try {
      await boss
        .getDb()
        .executeSql(
          `UPDATE ${SCHEMA}.job SET state = 'created', completed_on = NULL, retry_limit = retry_limit + 1 WHERE name = $1 AND id = $2 AND state = 'active' AND retry_count = $3`,
          [CELL_QUEUE, j.id, j.retryCount],
        );
    } catch (e) {
      // a job of the same key queued meanwhile (stately keeps one queued per key): that one runs it
      log(`worker ${who}: job ${j.id} not put back (${(e as Error).message.split("\n")[0]}); the queue retries it`);
    }
  };
  try {
    // a GPU slot whose sidecar has no CUDA, or cannot see its GPU, would fail every job it took
    for (const gpu of visible) if (gpu !== null) await preflightGpu(gpu);
    const withGpus = visible.some((g) => g !== null);
    for (const [slot, gpu] of visible.entries()) {
      // the slot's sidecars (training and evaluation) see only its GPU, as cuda:0
      const onDevice = gpu === null ? {} : { device: "cuda:0", env: { CUDA_VISIBLE_DEVICES: gpu } };
      const name = `worker ${who} slot ${slot} (${gpu === null ? "cpu" : `cuda:${gpu}`})`;
      const handle = async (job: Job<SweepJob>, signal: AbortSignal) => {
        const data = job.data;
        const attempt = job.retryCount + 1;
        const t0 = performance.now();
        const done = (what: string) =>
          log(`worker ${who} slot ${slot}: ${what} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        if (data.kind === "point") {
          const what = data.checkpoint ? `point ${data.checkpoint.runId} @ ${data.checkpoint.duration}` : "point base";
          log(`${name}: ${what} (attempt ${attempt})`);
          // eval on the slot's GPU (the sidecar); the analysis is CPU maths in this process
          const point = data.checkpoint
            ? await scoreCheckpoint(data.spec, checkpointHere(data.checkpoint), onDevice)
            : await scoreBase(data.spec, onDevice);
          done(what);
          return { order: data.order, point };
        }
        const { spec, cell, runsDir } = data;
        const all = cells(spec);
        const index = all.findIndex((x) => x.key === cell);
        const c = all[index];
        if (!c) throw new ConfigError(`sweep ${spec.name} has no cell ${cell}`, "cell");
        log(`${name}: ${cellRunId(spec, c)} (attempt ${attempt})`);
        let cks: Checkpoint[];
        try {
          cks = await trainJob(spec, c, store, o.runsDir ?? runsDir, gpu, signal);
        } catch (e) {
          // the queue retries it (or, at the last attempt, sends it to the dead-letter queue)
          if (!stop.aborted)
            log(`worker ${who} slot ${slot}: ${cellRunId(spec, c)} failed: ${(e as Error).message.split("\n")[0]}`);
          throw e;
        }
        done(cellRunId(spec, c));
        const out: CellOutput = {};
        if (!isStudy(spec)) return out;
        // checkpoints on this host only: scored here, in the job; on shared storage: point jobs
        if (o.runsDir && resolve(o.runsDir) !== resolve(runsDir)) {
          out.points = [];
          for (const [k, ck] of cks.entries())
            out.points.push({ order: [index, k], point: await scoreCheckpoint(spec, ck, onDevice) });
        } else {
          out.sent = cks.map((ck, k) => ({ checkpoint: ck, order: [index, k] as [number, number] }));
          for (const x of out.sent) await sendPoint(boss, o, { kind: "point", spec, ...x });
        }
        return out;
      };
      // a breaker: a slot that fails BREAKER_FAILURES jobs in a row (a broken device, a full
      // disk) stops taking jobs for a while, doubling each time it trips again, so it cannot
      // spend every cell's retries while other workers could train them; a success resets it.
      // A job refused for its own config (ConfigError) says nothing of the slot: not counted.
      let failures = 0;
      let pause = firstPause;
      const start = async (): Promise<void> => {
        if (stop.aborted) return;
        const id: string = await boss.work<SweepJob>(
          CELL_QUEUE,
          // a CPU slot beside GPU ones trains; the evaluations (priority 1) wait for a GPU
          { batchSize: 1, pollingIntervalSeconds: 0.5, ...(withGpus && gpu === null ? { maxPriority: 0 } : {}) },
          async ([job]) => {
            const j = job!;
            // claimed as the worker stops (a fetch in flight at the abort): straight back
            if (stop.aborted) {
              await giveBack(j);
              return undefined;
            }
            const ended = (async () => {
              try {
                const r = await handle(j, AbortSignal.any([j.signal, stop]));
                failures = 0;
                pause = firstPause;
                return r;
              } catch (e) {
                // stopping: the job was put back at the abort, and what this attempt says is moot
                if (stop.aborted) return undefined;
                if (!ownRefusal(e) && ++failures >= BREAKER_FAILURES) {
                  log(
                    `${name}: ${failures} jobs failed in a row: not taking jobs for ${pause} s (the last: ${(e as Error).message.split("\n")[0]})`,
                  );
                  failures = 0;
                  void boss.offWork(CELL_QUEUE, { id, wait: false });
                  const t = setTimeout(() => {
                    timers.delete(t);
                    start().catch((err) => log(`${name}: not restarted: ${(err as Error).message}`));
                  }, pause * 1000);
                  timers.add(t);
                  pause = Math.min(pause * 2, BREAKER_MAX_PAUSE_S);
                }
                throw e;
              }
            })();
            inHand.set(j.id, { job: j, point: j.data.kind === "point", ended });
            try {
              return await ended;
            } finally {
              inHand.delete(j.id);
            }
          },
        );
      };
      await start();
    }
    log(`worker ${who}: ready, ${o.devices.length} slot(s) polling ${CELL_QUEUE}`);
    await new Promise<void>((done) => {
      if (stop.aborted) done();
      stop.addEventListener("abort", () => done(), { once: true });
    });
    for (const t of timers) clearTimeout(t);
    await boss.offWork(CELL_QUEUE, { wait: false });
    // every job in hand back in the queue now, before anything else can stop this process (a
    // second signal, a SIGKILL after the scheduler's grace)
    await Promise.all([...inHand.values()].map((h) => giveBack(h.job)));
    if (putBack.size)
      log(`worker ${who}: stopping; ${putBack.size} job(s) in hand put back in the queue (no retry spent)`);
    // the cells' sidecars stop after their step with a checkpoint (their signal is aborted): a
    // short wait for that, which the next worker would otherwise wait out on the run's lock
    let waitOver: ReturnType<typeof setTimeout> | undefined;
    const cellsInHand = [...inHand.values()].filter((h) => !h.point).map((h) => h.ended.catch(() => {}));
    await Promise.race([Promise.all(cellsInHand), new Promise((r) => (waitOver = setTimeout(r, 20_000)))]);
    clearTimeout(waitOver);
  } finally {
    for (const t of timers) clearTimeout(t);
    await boss.stop({ graceful: false });
    await store.close();
  }
}

/** A slot's GPU as this host's CUDA names it: the index itself, or the entry of an inherited
 *  CUDA_VISIBLE_DEVICES it picks (`--gpus 0` under CUDA_VISIBLE_DEVICES=2,3 is GPU 2). */
function hostGpu(dev: string): string {
  if (!/^\d+$/.test(dev)) throw new ConfigError(`worker: --gpus takes GPU indices (0,1,…), not \`${dev}\``, "gpus");
  const mask = process.env.CUDA_VISIBLE_DEVICES?.trim();
  if (mask === undefined) return dev;
  // set but empty: a scheduler that gave this process no GPU
  if (!mask)
    throw new ConfigError(
      `worker: --gpus ${dev}: this process is given no GPU (CUDA_VISIBLE_DEVICES is empty) (hint: --cpu N, or run it where the scheduler allocates GPUs)`,
      "gpus",
    );
  const seen = mask.split(",").map((x) => x.trim());
  const gpu = seen[Number(dev)];
  if (gpu === undefined || gpu === "")
    throw new ConfigError(
      `worker: --gpus ${dev}: this process sees ${seen.length} GPU(s) (CUDA_VISIBLE_DEVICES=${mask}) (hint: --gpus counts from 0 over those)`,
      "gpus",
    );
  return gpu;
}

/** A GPU slot's sidecar, started as a cell's would be: a CUDA build that sees the slot's GPU. */
async function preflightGpu(gpu: string): Promise<void> {
  const path = sidecarPath("cuda");
  const s = await Sidecar.start({ path, env: { CUDA_VISIBLE_DEVICES: gpu } }).catch((e) => {
    throw new Error(`worker: GPU ${gpu}: the sidecar ${path} did not start: ${(e as Error).message}`);
  });
  try {
    const kinds = s.ready.devices;
    if (!kinds.includes("cuda"))
      throw new Error(
        `worker: GPU ${gpu}: the sidecar ${path} is a CPU build (devices: ${kinds.join(", ")}) (hint: build the CUDA one with scripts/build-cuda-sidecar.sh, or set LORALAB_SIDECAR to it; --cpu N for CPU slots)`,
      );
    // and the GPU itself answers: a tensor made and read back on cuda:0 (the slot's GPU)
    const probe = await s.request<{ sum: number }>("device_probe", { device: "cuda:0" }).result.catch((e) => {
      throw new Error(
        `worker: GPU ${gpu}: not usable by the sidecar (${(e as Error).message.split("\n")[0]}) (hint: nvidia-smi lists the GPUs this host has; --gpus takes their indices)`,
      );
    });
    if (probe.sum !== 6)
      throw new Error(`worker: GPU ${gpu}: computed sum([0,1,2,3]) = ${probe.sum}, not 6: the device is broken`);
  } finally {
    await s.shutdown();
  }
}

/** A point job's checkpoint, which must be on this host's storage. */
function checkpointHere(ck: Checkpoint): Checkpoint {
  // the trained weights (a LoRA checkpoint's base may be a Hub id, fetched into the cache)
  const p = ck.adapter || ck.model;
  if (!existsSync(p))
    throw new Error(
      `${p}: not on this host (hint: a sweep's workers share its runs directory, or each is started with its own --runs-dir, which scores its checkpoints where it trained them)`,
    );
  return ck;
}

const abortableSleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((done) => {
    const t = setTimeout(done, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        done();
      },
      { once: true },
    );
  });

async function trainJob(
  spec: SweepSpec,
  c: Cell,
  store: Store,
  runsDir: string,
  gpu: string | null,
  signal: AbortSignal,
): Promise<Checkpoint[]> {
  // a run another process still trains (a dead worker's sidecar finishing its step) is waited
  // for, heartbeating, rather than counted as a failed attempt
  for (let waited = 0; ; waited += 10) {
    try {
      return await sweepCell(spec, c, store, runsDir, {
        // a sidecar per cell: a crash takes the cell, not the worker; a GPU slot sees only its GPU
        train: { sidecar: gpu === null ? true : { env: { CUDA_VISIBLE_DEVICES: gpu } }, signal },
        device: gpu === null ? "cpu" : "cuda:0",
        recordDevice: gpu === null ? "cpu" : `cuda:${gpu}`,
      });
    } catch (e) {
      if (!/being trained by another process/.test((e as Error).message) || signal.aborted || waited >= 1800) throw e;
      await abortableSleep(10_000, signal);
    }
  }
}

export interface SweepState {
  /** Cells by queue state: created, retry, active, completed, failed, cancelled. */
  byState: Record<string, number>;
  /** A study's point jobs (the base and each checkpoint, evaluated and analysed) by state. */
  points: Record<string, number>;
  /** Cells (and points, "cell @ duration") in the dead-letter queue, with their last error. */
  dead: { cell: string; error: string }[];
  /** Cells, and points of completed cells, with no job in the queue (deleted from its tables, or
   *  never sent): the sweep cannot finish without them (enqueue it again: only they are sent). */
  missing: string[];
  cells: number;
  /** Every cell completed or dead, and every point job sent for them too. */
  done: boolean;
  /** How long the rest should take, from measured step and evaluation times. */
  eta: Eta;
}

export interface Eta {
  /** Seconds left, over the active slots; null until a step (and, with evaluations left, an
   *  evaluation) has been timed, or while no job is active. */
  seconds: number | null;
  /** Training steps left over the cells not completed (their runs' planned steps, less those the
   *  store has logged). */
  stepsLeft: number;
  /** Median seconds per step of the sweep's runs so far (their logged elapsed_s). */
  secondsPerStep: number | null;
  /** Evaluations left: point jobs not ended and the checkpoints of cells still to train. */
  evalsLeft: number;
  /** Median seconds of a finished point job. */
  secondsPerEval: number | null;
  /** Jobs active now (the slots the rest is shared over). */
  active: number;
}

const ENDED = ["completed", "failed", "cancelled"];

/** A cell's plan, or none where the spec cannot place it (its cell then fails with the reason). */
function planOf(spec: SweepSpec, c: Cell) {
  try {
    return cellPlan(spec, c);
  } catch {
    return undefined;
  }
}

/** The durations a cell's checkpoints are scored at, as the spec now gives them. */
const durationsOf = (spec: SweepSpec, c: Cell) => planOf(spec, c)?.durations ?? [];

/** The sweep's jobs as this spec has them: each cell's newest job (one enqueued again after it
 *  died is the new job's), and the point jobs its report is drawn from: the base's, and those
 *  of the checkpoints each cell's newest completed job scored, under this spec's eval section
 *  and durations (an edited spec's old points, a dropped duration's, a removed or dead cell's
 *  are not its). `missing`: what the sweep needs that has no job in the queue. */
async function sweepJobs(spec: SweepSpec, boss: PgBoss) {
  const all = cells(spec);
  const cellKeys = new Map(all.map((c) => [cellRunId(spec, c), c]));
  const cellJobs = new Map<string, JobWithMetadata<CellJob>>();
  const byKey = new Map<string, JobWithMetadata<PointJob>>();
  const newer = (a: JobWithMetadata<unknown> | undefined, b: JobWithMetadata<unknown>) =>
    !a || new Date(b.createdOn).getTime() >= new Date(a.createdOn).getTime();
  for (const j of await boss.findJobs<SweepJob>(CELL_QUEUE, { data: { spec: { name: spec.name } }, limit: 100_000 })) {
    const key = j.singletonKey;
    if (!key) continue;
    if (j.data.kind === "point") {
      if (newer(byKey.get(key), j)) byKey.set(key, j as JobWithMetadata<PointJob>);
    } else if (cellKeys.has(key) && newer(cellJobs.get(key), j)) cellJobs.set(key, j as JobWithMetadata<CellJob>);
  }
  const missing: string[] = [];
  const pointJobs = new Map<string, JobWithMetadata<PointJob>>();
  /** Points scored inside cell jobs (workers with their own runs directory). */
  const inJob: { order: [number, number]; point: Point }[] = [];
  if (isStudy(spec)) {
    const need = (key: string, what: string, order: [number, number]) => {
      const j = byKey.get(key);
      if (!j) return void missing.push(what);
      j.data.order = order; // its place from the spec's cells now (cells added since move it)
      pointJobs.set(key, j);
    };
    need(pointKey(spec, null), "base", [-1, 0]);
    for (const [i, c] of all.entries()) {
      const j = cellJobs.get(cellRunId(spec, c));
      if (j?.state !== "completed") continue;
      const out = j.output as CellOutput | null;
      const durations = durationsOf(spec, c);
      if (out?.points) {
        for (const p of out.points)
          if (durations.includes(p.point.duration)) inJob.push({ order: [i, p.order[1]], point: p.point });
      } else if (out?.sent) {
        for (const x of out.sent)
          if (durations.includes(x.checkpoint.duration))
            need(pointKey(spec, x.checkpoint), `${c.key} @ ${x.checkpoint.duration}`, [i, x.order[1]]);
      } else missing.push(`${c.key} (its points: completed by an older loralab)`);
    }
  }
  for (const [key, c] of cellKeys) if (!cellJobs.has(key)) missing.push(c.key);
  return { cellKeys, cellJobs, pointJobs, inJob, missing };
}

const median = (xs: number[]) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Seconds per step between consecutive logged `elapsed_s` rows (a resumed run's clock
 *  starts again: that gap is not a step time). */
function stepTimes(logged: { step: number; value: number }[]): number[] {
  const out: number[] = [];
  for (let i = 1; i < logged.length; i++) {
    const ds = logged[i]!.step - logged[i - 1]!.step;
    const dt = logged[i]!.value - logged[i - 1]!.value;
    if (ds > 0 && dt > 0) out.push(dt / ds);
  }
  return out;
}

const errorOf = (j: JobWithMetadata<unknown>) => (j.output as { message?: string } | null)?.message ?? j.state;

/** Where a sweep's jobs are in the queue, and, given the store its workers log to, the ETA.
 *  Dead: the newest job failed for good (its retries spent; pg-boss has also copied it to the
 *  dead-letter queue). */
export async function sweepState(spec: SweepSpec, boss: PgBoss, store?: Store): Promise<SweepState> {
  const { cellKeys, cellJobs, pointJobs, missing } = await sweepJobs(spec, boss);
  const byState: Record<string, number> = {};
  const points: Record<string, number> = {};
  const dead: SweepState["dead"] = [];
  for (const [key, j] of cellJobs) {
    byState[j.state] = (byState[j.state] ?? 0) + 1;
    if (j.state === "failed" || j.state === "cancelled") dead.push({ cell: cellKeys.get(key)!.key, error: errorOf(j) });
  }
  for (const j of pointJobs.values()) {
    points[j.state] = (points[j.state] ?? 0) + 1;
    const ck = j.data.checkpoint;
    if (j.state === "failed" || j.state === "cancelled")
      dead.push({ cell: ck ? `${ck.cell.key} @ ${ck.duration}` : "base", error: errorOf(j) });
  }
  const ended = [...cellJobs.values()].filter((j) => ENDED.includes(j.state)).length;
  const pointsEnded = [...pointJobs.values()].every((j) => ENDED.includes(j.state));
  return {
    byState,
    points,
    dead,
    missing,
    cells: cellKeys.size,
    done: ended >= cellKeys.size && pointsEnded && !missing.length,
    eta: await eta(spec, cellKeys, cellJobs, pointJobs, store),
  };
}

async function eta(
  spec: SweepSpec,
  cellKeys: Map<string, Cell>,
  cellJobs: Map<string, JobWithMetadata<CellJob>>,
  pointJobs: Map<string, JobWithMetadata<PointJob>>,
  store?: Store,
): Promise<Eta> {
  let stepsLeft = 0;
  let evalsLeft = [...pointJobs.values()].filter((j) => !ENDED.includes(j.state)).length;
  const perStep: number[] = [];
  // the runs still to train, and the finished cells' (the first cells' runs are the best
  // measure of the rest until an unfinished one has logged steps): their elapsed_s in one query
  const open: { r: { runId: string; from: number; to: number } }[] = [];
  const finished: string[] = [];
  for (const [key, c] of cellKeys) {
    const state = cellJobs.get(key)?.state;
    const plan = planOf(spec, c);
    if (!plan) continue;
    if (state === "completed") finished.push(...plan.runs.map((r) => r.runId));
    if (state && ENDED.includes(state)) continue;
    if (isStudy(spec)) evalsLeft += plan.checkpoints;
    open.push(...plan.runs.map((r) => ({ r })));
  }
  const logged = store
    ? await store.metricsOf([...open.map((x) => x.r.runId), ...finished], "elapsed_s")
    : new Map<string, { step: number; value: number }[]>();
  for (const { r } of open) {
    const rows = logged.get(r.runId) ?? [];
    const at = rows.length ? rows[rows.length - 1]!.step : r.from;
    stepsLeft += Math.max(0, r.to - Math.max(at, r.from));
    perStep.push(...stepTimes(rows));
  }
  if (!perStep.length) for (const id of finished) perStep.push(...stepTimes(logged.get(id) ?? []));
  const evalTimes = [...pointJobs.values()]
    .filter((j) => j.state === "completed" && j.completedOn && j.startedOn)
    .map((j) => (new Date(j.completedOn!).getTime() - new Date(j.startedOn).getTime()) / 1000);
  const secondsPerStep = median(perStep);
  const secondsPerEval = median(evalTimes);
  const active = [...cellJobs.values(), ...pointJobs.values()].filter((j) => j.state === "active").length;
  // work not yet timed makes the whole unknown: a partial sum would read as the ETA
  const untimed = (stepsLeft > 0 && secondsPerStep === null) || (evalsLeft > 0 && secondsPerEval === null);
  const work = stepsLeft * (secondsPerStep ?? 0) + evalsLeft * (secondsPerEval ?? 0);
  const seconds = untimed || (active === 0 && work > 0) ? null : work / Math.max(1, active);
  return { seconds, stepsLeft, secondsPerStep, evalsLeft, secondsPerEval, active };
}

/** The ETA as a line: what is left, at what measured rate, over how many slots. */
export function describeEta(e: Eta): string {
  if (e.stepsLeft === 0 && e.evalsLeft === 0) return "nothing left to run";
  const parts = [];
  if (e.stepsLeft)
    parts.push(
      `${e.stepsLeft} training steps left${e.secondsPerStep === null ? " (no step timed yet)" : ` at ${e.secondsPerStep.toFixed(3)} s/step`}`,
    );
  if (e.evalsLeft)
    parts.push(
      `${e.evalsLeft} evaluations left${e.secondsPerEval === null ? " (none timed yet)" : ` at ${e.secondsPerEval.toFixed(1)} s each`}`,
    );
  const head =
    e.seconds === null
      ? e.active === 0
        ? "ETA unknown: no job is active (is a worker running?)"
        : "ETA unknown"
      : `ETA ${clock(e.seconds)} over ${Math.max(1, e.active)} active slot(s)`;
  return `${head}: ${parts.join("; ")}`;
}

function clock(s: number): string {
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${t % 60} s` : `${t} s`;
}

/** The points of a study's sweep, from its point jobs' outputs (and the cells that scored their
 *  own), in the order an in-process sweep lists them; the base's, or null where its job is dead
 *  (the caller may score it itself: it needs no checkpoint). */
export async function queuedPoints(spec: StudySpec, o: QueueOptions): Promise<{ base: Point | null; points: Point[] }> {
  const boss = await openQueue(o);
  try {
    const { pointJobs, inJob } = await sweepJobs(spec, boss);
    const got = [...inJob];
    for (const j of pointJobs.values())
      if (j.state === "completed") got.push({ order: j.data.order, point: (j.output as { point: Point }).point });
    got.sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1]);
    const base = got.find((g) => g.order[0] === -1)?.point ?? null;
    return { base, points: got.filter((g) => g.order[0] >= 0).map((g) => g.point) };
  } finally {
    await boss.stop({ graceful: false });
  }
}

/** Wait until every job of the sweep is completed or dead; report progress now and then.
 *  Throws where jobs are missing from the queue: no worker could ever finish them. */
export async function waitForSweep(
  spec: SweepSpec,
  o: QueueOptions & { signal?: AbortSignal; log?: (line: string) => void; pollMs?: number },
): Promise<SweepState> {
  const boss = await openQueue(o);
  try {
    let last = "";
    for (;;) {
      const st = await sweepState(spec, boss);
      if (st.missing.length)
        throw new Error(
          `sweep ${spec.name}: ${st.missing.length} job(s) are not in the queue (${st.missing.slice(0, 3).join(", ")}${st.missing.length > 3 ? ", …" : ""}) (hint: enqueue the sweep again: what is done is skipped, and only what is missing is sent)`,
        );
      const list = (r: Record<string, number>) =>
        Object.entries(r)
          .map(([k, v]) => `${v} ${k}`)
          .join(", ");
      const pts = list(st.points);
      const line = `${list(st.byState)}${pts ? `; points ${pts}` : ""}${st.dead.length ? `; ${st.dead.length} dead` : ""}`;
      if (line !== last) o.log?.(`sweep ${spec.name}: ${line}`);
      last = line;
      if (st.done || o.signal?.aborted) return st;
      await Bun.sleep(o.pollMs ?? 1000);
    }
  } finally {
    await boss.stop({ graceful: false });
  }
}
