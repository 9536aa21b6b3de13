// Experiment trackers through their own clients, read back by their own readers: an MLflow
// tracking server (pip's mlflow) started here on 127.0.0.1 and read back with MLflow's client;
// TensorBoard's event files read back with tensorboard's EventAccumulator; wandb offline, read
// back with wandb's own datastore reader (tests/reference/trackers_read.py). A tracker that
// fails warns once and the run goes on.
import { afterAll, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { train, trainWithEval } from "loralab";
import { root, tempDir, testPython, tinyConfig } from "./helpers.ts";

const servers: ReturnType<typeof Bun.spawn>[] = [];
afterAll(() => {
  for (const s of servers) {
    try {
      process.kill(-s.pid!, "SIGKILL");
    } catch {}
  }
});

function freePort(): Promise<number> {
  return new Promise((ok, no) => {
    const s = createServer();
    s.once("error", no);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
  });
}

/** `mlflow server` on 127.0.0.1 in its own process group (it forks workers), with a SQLite store
 *  and the artifacts it serves under `dir`. */
async function mlflowServer(python: string, dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const p = Bun.spawn(
    [
      "setsid",
      python,
      "-m",
      "mlflow",
      "server",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--backend-store-uri",
      `sqlite:///${join(dir, "mlflow.db")}`,
      "--artifacts-destination",
      join(dir, "mlartifacts"),
      "--workers",
      "1",
    ],
    { cwd: dir, stdout: "ignore", stderr: "pipe" },
  );
  servers.push(p);
  const url = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    const up = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (up) break;
    if (p.exitCode !== null || Date.now() - t0 > 180_000)
      throw new Error(`mlflow server did not come up: ${await new Response(p.stderr).text()}`);
    await Bun.sleep(500);
  }
  return {
    url,
    async stop() {
      process.kill(-p.pid, "SIGTERM");
      await p.exited;
    },
  };
}

