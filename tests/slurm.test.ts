// Sweeps on Slurm: `loralab sweep SPEC --slurm` against a real single-node Slurm started by the
// test (tests/slurm.ts: slurm-wlm and munge from apt) and the Postgres store (tests/pg.ts). The
// array's tasks train the cells; the report drawn after them equals the in-process sweep's.
import { afterAll, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freshPostgresUrl } from "./pg.ts";
import { root, tempDir, tinyModel } from "./helpers.ts";
import { slurmEnv, stopSlurm } from "./slurm.ts";

afterAll(stopSlurm);
import { userSweepYaml } from "./sweeps.ts";

test("`loralab sweep --slurm`: an sbatch array trains the cells; the points equal the in-process sweep's", async () => {
  const env = await slurmEnv();
  const url = await freshPostgresUrl("slurm");
  const model = await tinyModel();
  const out = tempDir("slurm-sweep");
  writeFileSync(join(out, "spec.yaml"), userSweepYaml("ss", model, out, "[1, 2]"));
  const cli = (args: string[]) =>
    Bun.spawn([process.execPath, "packages/cli/src/main.ts", ...args], {
      cwd: root,
      env: { ...process.env, ...env },
      stdout: "pipe",
      stderr: "pipe",
    });
  const p = cli([
    "sweep",
    join(out, "spec.yaml"),
    "--slurm",
    "--db",
    url,
    "--out",
    join(out, "slurm"),
    "--parallel",
    "2",
  ]);
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  expect([code, stderr.split("\n").filter((l) => l && !l.includes("bun run build:wasm"))]).toEqual([0, []]);
  expect(stdout).toMatch(/submitted Slurm job \d+: 2 array tasks/);
  expect(stdout).toMatch(/report: \S+ \(4 points\)/);
  // the script: an array over the cells, at most 2 at once, requeued on preemption, no secret in it
  const script = readFileSync(join(out, "slurm", "slurm", "cells.sbatch"), "utf8");
  expect(script).toContain("#SBATCH --array=0-1%2");
  expect(script).toContain("#SBATCH --requeue");
  expect(script).not.toContain(url);
  expect(readFileSync(join(out, "slurm", "slurm", "cell-0.log"), "utf8")).toContain("cell 0: full-lr1e-3-s0");
  // the same spec in one process
  const local = cli(["sweep", join(out, "spec.yaml"), "--out", join(out, "local")]);
  expect(await local.exited).toBe(0);
  const points = (d: string) => JSON.parse(readFileSync(join(out, d, "points.json"), "utf8")) as unknown;
  expect(JSON.stringify(points("slurm"))).toBe(JSON.stringify(points("local")));
}, 600_000);

test("a preempted array task (`sweep cell` sent SIGTERM, as Slurm does) stops at a checkpoint; requeued, it resumes from it", async () => {
  const url = await freshPostgresUrl("preempt");
  const model = await tinyModel();
  const out = tempDir("slurm-preempt");
  // 96 steps (24 an epoch): time to be stopped between the first checkpoint and the last
  const yaml = userSweepYaml("sp", model, out, "[1, 4]").replace("records_per_epoch: 8", "records_per_epoch: 96");
  writeFileSync(join(out, "spec.yaml"), yaml);
  const task = () =>
    Bun.spawn(
      [
        process.execPath,
        "packages/cli/src/main.ts",
        "sweep",
        "cell",
        join(out, "spec.yaml"),
        "0",
        "--out",
        out,
        "--db",
        url,
      ],
      { cwd: root, stdout: "pipe", stderr: "pipe" },
    );
  const run = join(out, "runs", "sp-full-lr1e-3-s0");
  const first = task();
  const t0 = Date.now();
  while (!existsSync(join(run, "checkpoints", "step-000024", "trainer_state.json"))) {
    if (Date.now() - t0 > 120_000) throw new Error("no first checkpoint in 2 min");
    await Bun.sleep(20);
  }
  first.kill("SIGTERM");
  const [code, err] = await Promise.all([first.exited, new Response(first.stderr).text()]);
  expect([code, err]).toEqual([143, expect.stringContaining("stopped by a signal after a checkpoint")]);
  const stopped = readdirSync(join(run, "checkpoints")).sort().pop()!;
  expect(stopped > "step-000024" && stopped < "step-000096").toBe(true);
  // the requeued task: the same command, resumed from the checkpoint the signal left
  const again = task();
  expect(await again.exited).toBe(0);
  expect(JSON.parse(readFileSync(join(run, "config.json"), "utf8")).train.resume_from).toEndWith(stopped);
  const steps = readFileSync(join(run, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { step?: number; loss?: number })
    .filter((m) => m.loss !== undefined)
    .map((m) => m.step);
  expect(steps).toEqual(Array.from({ length: 96 }, (_, i) => i + 1));
  // and it scored its checkpoints on the task (the submitter reads them from beside them)
  expect(
    readdirSync(join(run, "checkpoints", "step-000096")).filter((f) => /^study-point-[0-9a-f]{12}\.json$/.test(f)),
  ).toHaveLength(1);
}, 300_000);
