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
import { Sidecar, sidecarPath } from "@loralab/engine";
import { type Job, type JobWithMetadata, PgBoss } from "pg-boss";
import type { Point } from "./points.ts";
import { scoreBase, scoreCheckpoint, type StudySpec } from "./study.ts";
import { type Cell, type Checkpoint, cellPlan, cellRunId, cells, type SweepSpec, sweepCell } from "./sweep.ts";

export const CELL_QUEUE = "loralab_cells";
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

/** What a cell job returns: how many point jobs it sent, or its points, scored in the job (a
 *  worker with its own runs directory: no other host sees its checkpoints). */
interface CellOutput {
  checkpoints: number;
  points?: { order: [number, number]; point: Point }[];
}

const isStudy = (spec: SweepSpec): spec is StudySpec => (spec as StudySpec).eval !== undefined;
const pointKey = (spec: SweepSpec, ck: Checkpoint | null) =>
  ck ? `${spec.name}:point:${ck.runId}@${ck.duration}` : `${spec.name}:point:base`;

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
  await boss.createQueue(DEAD_QUEUE).catch(ignoreExists);
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
    })
    .catch(ignoreExists);
  return boss;
}

function ignoreExists(e: unknown): void {
  if (!/exists/i.test((e as Error).message)) throw e;
}

/** One job per cell; a cell already queued or running is not sent again. */
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
    for (const c of all) {
      const job: CellJob = { spec, cell: c.key, runsDir: resolve(runsDir) };
      // per job, not per queue: the queue keeps the options of whoever created it first
      const id = await boss.send(CELL_QUEUE, job, {
        singletonKey: cellRunId(spec, c),
        retryLimit: o.retries ?? 2,
        retryDelay: o.retryDelaySeconds ?? 30,
        retryBackoff: true,
      });
      if (id) sent++;
      else {
        // already queued or running: by this spec, or by an edited one (that job trains the old)
        const had = await boss.findJobs<CellJob>(CELL_QUEUE, { key: cellRunId(spec, c), limit: 1000 });
        const live = had.filter((j) => !ENDED.includes(j.state));
        // jsonb reorders an object's keys: compared in a canonical form
        if (live.some((j) => canonical(j.data.spec) !== canonical(spec))) drifted.push(c.key);
      }
    }
    if (isStudy(spec)) await sendPoint(boss, o, { kind: "point", spec, checkpoint: null, order: [-1, 0] });
    return { sent, already: all.length - sent, cells: all.length, drifted };
  } finally {
    await boss.stop({ graceful: false });
  }
}

/** JSON with every object's keys sorted. */
const canonical = (v: unknown): string =>
  JSON.stringify(v, (_, x) =>
    x && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x,
  );

/** Send a point job unless one for the same point is queued, running or done (stately lets a
 *  second job in beside an active one, so the queue is asked first). */
async function sendPoint(boss: PgBoss, o: QueueOptions, job: PointJob): Promise<void> {
  const key = pointKey(job.spec, job.checkpoint);
  const had = await boss.findJobs(CELL_QUEUE, { key, limit: 1000 });
  if (had.some((j) => j.state !== "failed" && j.state !== "cancelled")) return;
  await boss.send(CELL_QUEUE, job, {
    singletonKey: key,
    priority: 1,
    retryLimit: o.retries ?? 2,
    retryDelay: o.retryDelaySeconds ?? 30,
    retryBackoff: true,
  });
}