test("a run logs to MLflow, TensorBoard and wandb: each read back with its own reader has the params, every step's loss, validation, the scores while it trained, artifacts and the end", async () => {
  const python = testPython();
  const out = tempDir("track");
  const server = await mlflowServer(python, out);
  try {
    const tiny = join(root, "datasets/tiny");
    const cfg = tinyConfig(join(out, "runs"), {
      run_id: "tracked",
      name: "tracked",
      method: { kind: "lora", rank: 4, alpha: 8 },
      data: { validation: join(tiny, "code.jsonl") },
      train: {
        steps: 6,
        checkpoint_every: 2,
        eval_every: 3,
        // scored while it trains: the base, then steps 3 and 6
        eval_tasks: ["winogrande"],
        eval_limit: 3,
        eval_data: { winogrande: join(root, "tests/fixtures/eval/winogrande") },
      },
      track: ["tensorboard", "mlflow", "wandb"],
      tracking: { mlflow_uri: server.url, wandb_dir: join(out, "wandb") },
    });
    const warnings: string[] = [];
    const prev = process.env.LORALAB_PYTHON;
    process.env.LORALAB_PYTHON = python;
    let s: Awaited<ReturnType<typeof trainWithEval>>;
    try {
      s = await trainWithEval(cfg, { onWarning: (w) => warnings.push(w) });
    } finally {
      if (prev === undefined) delete process.env.LORALAB_PYTHON;
      else process.env.LORALAB_PYTHON = prev;
    }
    expect([s.status, warnings]).toEqual(["completed", []]);
    const lines = readFileSync(join(s.run_dir, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { step: number; loss?: number; val_loss?: number });
    const losses = lines.filter((l) => l.loss !== undefined).map((l) => [l.step, l.loss!]);
    const vals = lines.filter((l) => l.val_loss !== undefined).map((l) => [l.step, l.val_loss!]);
    expect(losses.map(([st]) => st)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(vals.map(([st]) => st)).toEqual([3, 6]);
    const scores = s.evals.map((e) => [e.step, e.forgetting!]);
    const accs = s.evals.map((e) => [e.step, e.tasks.winogrande!.acc!]);
    expect(scores.map(([st]) => st)).toEqual([0, 3, 6]);

    const read = Bun.spawnSync(
      [
        python,
        join(root, "tests/reference/trackers_read.py"),
        server.url,
        "tracked",
        join(s.run_dir, "tensorboard"),
        join(out, "wandb"),
      ],
      { stdout: "pipe", stderr: "pipe", env: { ...process.env, WANDB_SILENT: "true" } },
    );
    expect([read.exitCode, read.exitCode ? read.stderr.toString().slice(-2000) : ""]).toEqual([0, ""]);
    const got = JSON.parse(read.stdout.toString());

    // MLflow: one run, finished, its config as params, every step's loss and the validation exactly
    const ml = got.mlflow;
    expect([ml.runs, ml.status, ml.tags]).toEqual([1, "FINISHED", { "loralab.run_id": "tracked" }]);
    expect([
      ml.params["method.rank"],
      ml.params["method.kind"],
      ml.params["optim.lr"],
      ml.params["train.steps"],
    ]).toEqual(["4", "lora", "0.001", "6"]);
    expect(ml.metrics["train/loss"]).toEqual(losses);
    expect(ml.metrics["val/loss"]).toEqual(vals);
    expect(ml.metrics["train/lr"].length).toBe(6);
    expect(ml.metrics["eval/forgetting"]).toEqual(scores);
    expect(ml.metrics["eval/winogrande/acc"]).toEqual(accs);
    expect(ml.artifacts).toEqual(
      expect.arrayContaining([
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "config.json",
        "metrics.jsonl",
      ]),
    );
    // the adapter uploaded is the adapter written, byte for byte (the server's artifact store)
    const stored = new Bun.Glob("**/adapter/adapter_model.safetensors").scanSync(join(out, "mlartifacts"));
    const [one, ...more] = [...stored];
    expect(more).toEqual([]);
    expect(
      readFileSync(join(out, "mlartifacts", one!)).equals(readFileSync(join(s.output, "adapter_model.safetensors"))),
    ).toBe(true);

    // TensorBoard: float32 scalars by step, the config as text
    const tb = got.tensorboard;
    expect(tb.scalars["train/loss"]).toEqual(losses.map(([st, v]) => [st, Math.fround(v!)]));
    expect(tb.scalars["val/loss"]).toEqual(vals.map(([st, v]) => [st, Math.fround(v!)]));
    expect(tb.scalars["eval/forgetting"]).toEqual(scores.map(([st, v]) => [st, Math.fround(v!)]));
    expect(JSON.parse(tb.texts.config.replace(/^```json\n|\n```$/g, "")).method.rank).toBe(4);
    expect(tb.texts.status).toBe("completed");

    // wandb (offline): the steps' rows, the config, the artifact, exit 0
    const wb = got.wandb;
    expect(wb.files).toBe(1);
    const rows = wb.history as Record<string, number>[];
    // each series by its own step (train/step, eval/step: W&B's steps only go forward, and the
    // scores come late, several at once at the end)
    expect(rows.filter((r) => "train/loss" in r).map((r) => [r["train/step"], r["train/loss"]])).toEqual(losses);
    expect(rows.filter((r) => "val/loss" in r).map((r) => [r["train/step"], r["val/loss"]])).toEqual(vals);
    expect(rows.filter((r) => "eval/forgetting" in r).map((r) => [r["eval/step"], r["eval/forgetting"]])).toEqual(
      scores,
    );
    expect(JSON.stringify(wb.config.method)).toContain('"rank":4');
    expect([wb.artifacts, wb.exit_code]).toEqual([["tracked-files"], 0]);
  } finally {
    await server.stop();
  }
}, 600_000);

test("a tracker that cannot log (no server, no wandb package) warns once and the run completes", async () => {
  const out = tempDir("track-down");
  const port = await freePort(); // nothing listens on it
  const cfg = tinyConfig(join(out, "runs"), {
    run_id: "down",
    track: ["mlflow", "wandb", "tensorboard"],
    tracking: { mlflow_uri: `http://127.0.0.1:${port}` },
  });
  const warnings: string[] = [];
  const prev = process.env.LORALAB_PYTHON;
  process.env.LORALAB_PYTHON = "/usr/bin/python3"; // the system's: no wandb
  try {
    const s = await train(cfg, { onWarning: (w) => warnings.push(w) });
    expect(s.status).toBe("completed");
    expect(warnings).toEqual([
      expect.stringMatching(/^tracker mlflow: .*not logging to it for the rest of this run \(the run goes on\)$/),
      expect.stringMatching(
        /^tracker wandb: the wandb Python package is not importable by \/usr\/bin\/python3 \(hint: pip install wandb/,
      ),
    ]);
    // the one that works still logged: its event file holds the header, the config and 6 steps
    const events = readdirSync(join(s.run_dir, "tensorboard"));
    expect(events).toEqual([expect.stringMatching(/^events\.out\.tfevents\.\d+\./)]);
    expect(statSync(join(s.run_dir, "tensorboard", events[0]!)).size).toBeGreaterThan(6 * 60);
  } finally {
    if (prev === undefined) delete process.env.LORALAB_PYTHON;
    else process.env.LORALAB_PYTHON = prev;
  }
  // a duplicate tracker or a tracking URI that is not http(s) is refused before anything runs
  await expect(train({ ...cfg, track: ["mlflow", "mlflow"] })).rejects.toThrow(/track: mlflow is listed twice/);
  await expect(train({ ...cfg, tracking: { mlflow_uri: "localhost:5000" } })).rejects.toThrow(
    /tracking.mlflow_uri: `localhost:5000`: an MLflow tracking server's http/,
  );
}, 120_000);
