// Runs trained outside the server reach its store: the scan `createServer` makes of its runs
// directory at start (with the run's eval results and spectra, skipping what is not a finished
// run, never re-reading a known one) and `loralab import RUN_DIR...` from the CLI, idempotent.
import { beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { scanRunsDir } from "@loralab/server";
import { analyzeRun, createServer, evaluateRun, openStore, train, type RunSummary } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

const TOKEN = "import-token";
const auth = { Authorization: `Bearer ${TOKEN}` };
let out: string;
let runs: string;
let trained: RunSummary;

function cli(args: string[]) {
  const p = Bun.spawnSync([process.execPath, join(root, "packages/cli/src/main.ts"), ...args], {
    cwd: out,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, DATABASE_URL: "" },
  });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

beforeAll(async () => {
  out = tempDir("import");
  runs = join(out, "runs");
  // a run as `loralab train` leaves it, then `loralab eval --run` and `loralab analyze --run`
  trained = await train(
    tinyConfig(runs, {
      run_id: "cli-lora",
      method: { kind: "lora", rank: 4 },
      data: { cache_dir: join(out, "cache") },
      train: { steps: 4, checkpoint_every: 2 },
    }),
  );
  const prev = process.env.LORALAB_CACHE;
  process.env.LORALAB_CACHE = join(out, "cache");
  await evaluateRun(trained.run_dir, {
    tasks: ["arc_challenge"],
    data: { arc_challenge: join(root, "tests/fixtures/eval/arc_challenge") },
    limit: 2,
  });
  if (prev === undefined) delete process.env.LORALAB_CACHE;
  else process.env.LORALAB_CACHE = prev;
  await analyzeRun(trained.run_dir, { modules: ["q_proj"], layers: [0], thresholds: [0.5, 0.9], spectra: false });
  // what else a runs directory holds: a run still training elsewhere, a folder and a file that are not runs
  cpSync(trained.run_dir, join(runs, "live"), { recursive: true });
  const live = JSON.parse(readFileSync(join(runs, "live", "run.json"), "utf8"));
  writeFileSync(join(runs, "live", "run.json"), JSON.stringify({ ...live, run_id: "live", status: "running" }));
  mkdirSync(join(runs, "not-a-run"));
  writeFileSync(join(runs, "notes.txt"), "not a run");
}, 120_000);

describe("import", () => {
  test("the server's start-up scan: /api/runs lists the CLI run with its status, metrics, eval and spectrum results", async () => {
    const db = join(out, "server.db");
    const logs: string[] = [];
    let ownId = "";
    const srv = await createServer({
      store: { path: db },
      runsDir: runs,
      roots: [root, out],
      token: TOKEN,
      log: (m) => logs.push(m),
    });
    const req = (path: string, init: RequestInit = {}) =>
      srv.app.request(path, { ...init, headers: { ...auth, "Content-Type": "application/json" } });
    try {
      expect(srv.imported.map((r) => [r.action, "id" in r ? r.id : r.dir])).toEqual([
        ["imported", "cli-lora"],
        ["skipped", "live"],
      ]);
      expect(logs.join("\n")).toContain("imported 1 run");
      const list = (await (await req("/api/runs")).json()) as {
        id: string;
        status: string;
        method: string;
        runDir?: string;
        startedAt: string | null;
        finishedAt: string | null;
      }[];
      expect(list.map((r) => [r.id, r.status, r.method])).toEqual([["cli-lora", "completed", "lora"]]);
      expect(list[0]!.runDir).toBeUndefined();
      expect(list[0]!.startedAt).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      expect(list[0]!.finishedAt).toBeTruthy();
      const loss = await (await req("/api/runs/cli-lora/metrics?name=loss")).json();
      expect(loss.map((m: { step: number }) => m.step)).toEqual([1, 2, 3, 4]);
      const res = await (await req("/api/runs/cli-lora/results")).json();
      expect(
        res.eval.some(
          (e: { checkpoint: string; task: string; metric: string }) =>
            e.checkpoint === "final" && e.task === "arc_challenge" && e.metric === "acc_norm",
        ),
      ).toBe(true);
      expect(res.eval.some((e: { checkpoint: string }) => e.checkpoint === "base")).toBe(true);
      expect([...new Set(res.spectra.map((s: { checkpoint: string }) => s.checkpoint))]).toEqual([
        "step-000002",
        "step-000004",
      ]);
      expect(res.spectra.every((s: { module: string; layer: number }) => s.module === "q_proj" && s.layer === 0)).toBe(
        true,
      );
      const files = (await (await req("/api/runs/cli-lora/artifacts")).json()).map((a: { path: string }) => a.path);
      expect(files).toContain("adapter/adapter_model.safetensors");
      expect(files).toContain("eval.json");
      expect((await req("/api/runs/cli-lora/artifacts/eval.json")).status).toBe(200);

      // a run this server is training is not re-read under it, by a scan or by `loralab import`
      const cfg = tinyConfig(out, { method: { kind: "full" }, train: { steps: 2000, checkpoint_every: 0 } });
      delete cfg.out_dir;
      const own = await (await req("/api/runs", { method: "POST", body: JSON.stringify(cfg) })).json();
      ownId = own.id;
      for (;;) {
        const r = await (await req(`/api/runs/${own.id}`)).json();
        if (r.status === "running" && (await (await req(`/api/runs/${own.id}/metrics?name=loss`)).json()).length) break;
        await Bun.sleep(20);
      }
      expect(
        (await scanRunsDir(srv.store, runs, { isActive: (id) => srv.runner.isActive(id) })).map((r) => r.action),
      ).toEqual(["skipped"]); // only `live`
      const c = cli(["import", join(runs, own.id), "--db", db]);
      expect([c.code, c.out]).toEqual([0, expect.stringContaining(`skipped ${own.id}`)]);
      expect((await (await req(`/api/runs/${own.id}`)).json()).status).toBe("running");
      expect((await req(`/api/runs/${own.id}/cancel`, { method: "POST" })).status).toBe(202);
      while (!["cancelled", "completed", "failed"].includes((await (await req(`/api/runs/${own.id}`)).json()).status))
        await Bun.sleep(20);
    } finally {
      await srv.close();
    }
    // a restart reads nothing twice: the run is known, its rows are as they were
    const again = await createServer({
      store: { path: db },
      runsDir: runs,
      roots: [root, out],
      token: TOKEN,
      run: false,
      log: () => {},
    });
    try {
      expect(again.imported.map((r) => r.action)).toEqual(["skipped"]); // `live`, still running
      expect((await again.store.metrics("cli-lora", { name: "loss" })).length).toBe(4);
      expect((await again.store.listRuns()).map((r) => r.id).sort()).toEqual(["cli-lora", ownId].sort());
    } finally {
      await again.close();
    }
  }, 180_000);

  test("`loralab import RUN_DIR...` into a store, twice: the same rows, no duplicates", async () => {
    const help = cli(["import", "--help"]);
    expect(help.code).toBe(0);
    expect(help.out).toContain("usage: loralab import RUN_DIR...");
    const db = join(out, "cli.db");
    const first = cli(["import", trained.run_dir, "--db", db]);
    expect([first.code, first.err]).toEqual([0, ""]);
    expect(first.out).toMatch(
      /imported cli-lora ← .*\(completed; 4 logged steps, \d+ eval results, \d+ spectrum rows\)/,
    );
    const store = await openStore({ path: db });
    const counts = async () => [
      (await store.listRuns()).filter((r) => r.id === "cli-lora").length,
      (await store.metrics("cli-lora")).length,
      (await store.evalResults("cli-lora")).length,
      (await store.spectra("cli-lora")).length,
      (await store.artifacts("cli-lora")).length,
    ];
    const once = await counts();
    expect(once[0]).toBe(1);
    expect(once.every((n) => n > 0)).toBe(true);
    // again, and the whole runs directory: cli-lora refreshed, `live` skipped, the rest not runs
    // (the first test's server run, finished, is imported with it)
    const second = cli(["import", trained.run_dir, "--db", db]);
    expect([second.code, second.out]).toEqual([0, expect.stringContaining("updated cli-lora")]);
    const all = cli(["import", runs, "--db", db]);
    expect(all.code).toBe(0);
    expect(all.out).toContain("updated cli-lora");
    expect(all.out).toContain("skipped live");
    expect(await counts()).toEqual(once);
    expect((await store.getRun("cli-lora"))!.status).toBe("completed");
    await store.close();
    // not a run directory: said so, exit 1
    const bad = cli(["import", join(runs, "not-a-run"), "--db", db]);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain("not a run directory (no run.json)");
  }, 120_000);
});
