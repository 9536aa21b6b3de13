// The sidecar (CPU build): its line-delimited JSON protocol answers as the in-process
// engine does, and its supervision never leaves Bun hanging: a killed worker marks the run
// interrupted and resumable, garbage or an early exit is a clear error, CUDA OOM names
// the config that caused it. CUDA itself is checked by scripts/gpu-check.sh on a GPU.
import { expect, test } from "bun:test";
import { join } from "node:path";
import {
  ConfigError,
  createServer,
  InProcessEngine,
  OutOfMemoryError,
  resolveConfig,
  RunInterrupted,
  Sidecar,
  SidecarCrashed,
  type SidecarError,
  sidecarPath,
  train,
  type TrainEvent,
} from "loralab";
import { Model } from "@loralab/eval";
import { metricLosses, root, tempDir, tinyConfig, tinyModel } from "./helpers.ts";

const fake = join(root, "tests/fixtures/fake-sidecar.sh");

test("the CPU sidecar is built and says ready with protocol 2", async () => {
  expect(sidecarPath("cpu")).toEndWith("release/loralab-sidecar");
  const s = await Sidecar.start({ path: sidecarPath("cpu") });
  expect(s.ready.protocol).toBe(2);
  expect(s.ready.devices).toEqual(["cpu"]);
  await s.shutdown();
  expect(await s.exited).toBe(0);
});

test("load / generate / loglik / count_tokens over the protocol equal the in-process engine", async () => {
  const model = await tinyModel();
  const s = await Sidecar.start({ path: sidecarPath("cpu") });
  try {
    const { engine, model_config } = await s.request<{ engine: string; model_config: { hidden_size: number } }>(
      "load",
      { model },
    ).result;
    const local = await Model.load({ model });
    expect(model_config.hidden_size).toBeGreaterThan(0);
    const prompts = ["def add(a, b):", "x = 1"];
    const options = { max_new_tokens: 6, temperature: 0.8, seed: 5 };
    expect(await s.request("generate", { engine, prompts, options }).result).toEqual(
      await local.generate(prompts, options),
    );
    const reqs = [
      { context: "def f(x):", continuation: " return x" },
      { context: "", continuation: "import os" },
    ];
    expect(await s.request("loglik", { engine, requests: reqs, batch_size: 2 }).result).toEqual(
      await local.loglikelihood(reqs, 2),
    );
    expect(await s.request("count_tokens", { engine, text: "return a + b" }).result).toBe(
      await local.countTokens("return a + b"),
    );
    // errors answer the request that caused them, and the worker goes on
    const missing = s.request("generate", { engine: "engine-9", prompts: ["x"] }).result;
    expect(missing).rejects.toThrow(/no engine `engine-9`.*hint/);
    await missing.catch((e) => expect((e as SidecarError).code).toBe("config"));
    expect(s.request("frobnicate").result).rejects.toThrow(/unknown op `frobnicate`/);
    expect(await s.request("unload", { engine }).result).toEqual({ unloaded: true });
  } finally {
    await s.shutdown();
  }
});

test("train through the sidecar equals in-process; analyze reports progress; cancel checkpoints", async () => {
  const out = tempDir("sidecar-train");
  const cfg = { method: { kind: "lora" as const, rank: 4 }, train: { steps: 4, checkpoint_every: 2 } };
  const local = await train(tinyConfig(out, { ...cfg, run_id: "local" }));
  const events: TrainEvent[] = [];
  const remote = await train(tinyConfig(out, { ...cfg, run_id: "remote" }), {
    sidecar: true,
    onEvent: (e) => events.push(e),
  });
  expect(remote.status).toBe("completed");
  expect(events.map((e) => e.type)).toEqual([
    "prepared",
    "start",
    "progress",
    "progress",
    "checkpoint",
    "progress",
    "progress",
    "checkpoint",
  ]);
  expect(await metricLosses(remote.run_dir)).toEqual(await metricLosses(local.run_dir));

  const s = await Sidecar.start({ path: sidecarPath("cpu") });
  const progress: unknown[] = [];
  const request = { base: join(out, "local/base"), adapter: local.output };
  const viaSidecar = await s.request("analyze", request, (p) => progress.push(p)).result;
  await s.shutdown();
  const inProcess = await new InProcessEngine().request("analyze", request);
  expect({ ...(viaSidecar as object), seconds: 0 }).toEqual({ ...inProcess, seconds: 0 });
  expect(progress.length).toBe((viaSidecar as { matrices: unknown[] }).matrices.length);

  const abort = new AbortController();
  const cancelled = await train(
    tinyConfig(out, { ...cfg, run_id: "cancelled", train: { steps: 50, checkpoint_every: 0 } }),
    {
      sidecar: true,
      signal: abort.signal,
      onProgress: (p) => p.step === 2 && abort.abort(),
    },
  );
  expect(cancelled.status).toBe("cancelled");
  expect(cancelled.steps).toBeLessThan(50);
  expect(cancelled.last_checkpoint).toContain(`step-${String(cancelled.steps).padStart(6, "0")}`);
});

