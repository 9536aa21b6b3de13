// Sweeps on a real job queue: pg-boss on the Postgres store. `enqueueSweep` sends one job per
// cell (its singletonKey the cell's deterministic run id, in a `stately` queue, so a second
// enqueue of the same sweep adds nothing); `runWorker` claims one cell per device, trains it
// (resuming from its last checkpoint), and heartbeats while it does: a worker that dies loses
// its job after `heartbeatSeconds`, and pg-boss retries it on another worker, which resumes the
// run from the checkpoint on the shared runs directory. A cell that fails `retryLimit` + 1
// times lands in the dead-letter queue with its error, and the sweep goes on. The queue does
// the scheduling; this file only says what a job is.
import { hostname } from "node:os";
import { resolve } from "node:path";
import { openStore, type Store } from "@loralab/db";
import { PgBoss } from "pg-boss";
import { type Cell, cellRunId, cells, type SweepSpec, sweepCell } from "./sweep.ts";

export const CELL_QUEUE = "loralab_cells";
export const DEAD_QUEUE = "loralab_cells_dead";

export interface CellJob {
  spec: SweepSpec;
  cell: string;
  runsDir: string;
}

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
): Promise<{ sent: number; already: number; cells: number }> {
  const boss = await openQueue(o);
  try {
    let sent = 0;
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
    }
    return { sent, already: all.length - sent, cells: all.length };
  } finally {
    await boss.stop({ graceful: false });
  }
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
    for (const [slot, dev] of o.devices.entries()) {
      const gpu = dev !== "cpu";
      await boss.work<CellJob>(CELL_QUEUE, { batchSize: 1, pollingIntervalSeconds: 0.5 }, async ([job]) => {
        const { spec, cell, runsDir } = job!.data;
        const c = cells(spec).find((x) => x.key === cell);
        if (!c) throw new Error(`sweep ${spec.name} has no cell ${cell}`);
        const t0 = performance.now();
        log(`worker ${who} slot ${slot} (${dev}): ${cellRunId(spec, c)} (attempt ${job!.retryCount + 1})`);
        try {
          await trainJob(spec, c, store, o.runsDir ?? runsDir, gpu ? dev : "", job!.signal);
        } catch (e) {
          // the queue retries it (or, at the last attempt, sends it to the dead-letter queue)
          log(`worker ${who} slot ${slot}: ${cellRunId(spec, c)} failed: ${(e as Error).message.split("\n")[0]}`);
          throw e;
        }
        log(
          `worker ${who} slot ${slot}: ${cellRunId(spec, c)} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
        );
      });
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

async function trainJob(spec: SweepSpec, c: Cell, store: Store, runsDir: string, gpu: string, signal: AbortSignal) {
  // a run another process still trains (a dead worker's sidecar finishing its step) is waited
  // for, heartbeating, rather than counted as a failed attempt
  for (let waited = 0; ; waited += 10) {
    try {
      return await sweepCell(spec, c, store, runsDir, {
        // a sidecar per cell: a crash takes the cell, not the worker; a GPU slot sees only its GPU
        train: { sidecar: gpu ? { env: { CUDA_VISIBLE_DEVICES: gpu } } : true, signal },
        device: gpu ? "cuda:0" : "cpu",
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
  /** Cells in the dead-letter queue, with their last error. */
  dead: { cell: string; error: string }[];
  cells: number;
  /** Every cell completed or dead. */
  done: boolean;
}

/** Where a sweep's cells are in the queue: each cell by its newest job (a cell enqueued again
 *  after it died is the new job's). Dead: the newest job failed for good (its retries spent;
 *  pg-boss has also copied it to the dead-letter queue). */
export async function sweepState(spec: SweepSpec, boss: PgBoss): Promise<SweepState> {
  const keys = new Map(cells(spec).map((c) => [cellRunId(spec, c), c.key]));
  const latest = new Map<string, { state: string; output: unknown }>();
  for (const j of await boss.findJobs<CellJob>(CELL_QUEUE, { data: { spec: { name: spec.name } }, limit: 100_000 }))
    if (j.singletonKey && keys.has(j.singletonKey)) latest.set(j.singletonKey, { state: j.state, output: j.output });
  const byState: Record<string, number> = {};
  const dead: SweepState["dead"] = [];
  for (const [key, j] of latest) {
    byState[j.state] = (byState[j.state] ?? 0) + 1;
    if (j.state === "failed" || j.state === "cancelled") {
      const out = j.output as { message?: string } | null;
      dead.push({ cell: keys.get(key)!, error: out?.message ?? j.state });
    }
  }
  const ended = [...latest.values()].filter((j) => ["completed", "failed", "cancelled"].includes(j.state)).length;
  return { byState, dead, cells: keys.size, done: ended >= keys.size };
}

/** Wait until every cell of the sweep is completed or dead; report progress now and then. */
export async function waitForSweep(
  spec: SweepSpec,
  o: QueueOptions & { signal?: AbortSignal; log?: (line: string) => void; pollMs?: number },
): Promise<SweepState> {
  const boss = await openQueue(o);
  try {
    let last = "";
    for (;;) {
      const st = await sweepState(spec, boss);
      const line = Object.entries(st.byState)
        .map(([k, v]) => `${v} ${k}`)
        .join(", ");
      if (line !== last) o.log?.(`sweep ${spec.name}: ${line}${st.dead.length ? `; ${st.dead.length} dead` : ""}`);
      last = line;
      if (st.done || o.signal?.aborted) return st;
      await Bun.sleep(o.pollMs ?? 1000);
    }
  } finally {
    await boss.stop({ graceful: false });
  }
}
