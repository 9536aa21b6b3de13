// Sweeps on a real job queue (pg-boss on a Postgres started on 127.0.0.1 by tests/pg.ts): a
// 6-cell sweep trained by 3 `loralab worker` processes, one of them SIGKILLed mid-cell, whose
// cell is retried on another worker and resumes from its checkpoint; every cell trained, every
// step in the store once, the weights bit-identical to a single-process sweep's; a cell that
// always fails lands in the dead-letter queue while the others complete; a second enqueue of
// the same sweep adds no job.
import { afterAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { sidecarPath } from "@loralab/engine";
import {
  CELL_QUEUE,
  cellRunId,
  cells,
  describeEta,
  enqueueSweep,
  loadStudySpec,
  openQueue,
  queuedPoints,
  runSweep,
  runWorker,
  type SweepSpec,
  sweepState,
  waitForSweep,
} from "@loralab/study";
import { freshPostgresUrl } from "./pg.ts";
import { root, tempDir, tinyModel } from "./helpers.ts";
import { midRunVictim, SIX_CELLS, spawnWorker, tinySweep, userSweepYaml, type WorkerProcess } from "./sweeps.ts";

const workers: ReturnType<typeof Bun.spawn>[] = [];
afterAll(() => {
  for (const w of workers) w.kill(9);
});

const spec = (name: string, out: string, over: Partial<SweepSpec> = {}) =>
  tinySweep(name, out, { ...SIX_CELLS, ...over });

function worker(url: string): WorkerProcess {
  const w = spawnWorker(url);
  workers.push(w.p);
  return w;
}

const sha = (f: string) => createHash("sha256").update(readFileSync(f)).digest("hex");

async function until<T>(what: string, ms: number, f: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await Bun.sleep(100);
  }
}

