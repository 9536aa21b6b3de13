// Sweeps on a real job queue (pg-boss on a Postgres started on 127.0.0.1 by tests/pg.ts): a
// 6-cell sweep trained by 3 `loralab worker` processes, one of them SIGKILLed mid-cell, whose
// cell is retried on another worker and resumes from its checkpoint; every cell trained, every
// step in the store once, the weights bit-identical to a single-process sweep's; a cell that
// always fails lands in the dead-letter queue while the others complete; a second enqueue of
// the same sweep adds no job.
import { afterAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { sidecarPath } from "@loralab/engine";
import {
  cellRunId,
  cells,
  describeEta,
  enqueueSweep,
  openQueue,
  runSweep,
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

test("a slot that fails 3 jobs in a row stops taking jobs for a while; a GPU slot without a CUDA sidecar is refused at the start", async () => {
  const url = await freshPostgresUrl("breaker");
  const out = tempDir("queue-breaker");
  // four cells refused at every attempt (rank 9999 exceeds the tiny model), no retries
  const s = spec("b", out, {
    methods: ["lora"],
    lr: { lora: [3e-3, 4e-3, 5e-3, 6e-3] },
    ranks: [9999],
    durations: [1],
    records_per_epoch: 16,
  });
  await enqueueSweep(s, join(out, "runs"), { url, retries: 0, retryDelaySeconds: 1 });
  const w = worker(url);
  await until("the breaker", 60_000, () => w.lines.find((l) => l.includes("3 jobs failed in a row")));
  expect(w.lines.find((l) => l.includes("3 jobs failed in a row"))).toMatch(
    /slot 0 \(cpu\): 3 jobs failed in a row: not taking jobs for 60 s \(the last: .*exceeds min/,
  );
  await Bun.sleep(3000); // polling every 0.5 s: a slot still working would have taken the fourth
  const boss = await openQueue({ url });
  try {
    const st = await sweepState(s, boss);
    expect(st.byState).toEqual({ failed: 3, created: 1 });
  } finally {
    await boss.stop({ graceful: false });
  }
  w.p.kill(9);

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
}, 120_000);

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
