// loralab as another Bun app uses it: one import, five calls.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { analyze, createServer, evaluate, openStore, train } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

test("import { train, evaluate, analyze, openStore, createServer } from 'loralab'", async () => {
  const out = tempDir("library");
  // train a LoRA adapter
  const run = await train(
    tinyConfig(out, { run_id: "app", method: { kind: "lora", rank: 4 }, train: { steps: 3, checkpoint_every: 0 } }),
  );
  expect(run.status).toBe("completed");
  // what it forgot, next to its base
  const fx = join(root, "tests/fixtures/eval");
  const ev = await evaluate({
    model: join(run.run_dir, "base"),
    adapter: run.output,
    tasks: ["arc_challenge"],
    data: { arc_challenge: join(fx, "arc_challenge") },
    limit: 3,
  });
  expect(ev.tasks.arc_challenge!.docs).toBe(3);
  // why: the spectrum of its weight change
  const spec = await analyze(
    { base: join(run.run_dir, "base"), adapter: run.output },
    { modules: ["q_proj"], layers: [0] },
  );
  expect(spec.matrices[0]!.delta.numerical_rank).toBeLessThanOrEqual(4);
  // keep it
  const store = await openStore({ path: join(out, "app.db") });
  expect(await store.ingestRunDir(run.run_dir)).toBe("app");
  // serve it
  const server = await createServer({ store, runsDir: join(out, "runs"), token: "app-token", run: false });
  const res = await server.fetch(
    new Request("http://localhost/api/runs/app", { headers: { Authorization: "Bearer app-token" } }),
  );
  expect(res.status).toBe(200);
  expect((await res.json()).status).toBe("completed");
  await server.close();
}, 120_000);

/** The files a fresh Bun process has loaded after importing `spec`. */
function loadedBy(spec: string): string[] {
  const code = `await import(${JSON.stringify(spec)}); console.log(JSON.stringify(Object.keys(require.cache)))`;
  const p = Bun.spawnSync([process.execPath, "-e", code], { cwd: root, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`import(${spec}) failed: ${p.stderr.toString()}`);
  return JSON.parse(p.stdout.toString()) as string[];
}

test("importing 'loralab' loads no store, server or Parquet code; 'loralab/core' only the engine", () => {
  const heavy =
    /\/node_modules\/(hono|drizzle-orm|postgres|hyparquet|hyparquet-compressors)\/|\/packages\/(db|server)\//;
  expect(loadedBy("loralab").filter((f) => heavy.test(f))).toEqual([]);
  const core = loadedBy("loralab/core").filter(
    (f) => /\/packages\/(eval|spectrum|report|study)\//.test(f) || heavy.test(f),
  );
  expect(core).toEqual([]);
  // and the entry points that do load them still work
  expect(loadedBy("loralab/store").some((f) => f.includes("/drizzle-orm/"))).toBe(true);
  expect(loadedBy("loralab/server").some((f) => f.includes("/hono/"))).toBe(true);
});