test("3 workers, one SIGKILLed mid-cell: its cell resumes on another from the checkpoint; weights equal a single-process sweep's", async () => {
  const url = await freshPostgresUrl("queue");
  const out = tempDir("queue");
  // 96 steps a cell (24 an epoch, 4 epochs): a wide window to kill it in after its first checkpoint
  const s = spec("q", out, { durations: [1, 4] });
  const runs = join(out, "runs");
  const first = await enqueueSweep(s, runs, { url, retryDelaySeconds: 1 });
  const again = await enqueueSweep(s, runs, { url, retryDelaySeconds: 1 });
  expect([first.sent, again.sent, again.already, again.drifted]).toEqual([6, 0, 6, []]);
  // an edited spec under the same name over queued jobs is named
  const edited = await enqueueSweep({ ...s, base: { ...s.base, seed: 99 } }, runs, { url, retryDelaySeconds: 1 });
  expect(edited.drifted.length).toBe(6);

  const t0 = performance.now();
  const ws = [worker(url), worker(url), worker(url)];
  const [victim, runId] = await until("a cell past its first checkpoint", 60_000, () =>
    midRunVictim(s, runs, ws, "step-000024", "step-000096"),
  );
  victim.p.kill(9);
  const killedAt = performance.now();
  // mid-sweep, the ETA from the steps the workers log to the store as they train
  const watch = await openStore({ url });
  const boss = await openQueue({ url });
  try {
    const mid = await until("a timed step", 30_000, async () => {
      const e = (await sweepState(s, boss, watch)).eta;
      return e.secondsPerStep !== null && e.seconds !== null ? e : undefined;
    });
    expect(mid.stepsLeft).toBeGreaterThan(0);
    expect(mid.stepsLeft).toBeLessThan(6 * 96);
    expect(mid.secondsPerStep).toBeGreaterThan(0);
    expect(mid.secondsPerStep).toBeLessThan(5);
    expect(mid.evalsLeft).toBe(0); // a sweep without an eval section has no point jobs
    expect(describeEta(mid)).toMatch(/^ETA \d+.* over \d active slot\(s\): \d+ training steps left at [\d.]+ s\/step$/);
  } finally {
    await boss.stop({ graceful: false });
    await watch.close();
  }
  const st = await waitForSweep(s, { url, pollMs: 300 });
  const wall = (performance.now() - t0) / 1000;
  expect(st.byState).toEqual({ completed: 6 });
  expect([st.points, st.dead, st.eta.stepsLeft]).toEqual([{}, [], 0]);
  // the killed cell ran again elsewhere, as its second attempt (the workers' lines may lag: a pipe)
  const others = ws.filter((w) => w !== victim);
  const done = await until("the retried cell's lines", 10_000, () =>
    others.flatMap((w) => w.lines).find((l) => l.includes(`${runId} done`)),
  );
  expect(others.flatMap((w) => w.lines.filter((l) => l.includes(`${runId} (attempt 2)`))).length).toBe(1);
  expect(victim.lines.filter((l) => l.includes(`${runId} done`))).toEqual([]);
  // and resumed: the run's config names the checkpoint the first attempt left
  const resumed = JSON.parse(readFileSync(join(runs, runId, "config.json"), "utf8")).train.resume_from as string;
  expect(resumed).toMatch(/checkpoints\/step-0000\d\d$/);
  console.log(
    `queue: 6 cells on 3 workers in ${wall.toFixed(1)} s; the killed cell done ${((performance.now() - killedAt) / 1000).toFixed(1)} s after the SIGKILL (${done})`,
  );

  // every cell trained, every step in the store once
  const store = await openStore({ url });
  try {
    for (const c of cells(s)) {
      const id = cellRunId(s, c);
      expect([id, (await store.getRun(id))?.status]).toEqual([id, "completed"]);
      const steps = (await store.metrics(id, { name: "loss" })).map((m) => m.step);
      expect(steps).toEqual(Array.from({ length: 96 }, (_, i) => i + 1));
      // and the run's own log: each step's line once, though the cell ran twice (the store upserts)
      const logged = readFileSync(join(runs, id, "metrics.jsonl"), "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { step?: number; loss?: number })
        .filter((m) => m.loss !== undefined)
        .map((m) => m.step);
      expect([id, logged]).toEqual([id, Array.from({ length: 96 }, (_, i) => i + 1)]);
    }
  } finally {
    await store.close();
  }

  // the same sweep in one process: bit-identical checkpoints
  const refOut = tempDir("queue-ref");
  const ref = await openStore({ path: join(refOut, "s.db") });
  try {
    const r = await runSweep(spec("q", refOut, { durations: [1, 4] }), ref, join(refOut, "runs"));
    expect(r.failed).toEqual([]);
    for (const c of cells(s)) {
      const id = cellRunId(s, c);
      const file = c.method === "lora" ? "adapter_model.safetensors" : "model.safetensors";
      for (const step of ["step-000024", "step-000096"]) {
        const rel = join(id, "checkpoints", step, file);
        expect([rel, sha(join(runs, rel))]).toEqual([rel, sha(join(refOut, "runs", rel))]);
      }
    }
  } finally {
    await ref.close();
  }
}, 300_000);

test("a cell that always fails lands in the dead-letter queue after its retries; the others complete", async () => {
  const url = await freshPostgresUrl("dead");
  const out = tempDir("queue-dead");
  // rank 9999 exceeds the tiny model: refused at every attempt
  const s = spec("d", out, {
    methods: ["lora"],
    lr: { lora: [3e-3] },
    ranks: [9999, 4],
    durations: [1],
    records_per_epoch: 16,
  });
  await enqueueSweep(s, join(out, "runs"), { url, retries: 1, retryDelaySeconds: 1 });
  worker(url);
  worker(url);
  const st = await waitForSweep(s, { url, pollMs: 300 });
  expect(st.byState.completed).toBe(1);
  expect(st.dead.map((d) => d.cell)).toEqual(["lora-r9999-a19998-all-lr3e-3-s0"]);
  expect(st.dead[0]!.error).toMatch(/exceeds min/);
}, 300_000);

test("a slot that fails 3 jobs in a row pauses, restarts and pauses twice as long; a job's own refusal does not count; a GPU slot without a CUDA sidecar is refused at the start", async () => {
  const url = await freshPostgresUrl("breaker");
  const out = tempDir("queue-breaker");
  const many = (name: string, ranks: number[], n: number) =>
    spec(name, out, {
      methods: ["lora"],
      lr: { lora: Array.from({ length: n }, (_, i) => (i + 3) * 1e-3) },
      ranks,
      durations: [1],
      records_per_epoch: 16,
    });
  // seven cells on a slot whose runs directory cannot be made (a broken disk): every job fails
  // for the slot's sake; no retries
  const broken = many("b", [4], 7);
  await enqueueSweep(broken, join(out, "runs"), { url, retries: 0, retryDelaySeconds: 1 });
  const lines: string[] = [];
  const times: number[] = [];
  const stop = new AbortController();
  const w = runWorker({
    url,
    devices: ["cpu"],
    runsDir: "/dev/null/runs",
    breakerPauseSeconds: 1,
    signal: stop.signal,
    log: (l) => {
      lines.push(l);
      times.push(performance.now());
    },
  });
  const boss = await openQueue({ url });
  try {
    const st = await until("seven failed cells", 90_000, async () => {
      const x = await sweepState(broken, boss);
      return x.byState.failed === 7 ? x : undefined;
    });
    expect(st.byState).toEqual({ failed: 7 });
    const trips = lines.filter((l) => l.includes("jobs failed in a row"));
    expect(trips).toEqual([
      expect.stringMatching(/slot 0 \(cpu\): 3 jobs failed in a row: not taking jobs for 1 s \(the last: /),
      expect.stringMatching(/slot 0 \(cpu\): 3 jobs failed in a row: not taking jobs for 2 s \(the last: /),
    ]);
    // paused, the slot took nothing: the fourth job started at least the pause (1 s) after the
    // first trip, the seventh at least 2 s after the second
    const at = (re: RegExp) => lines.flatMap((l, i) => (re.test(l) ? [times[i]!] : []));
    const took = at(/\(attempt 1\)$/);
    const tripAt = at(/in a row/);
    expect(took.length).toBe(7);
    expect(took[3]! - tripAt[0]!).toBeGreaterThanOrEqual(1000);
    expect(took[6]! - tripAt[1]!).toBeGreaterThanOrEqual(2000);
    stop.abort();
    await w;

    // four cells refused for their own config (rank 9999 exceeds the tiny model): the slot is fine
    const refused = many("r", [9999], 4);
    await enqueueSweep(refused, join(out, "runs"), { url, retries: 0, retryDelaySeconds: 1 });
    const lines2: string[] = [];
    const stop2 = new AbortController();
    const w2 = runWorker({ url, devices: ["cpu"], signal: stop2.signal, log: (l) => lines2.push(l) });
    const st2 = await until("four refused cells", 60_000, async () => {
      const x = await sweepState(refused, boss);
      return x.byState.failed === 4 ? x : undefined;
    });
    expect(st2.dead.map((d) => d.error)).toEqual(Array(4).fill(expect.stringMatching(/exceeds min/)));
    expect(lines2.filter((l) => l.includes("in a row"))).toEqual([]);
    stop2.abort();
    await w2;
  } finally {
    stop.abort();
    await w;
    await boss.stop({ graceful: false });
  }

  const gpu = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", "worker", "--db", url, "--gpus", "0"], {
    cwd: root,
    env: { ...process.env, LORALAB_SIDECAR: sidecarPath("cpu") },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 60_000,
  });
  expect([gpu.exitCode, gpu.stderr.toString()]).toEqual([
    1,
    expect.stringMatching(
      /GPU 0: the sidecar \S+ is a CPU build \(devices: cpu\) \(hint: build the CUDA one with scripts\/build-cuda-sidecar.sh/,
    ),
  ]);
  // --gpus counts over the GPUs this process is given
  const masked = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", "worker", "--db", url, "--gpus", "2"], {
    cwd: root,
    env: { ...process.env, CUDA_VISIBLE_DEVICES: "5,7" },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 60_000,
  });
  expect([masked.exitCode, masked.stderr.toString()]).toEqual([
    2,
    expect.stringContaining("--gpus 2: this process sees 2 GPU(s) (CUDA_VISIBLE_DEVICES=5,7)"),
  ]);
}, 180_000);

