// The server process dies mid-run (SIGKILL): on restart the run is found interrupted and
// resumes from its last checkpoint; no step beyond that checkpoint is lost and no metric row
// is duplicated.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createServer, openStore } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

test("a run interrupted by the server's death resumes from its last checkpoint on restart", async () => {
  const out = tempDir("server-resume");
  const db = join(out, "store.db");
  const runs = join(out, "runs");
  const cfg = tinyConfig(out, {
    method: { kind: "lora", rank: 4 },
    train: { steps: 60, checkpoint_every: 10, micro_batch: 4 },
  });
  delete cfg.out_dir;
  const child = Bun.spawn(
    [process.execPath, join(root, "tests/fixtures/serve-child.ts"), db, runs, `${root},${out}`, JSON.stringify(cfg)],
    { cwd: root, stdout: "pipe", stderr: "inherit" },
  );
  const reader = child.stdout.getReader();
  const id = new TextDecoder().decode((await reader.read()).value).trim();
  expect(id).toMatch(/^r\d{14}-[0-9a-f]{6}$/);
  // watch the store from here (WAL: a second connection reads while the child writes)
  const watcher = await openStore({ path: db });
  for (;;) {
    const steps = (await watcher.metrics(id, { name: "loss" })).map((m) => m.step);
    if (steps.length && Math.max(...steps) >= 23) break;
    await Bun.sleep(20);
  }
  child.kill(9);
  await child.exited;
  const before = (await watcher.metrics(id, { name: "loss" })).length;
  expect((await watcher.getRun(id))!.status).toBe("running"); // as the dead process left it
  await watcher.close();
  expect(before).toBeGreaterThanOrEqual(23);

  const srv = await createServer({ store: { path: db }, runsDir: runs, roots: [root, out], token: "t" });
  expect(srv.resumed).toEqual([id]);
  let run = await srv.store.getRun(id);
  for (;;) {
    run = await srv.store.getRun(id);
    if (run!.status === "completed" || run!.status === "failed") break;
    await Bun.sleep(50);
  }
  expect([run!.status, run!.error]).toEqual(["completed", null]);
  expect(run!.attempts).toBe(2);
  // it resumed from the checkpoint at step 20: the engine says so in run's metrics file, and the
  // store holds each step once
  const loss = await srv.store.metrics(id, { name: "loss" });
  expect(loss.map((m) => m.step)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
  const lines = readFileSync(join(runs, id, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l).step);
  expect(lines).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
  const resumedFrom = (run!.config as { train: { resume_from: string } }).train.resume_from;
  expect(resumedFrom).toMatch(/checkpoints\/step-0000[2-9]0$/);
  await srv.close();
}, 180_000);