export interface WorkerOptions extends QueueOptions {
  /** One slot per entry: "cpu", or a GPU index ("0", "1", …) trained with CUDA_VISIBLE_DEVICES. */
  devices: string[];
  /** Where runs go on this host, if not the enqueuer's (then a lost cell resumes only here). */
  runsDir?: string;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

/** Work cells until `signal` aborts: one per device at a time, each in a sidecar process. */
export async function runWorker(o: WorkerOptions): Promise<void> {
  const log = o.log ?? ((l: string) => console.log(l));
  const store = await openStore({ url: o.url });
  const who = `${hostname()}:${process.pid}`;
  const boss = await openQueue(o).catch(async (e) => {
    await store.close();
    throw e;
  });
  try {
    // a GPU slot whose sidecar has no CUDA would fail every cell it takes: refused at the start
    for (const dev of o.devices) if (dev !== "cpu") await preflightGpu(dev);
    for (const [slot, dev] of o.devices.entries()) {
      const gpu = dev !== "cpu";
      const handle = async (job: Job<SweepJob> | undefined) => {
        const data = job!.data;
        const attempt = job!.retryCount + 1;
        const t0 = performance.now();
        const done = (what: string) =>
          log(`worker ${who} slot ${slot}: ${what} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        if (data.kind === "point") {
          const what = data.checkpoint ? `point ${data.checkpoint.runId} @ ${data.checkpoint.duration}` : "point base";
          log(`worker ${who} slot ${slot} (${dev}): ${what} (attempt ${attempt})`);
          // eval on the slot's GPU (the sidecar, cuda:N); the analysis is CPU maths in this process
          const point = data.checkpoint
            ? await scoreCheckpoint(data.spec, checkpointHere(data.checkpoint), gpu ? { device: `cuda:${dev}` } : {})
            : await scoreBase(data.spec, gpu ? `cuda:${dev}` : undefined);
          done(what);
          return { order: data.order, point };
        }
        const { spec, cell, runsDir } = data;
        const all = cells(spec);
        const index = all.findIndex((x) => x.key === cell);
        const c = all[index];
        if (!c) throw new Error(`sweep ${spec.name} has no cell ${cell}`);
        log(`worker ${who} slot ${slot} (${dev}): ${cellRunId(spec, c)} (attempt ${attempt})`);
        let cks: Checkpoint[];
        try {
          cks = await trainJob(spec, c, store, o.runsDir ?? runsDir, gpu ? dev : "", job!.signal);
        } catch (e) {
          // the queue retries it (or, at the last attempt, sends it to the dead-letter queue)
          log(`worker ${who} slot ${slot}: ${cellRunId(spec, c)} failed: ${(e as Error).message.split("\n")[0]}`);
          throw e;
        }
        done(cellRunId(spec, c));
        const out: CellOutput = { checkpoints: cks.length };
        if (!isStudy(spec)) return out;
        // checkpoints on this host only: scored here, in the job; on shared storage: point jobs
        if (o.runsDir && resolve(o.runsDir) !== resolve(runsDir)) {
          out.points = [];
          for (const [k, ck] of cks.entries())
            out.points.push({
              order: [index, k],
              point: await scoreCheckpoint(spec, ck, gpu ? { device: `cuda:${dev}` } : {}),
            });
        } else
          for (const [k, ck] of cks.entries())
            await sendPoint(boss, o, { kind: "point", spec, checkpoint: ck, order: [index, k] });
        return out;
      };
      // a breaker: a slot that fails BREAKER_FAILURES jobs in a row (a broken device, a full
      // disk) stops taking jobs for a while, doubling each time it trips again, so it cannot
      // spend every cell's retries while other workers could train them; a success resets it
      let failures = 0;
      let pause = BREAKER_PAUSE_S;
      const start = async (): Promise<void> => {
        if (o.signal?.aborted) return;
        const id: string = await boss.work<SweepJob>(
          CELL_QUEUE,
          { batchSize: 1, pollingIntervalSeconds: 0.5 },
          async ([job]) => {
            try {
              const r = await handle(job);
              failures = 0;
              pause = BREAKER_PAUSE_S;
              return r;
            } catch (e) {
              if (++failures >= BREAKER_FAILURES) {
                log(
                  `worker ${who} slot ${slot} (${dev}): ${failures} jobs failed in a row: not taking jobs for ${pause} s (the last: ${(e as Error).message.split("\n")[0]})`,
                );
                failures = 0;
                void boss.offWork(CELL_QUEUE, { id, wait: false });
                setTimeout(
                  () =>
                    start().catch((err) => log(`worker ${who} slot ${slot}: not restarted: ${(err as Error).message}`)),
                  pause * 1000,
                );
                pause = Math.min(pause * 2, 1800);
              }
              throw e;
            }
          },
        );
      };
      await start();
    }
    log(`worker ${who}: ready, ${o.devices.length} slot(s) polling ${CELL_QUEUE}`);
    await new Promise<void>((done) => {
      if (o.signal?.aborted) done();
      o.signal?.addEventListener("abort", () => done(), { once: true });
    });
  } finally {
    await boss.stop({ graceful: true, timeout: 30_000 });
    await store.close();
  }
}

/** Failures in a row that pause a worker's slot, and the first pause in seconds. */
export const BREAKER_FAILURES = 3;
const BREAKER_PAUSE_S = 60;

/** A GPU slot's sidecar, started as a cell's would be: it must be a CUDA build. */
async function preflightGpu(dev: string): Promise<void> {
  if (!/^\d+$/.test(dev)) throw new Error(`worker: --gpus takes GPU indices (0,1,…), not \`${dev}\``);
  const path = sidecarPath("cuda");
  const s = await Sidecar.start({ path, env: { CUDA_VISIBLE_DEVICES: dev } }).catch((e) => {
    throw new Error(`worker: GPU ${dev}: the sidecar ${path} did not start: ${(e as Error).message}`);
  });
  const kinds = s.ready.devices;
  await s.shutdown();
  if (!kinds.includes("cuda"))
    throw new Error(
      `worker: GPU ${dev}: the sidecar ${path} is a CPU build (devices: ${kinds.join(", ")}) (hint: build the CUDA one with scripts/build-cuda-sidecar.sh, or set LORALAB_SIDECAR to it; --cpu N for CPU slots)`,
    );
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

async function trainJob(
  spec: SweepSpec,
  c: Cell,
  store: Store,
  runsDir: string,
  gpu: string,
  signal: AbortSignal,
): Promise<Checkpoint[]> {
  // a run another process still trains (a dead worker's sidecar finishing its step) is waited
  // for, heartbeating, rather than counted as a failed attempt
  for (let waited = 0; ; waited += 10) {
    try {
      return await sweepCell(spec, c, store, runsDir, {
        // a sidecar per cell: a crash takes the cell, not the worker; a GPU slot sees only its GPU
        train: { sidecar: gpu ? { env: { CUDA_VISIBLE_DEVICES: gpu } } : true, signal },
        device: gpu ? "cuda:0" : "cpu",
        recordDevice: gpu ? `cuda:${gpu}` : "cpu",
      });
    } catch (e) {
      if (!/being trained by another process/.test((e as Error).message) || signal.aborted || waited >= 1800) throw e;
      await Bun.sleep(10_000);
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
  cells: number;
  /** Every cell completed or dead, and every point job sent for them too. */
  done: boolean;
  /** How long the rest should take, from measured step and evaluation times. */
  eta: Eta;
}

export interface Eta {
  /** Seconds left, over the active slots; null until a step has been timed (or none is active). */
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

/** The sweep's jobs: each cell's and each point's newest (one enqueued again after it died is
 *  the new job's). */
async function sweepJobs(spec: SweepSpec, boss: PgBoss) {
  const cellKeys = new Map(cells(spec).map((c) => [cellRunId(spec, c), c]));
  const cellJobs = new Map<string, JobWithMetadata<CellJob>>();
  const pointJobs = new Map<string, JobWithMetadata<PointJob>>();
  for (const j of await boss.findJobs<SweepJob>(CELL_QUEUE, { data: { spec: { name: spec.name } }, limit: 100_000 })) {
    if (!j.singletonKey) continue;
    if (j.data.kind === "point") pointJobs.set(j.singletonKey, j as JobWithMetadata<PointJob>);
    else if (cellKeys.has(j.singletonKey)) cellJobs.set(j.singletonKey, j as JobWithMetadata<CellJob>);
  }
  return { cellKeys, cellJobs, pointJobs };
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
  const { cellKeys, cellJobs, pointJobs } = await sweepJobs(spec, boss);
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
    cells: cellKeys.size,
    done: ended >= cellKeys.size && pointsEnded,
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
  for (const [key, c] of cellKeys) {
    const j = cellJobs.get(key);
    if (j && ENDED.includes(j.state)) continue;
    const plan = planOf(spec, c);
    if (!plan) continue;
    if (isStudy(spec)) evalsLeft += plan.checkpoints;
    for (const r of plan.runs) {
      const logged = store ? await store.metrics(r.runId, { name: "elapsed_s" }) : [];
      const at = logged.length ? logged[logged.length - 1]!.step : r.from;
      stepsLeft += Math.max(0, r.to - Math.max(at, r.from));
      perStep.push(...stepTimes(logged));
    }
  }
  // finished cells' step times count too: the first cells' runs are the best measure of the rest
  if (store && !perStep.length)
    for (const [key, c] of cellKeys) {
      if (cellJobs.get(key)?.state !== "completed") continue;
      for (const r of planOf(spec, c)?.runs ?? []) {
        perStep.push(...stepTimes(await store.metrics(r.runId, { name: "elapsed_s" })));
      }
    }
  const evalTimes = [...pointJobs.values()]
    .filter((j) => j.state === "completed" && j.completedOn && j.startedOn)
    .map((j) => (new Date(j.completedOn!).getTime() - new Date(j.startedOn).getTime()) / 1000);
  const secondsPerStep = median(perStep);
  const secondsPerEval = median(evalTimes);
  const active = [...cellJobs.values(), ...pointJobs.values()].filter((j) => j.state === "active").length;
  const work =
    (stepsLeft ? (secondsPerStep === null ? Number.NaN : stepsLeft * secondsPerStep) : 0) +
    (evalsLeft ? (secondsPerEval === null ? 0 : evalsLeft * secondsPerEval) : 0);
  const seconds = Number.isNaN(work) || (active === 0 && work > 0) ? null : work / Math.max(1, active);
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
      `${e.evalsLeft} evaluations left${e.secondsPerEval === null ? " (none timed yet, not counted)" : ` at ${e.secondsPerEval.toFixed(1)} s each`}`,
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
 *  own), in the order an in-process sweep lists them; the base first. */
export async function queuedPoints(spec: StudySpec, o: QueueOptions): Promise<{ base: Point; points: Point[] }> {
  const boss = await openQueue(o);
  try {
    const { cellJobs, pointJobs } = await sweepJobs(spec, boss);
    const got: { order: [number, number]; point: Point }[] = [];
    for (const j of pointJobs.values())
      if (j.state === "completed") got.push(j.output as { order: [number, number]; point: Point });
    for (const j of cellJobs.values())
      if (j.state === "completed") got.push(...((j.output as CellOutput | null)?.points ?? []));
    got.sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1]);
    const base = got.find((g) => g.order[0] === -1)?.point;
    if (!base) throw new Error(`sweep ${spec.name}: the base model's point job did not complete (see the dead jobs)`);
    return { base, points: got.filter((g) => g.order[0] >= 0).map((g) => g.point) };
  } finally {
    await boss.stop({ graceful: false });
  }
}

/** Wait until every job of the sweep is completed or dead; report progress now and then. */
export async function waitForSweep(
  spec: SweepSpec,
  o: QueueOptions & { signal?: AbortSignal; log?: (line: string) => void; pollMs?: number },
): Promise<SweepState> {
  const boss = await openQueue(o);
  try {
    let last = "";
    for (;;) {
      const st = await sweepState(spec, boss);
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