test("a worker stopped mid-cell puts its job back as it was (no retry spent); the next worker resumes the run from its checkpoint", async () => {
  const url = await freshPostgresUrl("putback");
  const out = tempDir("queue-putback");
  // one cell of 96 steps (24 an epoch, a checkpoint at each)
  const s = spec("p", out, { methods: ["full"], lr: { full: [1e-3] }, durations: [1, 4] });
  const runs = join(out, "runs");
  await enqueueSweep(s, runs, { url, retries: 0, retryDelaySeconds: 1 });
  const id = cellRunId(s, cells(s)[0]!);
  const lines: string[] = [];
  const stop = new AbortController();
  const w = runWorker({ url, devices: ["cpu"], signal: stop.signal, log: (l) => lines.push(l) });
  await until("the first checkpoint", 60_000, () =>
    existsSync(join(runs, id, "checkpoints", "step-000024", "trainer_state.json")) ? true : undefined,
  );
  stop.abort();
  await w;
  expect(lines.at(-1)).toMatch(/stopping; 1 job\(s\) in hand put back in the queue \(no retry spent\)$/);
  const boss = await openQueue({ url });
  try {
    // retries: 0, so a counted attempt would have sent it to the dead-letter queue; pg-boss counts
    // the next start as a retry, and the limit is one higher for it
    const [job] = await boss.findJobs(CELL_QUEUE, { key: id });
    expect([job!.state, job!.retryCount, job!.retryLimit]).toEqual(["created", 0, 1]);
    expect(existsSync(join(runs, id, "checkpoints", "step-000096"))).toBe(false);
    const stop2 = new AbortController();
    const lines2: string[] = [];
    const w2 = runWorker({ url, devices: ["cpu"], signal: stop2.signal, log: (l) => lines2.push(l) });
    const st = await until("the cell completed", 90_000, async () => {
      const x = await sweepState(s, boss);
      return x.done ? x : undefined;
    });
    stop2.abort();
    await w2;
    expect([st.byState, st.dead, st.missing]).toEqual([{ completed: 1 }, [], []]);
    expect(lines2.filter((l) => l.includes(`${id} (attempt`)).length).toBe(1);
    const resumed = JSON.parse(readFileSync(join(runs, id, "config.json"), "utf8")).train.resume_from as string;
    expect(resumed).toMatch(/checkpoints\/step-0000\d\d$/);
    // completed jobs are kept for good: the report is drawn from them (pg-boss deletes after 7 days by default)
    expect((await boss.getQueue(CELL_QUEUE))?.deleteAfterSeconds).toBe(0);
    // and a job sent by an older loralab (pg-boss's 7 days, kept per job) is set to keep when a queue opens
    const db = boss.getDb();
    await db.executeSql("UPDATE pgboss.job SET deletion_seconds = 604800 WHERE name = $1", [CELL_QUEUE]);
    await (await openQueue({ url })).stop({ graceful: false });
    const kept = await db.executeSql("SELECT DISTINCT deletion_seconds FROM pgboss.job WHERE name = $1", [CELL_QUEUE]);
    expect(kept.rows).toEqual([{ deletion_seconds: 0 }]);
  } finally {
    await boss.stop({ graceful: false });
  }
}, 180_000);