test("SIGTERM to the sidecar (Slurm preempting, systemd stopping): the run stops after its step with a checkpoint, then the sidecar exits", async () => {
  const out = tempDir("sidecar-term");
  const cfg = tinyConfig(out, { run_id: "t", method: { kind: "full" }, train: { steps: 50, checkpoint_every: 0 } });
  let worker: Sidecar | undefined;
  const s = await train(cfg, {
    sidecar: { onStart: (w) => (worker = w) },
    onProgress: (p) => p.step === 3 && worker!.kill("SIGTERM"),
  });
  expect(s.status).toBe("cancelled");
  expect(s.steps).toBeGreaterThanOrEqual(3);
  expect(s.steps).toBeLessThan(50);
  expect(s.last_checkpoint).toEndWith(`step-${String(s.steps).padStart(6, "0")}`);
  // handled, not killed by it: a clean exit (a process the signal killed has no exit code)
  expect(await worker!.exited).toBe(0);
  // and it resumes from there to the end, each step logged once
  const resumed = await train({ ...cfg, train: { ...cfg.train, resume_from: s.last_checkpoint } });
  expect(resumed.status).toBe("completed");
  expect((await metricLosses(resumed.run_dir)).map(([st]) => st)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
}, 60_000);

test("a second SIGTERM exits the sidecar at once (143), without waiting for the step; device_probe computes on a device or says why not", async () => {
  const out = tempDir("sidecar-term2");
  // steps of 32 sequences (about 130 ms on 2 idle cores): the second signal comes mid-step
  const cfg = tinyConfig(out, {
    run_id: "t2",
    method: { kind: "full" },
    train: { steps: 500, checkpoint_every: 0, micro_batch: 32 },
  });
  let worker: Sidecar | undefined;
  let stepMs = 0;
  let t = 0;
  const err = await train(cfg, {
    sidecar: { onStart: (w) => (worker = w) },
    onProgress: (p) => {
      if (p.step === 2) t = performance.now();
      if (p.step !== 3) return;
      stepMs = performance.now() - t;
      // the second a third of a step after the first: after the sidecar has taken the first
      // (its signal thread wakes at once), well before the step ends
      worker!.kill("SIGTERM");
      setTimeout(() => worker!.kill("SIGTERM"), stepMs / 3);
    },
  }).catch((e) => e as Error);
  expect(stepMs).toBeGreaterThan(40);
  expect(err).toBeInstanceOf(Error);
  expect(await worker!.exited).toBe(143);

  const s = await Sidecar.start({ path: sidecarPath("cpu") });
  try {
    expect(await s.request("device_probe", { device: "cpu" }).result).toEqual({ device: "cpu", sum: 6 });
    await expect(s.request("device_probe", { device: "cuda:0" }).result).rejects.toThrow(/no CUDA \(hint/);
  } finally {
    await s.shutdown();
  }
}, 60_000);

test("killed mid-run: the run is interrupted, resumable from its last checkpoint, and Bun does not hang", async () => {
  const out = tempDir("sidecar-kill");
  const cfg = tinyConfig(out, { run_id: "k", method: { kind: "full" }, train: { steps: 8, checkpoint_every: 3 } });
  let worker: Sidecar | undefined;
  const t0 = performance.now();
  const err = await train(cfg, {
    sidecar: { onStart: (s) => (worker = s) },
    onProgress: (p) => p.step === 5 && worker!.kill("SIGKILL"),
  }).catch((e) => e as Error);
  expect(performance.now() - t0).toBeLessThan(60_000);
  expect(err).toBeInstanceOf(RunInterrupted);
  const ri = err as RunInterrupted;
  expect(ri.message).toMatch(/was killed \(SIGKILL\).*hint: resume with --train.resume_from=.*step-000003/s);
  expect(ri.lastCheckpoint).toEndWith("step-000003");
  expect((await Bun.file(join(out, "k/run.json")).json()).status).toBe("interrupted");
  const resumed = await train({ ...cfg, train: { ...cfg.train, resume_from: ri.lastCheckpoint } });
  expect(resumed.status).toBe("completed");
  expect((await metricLosses(resumed.run_dir)).map(([s]) => s)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
});

test("Model.load on a device other than cpu runs in the sidecar (here its CPU build refuses cuda with a hint)", async () => {
  const model = await tinyModel();
  await expect(Model.load({ model, device: "cuda" })).rejects.toThrow(/cannot open|no CUDA \(hint/);
});

test("a sidecar that exits at start, prints garbage, says nothing or speaks another protocol is a clear error", async () => {
  const start = (mode: string) => Sidecar.start({ path: fake, env: { FAKE_MODE: mode }, startTimeoutMs: 1500 });
  await expect(start("exit")).rejects.toThrow(
    /exited at start \(code 127\).*libcublas\.so\.13: cannot open shared object file/s,
  );
  await expect(start("garbage")).rejects.toThrow(/printed something that is not the protocol: "Segmentation fault/);
  await expect(start("silent")).rejects.toThrow(/said nothing within 1\.5 s/);
  await expect(start("old")).rejects.toThrow(/speaks protocol 0, this package speaks 2/);
  await expect(Sidecar.start({ path: "/nonexistent/loralab-sidecar" })).rejects.toThrow(
    /not found \(hint: `bun run setup`/,
  );

  // garbage after ready: pending requests fail, the process is stopped
  const s = await Sidecar.start({ path: fake, env: { FAKE_MODE: "midgarbage" } });
  await expect(s.request("load", {}).result).rejects.toThrow(
    /not the protocol: "WARNING: something printed on stdout"/,
  );
  expect(s.alive).toBe(false);
  await s.exited;

  // a crash (SIGSEGV) during a request rejects it with the worker's last stderr words
  const c = await Sidecar.start({ path: fake, env: { FAKE_MODE: "crash" } });
  const crash = await c.request("generate", { engine: "e" }).result.catch((e) => e as SidecarCrashed);
  expect(crash).toBeInstanceOf(SidecarCrashed);
  expect((crash as SidecarCrashed).signal).toBe("SIGSEGV");
  expect((crash as Error).message).toMatch(/killed \(SIGSEGV\).*illegal memory access.*during generate/s);
});

test("CUDA out of memory is reported as such, with the config that caused it", async () => {
  const out = tempDir("sidecar-oom");
  const err = await train(tinyConfig(out, { run_id: "oom", train: { device: "cuda", micro_batch: 64 } }), {
    sidecar: { path: fake, env: { FAKE_MODE: "oom" } },
  }).catch((e: Error) => e);
  expect(err).toBeInstanceOf(OutOfMemoryError);
  expect((err as Error).message).toMatch(/CUDA out of memory.*train.micro_batch = 64.*hint/);
  expect((err as OutOfMemoryError).config).toEqual({ train: { micro_batch: 64 } });
});

test("device names: cuda and cuda:N are valid config; the CPU sidecar refuses them with a hint", async () => {
  const out = tempDir("sidecar-device");
  expect(resolveConfig(tinyConfig(out, { train: { device: "cuda:1" } })).train.device).toBe("cuda:1");
  expect(() => resolveConfig(tinyConfig(out, { train: { device: "gpu" } }))).toThrow(/unknown device `gpu`/);
  const err = await train(tinyConfig(out, { run_id: "c", train: { device: "cuda" } }), {
    sidecar: { path: sidecarPath("cpu") },
  }).catch((e: ConfigError) => e);
  expect(err).toBeInstanceOf(ConfigError);
  expect((err as ConfigError).field).toBe("train.device");
  expect((err as ConfigError).message).toMatch(/no CUDA \(hint: .*build-cuda-sidecar\.sh/);
});

test("the server's runner: a cuda run whose sidecar dies is retried, then stored as failed with the reason", async () => {
  const out = tempDir("sidecar-runner");
  const saved = { path: process.env.LORALAB_SIDECAR, mode: process.env.FAKE_MODE };
  process.env.LORALAB_SIDECAR = fake;
  process.env.FAKE_MODE = "crash";
  const srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token: "t",
  });
  try {
    const cfg = tinyConfig(out, { train: { device: "cuda" } });
    delete cfg.out_dir;
    const row = await srv.runner.submit(cfg);
    expect(row.device).toBe("cuda");
    let run = await srv.store.getRun(row.id);
    for (let i = 0; i < 400 && !["failed", "completed"].includes(run!.status); i++) {
      await Bun.sleep(50);
      run = await srv.store.getRun(row.id);
    }
    // interrupted once (queued again to resume), then failed: the retry budget is 2 attempts
    expect(run!.status).toBe("failed");
    expect(run!.attempts).toBe(2);
    expect(run!.error).toMatch(
      /died in 2 of 2 attempts, the retry budget: .*killed \(SIGSEGV\).*illegal memory access/s,
    );
  } finally {
    await srv.close();
    process.env.LORALAB_SIDECAR = saved.path;
    process.env.FAKE_MODE = saved.mode;
    if (saved.path === undefined) delete process.env.LORALAB_SIDECAR;
    if (saved.mode === undefined) delete process.env.FAKE_MODE;
  }
});
