// `loralab bench sweep`: a 6-cell tiny sweep on the pg-boss queue with 1, 2 and 3 worker
// processes, measured side by side in one run (fresh database each), then once more with a
// worker SIGKILLed at its first checkpoint. Prints the wall time per worker count, the queue's
// own work per cell (1 worker: wall time minus the cells' own training time, over the cells),
// and the recovery time (SIGKILL to the cell's second attempt starting on another worker).
// Postgres: $DATABASE_URL (a database the bench may fill), else Debian's postgresql started on
// 127.0.0.1 as the tests start it (tests/pg.ts).
import { join } from "node:path";
import { enqueueSweep, openQueue, waitForSweep } from "@loralab/study";
import { freshPostgresUrl } from "../tests/pg.ts";
import { tempDir } from "../tests/helpers.ts";
import { midRunVictim, SIX_CELLS, spawnWorker, tinySweep, type WorkerProcess } from "../tests/sweeps.ts";

const spec = (out: string) => tinySweep("bench", out, SIX_CELLS);
const worker = spawnWorker;
type Worker = WorkerProcess;

async function database(label: string): Promise<string> {
  if (!process.env.DATABASE_URL) return freshPostgresUrl(label);
  // a database of the given server per configuration, so runs do not see each other
  const postgres = (await import("postgres")).default;
  const admin = postgres(process.env.DATABASE_URL, { max: 1, onnotice: () => {} });
  const name = `bench_${label}_${Math.random().toString(36).slice(2, 8)}`;
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.end();
  return process.env.DATABASE_URL.replace(/\/[^/]*$/, `/${name}`);
}

async function once(n: number, kill: boolean): Promise<{ wall: number; trained: number; recovery?: number }> {
  const url = await database(`w${n}${kill ? "k" : ""}`);
  const out = tempDir("bench-sweep");
  const s = spec(out);
  // the queue's schema is made before the clock starts (a one-time cost per database)
  await (await openQueue({ url })).stop({ graceful: false });
  const ws = Array.from({ length: n }, () => worker(url));
  // every worker polling before the cells are sent
  while (!ws.every((w) => w.lines.some((l) => l.includes(": ready,")))) await Bun.sleep(50);
  const t0 = performance.now();
  console.error(`bench sweep: ${n} worker(s)${kill ? ", one killed" : ""}: polling; sending the cells`);
  await enqueueSweep(s, join(out, "runs"), { url, retryDelaySeconds: 1 });
  let recovery: number | undefined;
  if (kill) {
    let found: readonly [Worker, string] | undefined;
    while (!found) {
      found = midRunVictim(s, join(out, "runs"), ws, "step-000024", "step-000048");
      await Bun.sleep(20);
    }
    const [victim, id] = found;
    // its attempts on the other workers so far (the victim's own lines may still be in its pipe)
    const attempts = () =>
      ws
        .filter((w) => w !== victim)
        .flatMap((w) => w.lines)
        .filter((l) => l.includes(`${id} (attempt `)).length;
    const before = attempts();
    victim.p.kill(9);
    const killed = performance.now();
    while (attempts() === before) await Bun.sleep(20);
    recovery = (performance.now() - killed) / 1000;
  }
  await waitForSweep(s, { url, pollMs: 100 });
  const wall = (performance.now() - t0) / 1000;
  await Bun.sleep(300); // the last lines through the pipes
  const trained = ws
    .flatMap((w) => w.lines)
    .map((l) => / done in ([\d.]+) s$/.exec(l))
    .filter(Boolean)
    .reduce((a, m) => a + Number(m![1]), 0);
  for (const w of ws) w.p.kill(9);
  return { wall, trained, recovery };
}

const rows: string[] = [];
const results: Record<number, { wall: number; trained: number }> = {};
for (const n of [1, 2, 3]) {
  const r = await once(n, false);
  results[n] = r;
  rows.push(
    `${n} worker${n > 1 ? "s" : " "}  ${r.wall.toFixed(1).padStart(6)} s  ${(results[1]!.wall / r.wall).toFixed(2)}x`,
  );
}
const k = await once(3, true);
const cells = 6;
const overhead = (results[1]!.wall - results[1]!.trained) / cells;
console.log("bench sweep: 6 tiny cells (2 epochs of 24 steps each), one database per configuration");
console.log("workers      wall     vs 1 worker");
for (const r of rows) console.log(r);
console.log(
  `queue work per cell (1 worker: wall - the cells' own ${results[1]!.trained.toFixed(1)} s, over ${cells} cells): ${overhead.toFixed(2)} s (enqueue, claim, polling, completion; a sidecar's start counts as the cell's)`,
);
console.log(
  `recovery: a worker SIGKILLed at its cell's first checkpoint; that cell starts again on another worker ${k.recovery!.toFixed(1)} s later (heartbeat 10 s, supervise pass 5 s); whole sweep ${k.wall.toFixed(1)} s`,
);
process.exit(0);