/** Two JSON values equal, numbers to 1e-9 (relative). */
function close(a: unknown, b: unknown, path = "$"): string[] {
  if (typeof a === "number" && typeof b === "number")
    return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b)) ? [] : [`${path}: ${a} vs ${b}`];
  if (Array.isArray(a) && Array.isArray(b))
    return a.length !== b.length
      ? [`${path}: ${a.length} vs ${b.length} items`]
      : a.flatMap((x, i) => close(x, b[i], `${path}[${i}]`));
  if (a && b && typeof a === "object" && typeof b === "object") {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) =>
      close((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${path}.${k}`),
    );
  }
  return a === b ? [] : [`${path}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`];
}

test("`loralab sweep --queue` with a worker: the report's points equal the in-process sweep's to 1e-9", async () => {
  const url = await freshPostgresUrl("clisweep");
  const model = await tinyModel();
  const out = tempDir("queue-cli");
  const yaml = userSweepYaml("qs", model, out, "[1, 2]");
  writeFileSync(join(out, "spec.yaml"), yaml);
  const cli = (args: string[]) =>
    Bun.spawn([process.execPath, "packages/cli/src/main.ts", ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const queued = cli(["sweep", join(out, "spec.yaml"), "--queue", "--db", url, "--out", join(out, "queued")]);
  workers.push(queued);
  const w = worker(url);
  const [qOut, qErr, qCode] = await Promise.all([
    new Response(queued.stdout).text(),
    new Response(queued.stderr).text(),
    queued.exited,
  ]);
  expect([qCode, qErr.split("\n").filter((l) => l && !l.includes("bun run build:wasm"))]).toEqual([0, []]);
  expect(qOut).toContain("queued 2 of 2 cells (0 already queued or running)");
  expect(qOut).toMatch(/report: \S+ \(4 points\)/);
  // the worker evaluated and analysed every point (the base and the 4 checkpoints) as queue
  // jobs; the enqueuer only drew the report from their outputs
  expect(qOut).not.toMatch(/^eval /m);
  const pointsDone = await until("the points' lines", 10_000, () => {
    const d = w.lines.filter((l) => / point .* done in /.test(l));
    return d.length >= 5 ? d : undefined;
  });
  expect(pointsDone.length).toBe(5);
  expect(pointsDone.filter((l) => l.includes("point base done")).length).toBe(1);
  const status = Bun.spawnSync(
    [process.execPath, "packages/cli/src/main.ts", "sweep", "status", join(out, "spec.yaml"), "--db", url],
    { cwd: root, stdout: "pipe", stderr: "pipe" },
  );
  expect([status.exitCode, status.stdout.toString()]).toEqual([
    0,
    "sweep qs: 2 cells\n  completed: 2\n  points: 5 completed\n  nothing left to run\n",
  ]);
  // one slot: the base's point first, and each cell's points (priority 1) before the next cell
  const order = w.lines
    .filter((l) => /\(attempt \d+\)$/.test(l))
    .map((l) => l.replace(/^.*? slot 0 \(cpu\): /, "").replace(/ \(attempt \d+\)$/, ""));
  expect(order).toEqual([
    "point base",
    "qs-full-lr1e-3-s0",
    "point qs-full-lr1e-3-s0 @ 1",
    "point qs-full-lr1e-3-s0 @ 2",
    "qs-lora-r4-a8-all-lr3e-3-s0",
    "point qs-lora-r4-a8-all-lr3e-3-s0 @ 1",
    "point qs-lora-r4-a8-all-lr3e-3-s0 @ 2",
  ]);
  // a point job gone from the queue's tables is named, and waiting for it fails at once; the
  // sweep enqueued again sends it again (the cells are skipped, the point read from its cache)
  const spec = loadStudySpec(join(out, "spec.yaml"));
  const boss = await openQueue({ url });
  try {
    const jobs = await boss.findJobs<{ kind?: string; checkpoint?: { runId: string; duration: number } | null }>(
      CELL_QUEUE,
      { data: { spec: { name: "qs" } } },
    );
    const gone = jobs.find((j) => j.data.checkpoint?.runId === "qs-full-lr1e-3-s0" && j.data.checkpoint.duration === 1);
    await boss.deleteJob(CELL_QUEUE, gone!.id);
  } finally {
    await boss.stop({ graceful: false });
  }
  const status2 = Bun.spawnSync(
    [process.execPath, "packages/cli/src/main.ts", "sweep", "status", join(out, "spec.yaml"), "--db", url],
    { cwd: root, stdout: "pipe", stderr: "pipe" },
  );
  expect(status2.stdout.toString()).toContain(
    "  points: 4 completed\n  missing: full-lr1e-3-s0 @ 1: not in the queue (enqueue the sweep again: only what is missing is sent)\n",
  );
  await expect(waitForSweep(spec, { url, pollMs: 300 })).rejects.toThrow(
    /1 job\(s\) are not in the queue \(full-lr1e-3-s0 @ 1\)/,
  );
  await enqueueSweep(spec, join(out, "queued", "runs"), { url });
  const healed = await waitForSweep(spec, { url, pollMs: 300 });
  expect([healed.byState, healed.points, healed.missing]).toEqual([{ completed: 2 }, { completed: 5 }, []]);
  expect((await queuedPoints(spec, { url })).points.length).toBe(4);

  // the same spec in one process, with its own SQLite store
  const local = cli(["sweep", join(out, "spec.yaml"), "--out", join(out, "local")]);
  expect(await local.exited).toBe(0);
  const points = (d: string) => JSON.parse(readFileSync(join(out, d, "points.json"), "utf8"));
  expect(close(points("queued"), points("local"))).toEqual([]);
  // a queued sweep needs Postgres
  const bad = Bun.spawnSync(
    [process.execPath, "packages/cli/src/main.ts", "sweep", join(out, "spec.yaml"), "--queue", "--db", "x.db"],
    {
      cwd: root,
      stderr: "pipe",
    },
  );
  expect([bad.exitCode, bad.stderr.toString()]).toEqual([2, expect.stringContaining("need the Postgres store")]);
}, 600_000);
