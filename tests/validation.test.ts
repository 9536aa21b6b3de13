// Validation during training (data.validation, train.eval_every): the held-out loss logged with
// its step, the best checkpoint kept (train.keep_best) while older ones are pruned
// (train.keep_checkpoints), an early stop on validation-loss patience, and
// train.resume_from = "latest" for a command that serves every attempt of a preemptible job.
import { expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { ConfigError, resolveConfig, train, type ValidationEvent } from "@loralab/engine";
import { root, tempDir, tinyConfig, tinyModel } from "./helpers.ts";

const tiny = join(root, "datasets/tiny");

const valLines = (runDir: string) =>
  readFileSync(join(runDir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { step: number; val_loss?: number; val_tokens?: number })
    .filter((m) => m.val_loss !== undefined);

test("eval_every logs the held-out loss; keep_best keeps its checkpoint while keep_checkpoints prunes the rest", async () => {
  const out = tempDir("val-keep");
  const events: ValidationEvent[] = [];
  const s = await train(
    tinyConfig(out, {
      run_id: "v",
      data: { validation: join(tiny, "code_heldout.jsonl") },
      train: { steps: 12, checkpoint_every: 2, eval_every: 3, keep_best: "val_loss", keep_checkpoints: 1 },
    }),
    { onEvent: (e) => e.type === "validation" && events.push(e) },
  );
  expect(s.status).toBe("completed");
  // at every 3rd step and the last, once each, with the tokens it is the mean over
  const lines = valLines(s.run_dir);
  expect(lines.map((l) => l.step)).toEqual([3, 6, 9, 12]);
  expect(events.map((e) => [e.step, e.val_loss])).toEqual(lines.map((l) => [l.step, l.val_loss!]));
  expect(lines.every((l) => Number.isFinite(l.val_loss) && l.val_loss! > 0 && l.val_tokens! > 0)).toBe(true);
  // the best is the lowest loss's step; its checkpoint and the newest are all that is kept
  const best = lines.reduce((a, b) => (b.val_loss! < a.val_loss! ? b : a));
  expect(events.filter((e) => e.best).at(-1)!.step).toBe(best.step);
  expect(s.best_checkpoint).toEndWith(`step-${String(best.step).padStart(6, "0")}`);
  const kept = readdirSync(join(s.run_dir, "checkpoints")).sort();
  const name = (step: number) => `step-${String(step).padStart(6, "0")}`;
  // the newest checkpoint besides the best one, and the best
  expect(kept).toEqual([name(best.step), name(best.step === 12 ? 10 : 12)].sort());
  expect(existsSync(join(s.best_checkpoint, "trainer_state.json"))).toBe(true);
  // and the store has the series by step
  const store = await openStore({ path: join(out, "s.db") });
  try {
    await store.ingestRunDir(s.run_dir);
    const v = await store.metrics("v", { name: "val_loss" });
    expect(v.map((m) => [m.step, m.value])).toEqual(lines.map((l) => [l.step, l.val_loss!]));
  } finally {
    await store.close();
  }
}, 120_000);

test("early_stop_patience: the run completes where the held-out loss stopped improving", async () => {
  const out = tempDir("val-stop");
  // code, at a learning rate high enough to overfit it, scored on English (in the training
  // set's field): the loss turns
  const english = join(out, "english.jsonl");
  const records = readFileSync(join(tiny, "english_heldout.jsonl"), "utf8").trim().split("\n");
  writeFileSync(
    english,
    records.map((l) => JSON.stringify({ content: (JSON.parse(l) as { text: string }).text })).join("\n"),
  );
  const s = await train(
    tinyConfig(out, {
      run_id: "e",
      optim: { lr: 3e-2 },
      data: { validation: english },
      train: { steps: 200, checkpoint_every: 0, eval_every: 2, early_stop_patience: 2 },
    }),
  );
  expect(s.status).toBe("completed");
  const lines = valLines(s.run_dir);
  // stopped at the first evaluation that made 2 in a row without a new best, and not before
  let best = Number.POSITIVE_INFINITY;
  let since = 0;
  let stop: number | undefined;
  for (const l of lines) {
    if (l.val_loss! < best) [best, since] = [l.val_loss!, 0];
    else since++;
    if (since >= 2) {
      stop = l.step;
      break;
    }
  }
  expect(stop).toBeDefined();
  expect(s.stopped_early_at).toBe(stop!);
  expect([s.steps, lines.at(-1)!.step]).toEqual([stop!, stop!]);
  expect(s.steps).toBeLessThan(200);
  // it completed there: its output is written, and its last checkpoint is that step's
  expect(existsSync(join(s.output, "model.safetensors"))).toBe(true);
  expect(s.last_checkpoint).toEndWith(`step-${String(stop).padStart(6, "0")}`);
}, 120_000);

test('resume_from = "latest": the newest checkpoint of the run, or a fresh start when it has none', async () => {
  const out = tempDir("val-latest");
  const cfg = tinyConfig(out, { run_id: "l", train: { steps: 8, checkpoint_every: 2, resume_from: "latest" } });
  // the first attempt, cancelled after step 3 (a cancel checkpoints where it stops: 3 or 4)
  const abort = new AbortController();
  const first = await train(cfg, { signal: abort.signal, onProgress: (p) => p.step === 3 && abort.abort() });
  const at = `step-${String(first.steps).padStart(6, "0")}`;
  expect([first.status, first.steps < 8, first.last_checkpoint]).toEqual([
    "cancelled",
    true,
    expect.stringMatching(at),
  ]);
  // the same command again resumes there and completes
  const second = await train(cfg);
  expect(second.status).toBe("completed");
  expect(JSON.parse(readFileSync(join(second.run_dir, "config.json"), "utf8")).train.resume_from).toEndWith(at);
  const steps = readFileSync(join(second.run_dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { step: number }).step);
  expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  // a run with no checkpoint yet starts fresh
  const fresh = await train({ ...cfg, run_id: "l2" });
  expect([fresh.status, fresh.steps]).toEqual(["completed", 8]);
  // "latest" of nothing named is refused
  expect(() => resolveConfig({ ...cfg, run_id: "" })).toThrow(ConfigError);
  expect(() => resolveConfig({ ...cfg, run_id: "" })).toThrow(/`latest` needs the run to resume: set run_id/);
}, 120_000);

test("validation's config is checked at the edge", () => {
  const out = tempDir("val-config");
  const bad = (over: Parameters<typeof tinyConfig>[1], re: RegExp) =>
    expect(() => resolveConfig(tinyConfig(out, over))).toThrow(re);
  bad({ train: { eval_every: 2 } }, /train.eval_every: scores data.validation, and none is given/);
  bad({ train: { early_stop_patience: 2 } }, /train.early_stop_patience: needs validation during training/);
  bad(
    { data: { validation: join(tiny, "code_heldout.jsonl") }, train: { eval_every: 2, keep_best: "acc" } },
    /train.keep_best: `acc`: the metric kept by is `val_loss`, or a score/,
  );
  bad({ data: { validation: join(out, "missing.jsonl") } }, /data.validation: file not found/);
});

test("eval_tasks while training: the base and every eval_every checkpoint scored into evals.jsonl and the trackers; forgetting_budget stops the run at the first checkpoint past it", async () => {
  const { evaluate, trainWithEval } = await import("@loralab/eval");
  const base = await tinyModel();
  const out = tempDir("evaltrain");
  // winogrande questions labelled with the option the base model prefers: the base scores 1, and
  // whatever answer training changes is forgetting
  const names = ["Ada", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lu"];
  const qs = names.map((n, i) => ({
    sentence: `${n} gave ${names[(i + 1) % 12]} the ${["book", "cup", "key", "map"][i % 4]} because _ was ${["done", "kind", "late", "tired"][i % 4]}.`,
    option1: n,
    option2: names[(i + 1) % 12]!,
    answer: "1",
  }));
  const draft = join(out, "draft");
  const wg = join(out, "wg");
  for (const d of [draft, wg]) mkdirSync(d, { recursive: true });
  const lines = (docs: object[]) => `${docs.map((d) => JSON.stringify(d)).join("\n")}\n`;
  writeFileSync(join(draft, "validation.jsonl"), lines(qs));
  const probe = await evaluate({ model: base, tasks: ["winogrande"], data: { winogrande: draft }, limit: 12 });
  const prefers = (probe.tasks.winogrande!.samples as { logprobs: number[] }[]).map((s) =>
    s.logprobs[0]! >= s.logprobs[1]! ? "1" : "2",
  );
  writeFileSync(join(wg, "validation.jsonl"), lines(qs.map((q, i) => ({ ...q, answer: prefers[i] }))));

  // a constant lr: the first steps are the same whatever the run's length
  const cfg = (id: string, budget: number, steps: number) =>
    tinyConfig(out, {
      run_id: id,
      model: { path: base, config: "", tokenizer: "" },
      method: { kind: "full" },
      optim: { lr: 5e-3 },
      schedule: { kind: "constant", warmup_steps: 0, warmup_frac: 0 },
      train: {
        steps,
        checkpoint_every: 0,
        eval_every: 2,
        eval_tasks: ["winogrande"],
        eval_limit: 12,
        eval_data: { winogrande: wg },
        forgetting_budget: budget,
      },
      track: ["tensorboard"],
    });
  const free = await trainWithEval(cfg("free", 0, 8));
  expect(free.status).toBe("completed");
  expect(free.evals.map((e) => e.step)).toEqual([0, 2, 4, 6, 8]);
  expect(free.evals[0]!.forgetting).toBe(1);
  // evals.jsonl has each point as returned; the trackers got them (the TensorBoard file names the tag)
  const logged = readFileSync(join(free.run_dir, "evals.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  expect(logged).toEqual(JSON.parse(JSON.stringify(free.evals)));
  const tb = join(free.run_dir, "tensorboard");
  expect(readFileSync(join(tb, readdirSync(tb)[0]!)).includes("eval/forgetting")).toBe(true);
  // the training forgets some of it: the step where the budget is first exceeded
  const drops = free.evals.slice(1).map((e) => [e.step, (1 - e.forgetting!) * 100] as const);
  const past = drops.find(([, d]) => d > 30);
  expect(past).toBeDefined();

  expect(past![0]).toBeGreaterThan(2); // the first checkpoint is within the budget
  // 400 steps: the budget's verdict comes long before the end
  const held = await trainWithEval(cfg("held", 30, 400));
  expect(held.forgettingStop).toEqual({ step: past![0], drop: past![1], budget: 30 });
  expect(held.stopped_early_at).toBe(past![0]);
  // it stopped after the step it was at when the score came, long before the end
  expect(held.status).toBe("cancelled");
  expect(held.steps).toBeGreaterThanOrEqual(past![0]);
  expect(held.steps).toBeLessThan(400);
  const before = drops.filter(([st]) => st < past![0]);
  expect(held.best_checkpoint).toBe(
    before.length ? join(held.run_dir, "checkpoints", `step-${String(before.at(-1)![0]).padStart(6, "0")}`) : "",
  );
  // `loralab train` says where and why it stopped, names the checkpoint to keep, and exits 3
  writeFileSync(join(out, "held.json"), JSON.stringify(cfg("cli", 30, 400)));
  const cli = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", "train", join(out, "held.json")], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
  });
  const said = cli.stdout.toString();
  expect([cli.exitCode, said]).toEqual([
    3,
    expect.stringContaining(
      `stopped early at step ${past![0]}: the forgetting score fell ${past![1].toFixed(2)} points below the base's, past train.forgetting_budget = 30`,
    ),
  ]);
  expect(said).toContain(
    `last checkpoint within the budget: ${held.best_checkpoint.replace(held.run_dir, join(out, "cli"))}`,
  );
  // the scores up to the stop are the free run's (the same seed and data)
  expect(held.evals.map((e) => [e.step, e.forgetting])).toEqual(
    free.evals.filter((e) => e.step <= past![0]).map((e) => [e.step, e.forgetting]),
  );
}, 300_000);

test("keep_best by a score: the best-scored checkpoint kept as best/ while keep_checkpoints prunes the rest", async () => {
  const { scoreModel, trainWithEval } = await import("@loralab/eval");
  const out = tempDir("keep-best-score");
  const fx = join(root, "tests/fixtures/eval");
  const s = await trainWithEval(
    tinyConfig(out, {
      run_id: "kb",
      method: { kind: "lora", rank: 4 },
      train: {
        steps: 10,
        checkpoint_every: 0,
        eval_every: 2,
        eval_tasks: ["winogrande", "arc_challenge"],
        eval_limit: 3,
        eval_data: { winogrande: join(fx, "winogrande"), arc_challenge: join(fx, "arc_challenge") },
        keep_best: "eval/forgetting",
        keep_checkpoints: 1,
      },
    }),
  );
  expect(s.status).toBe("completed");
  const scored = s.evals.filter((e) => e.checkpoint && !e.skipped);
  expect(scored.length).toBeGreaterThan(0);
  // the first of the highest scores (a later tie does not replace it)
  const top = scored.reduce((a, b) => (b.forgetting! > a.forgetting! ? b : a));
  expect(s.best_checkpoint).toBe(join(s.run_dir, "best"));
  const kept = JSON.parse(readFileSync(join(s.run_dir, "best.json"), "utf8"));
  expect(kept).toEqual({
    metric: "eval/forgetting",
    value: top.forgetting,
    step: top.step,
    checkpoint: top.checkpoint,
  });
  // best/ is that checkpoint whole (its trainer state at its step), whatever keep_checkpoints pruned
  const state = JSON.parse(readFileSync(join(s.run_dir, "best", "trainer_state.json"), "utf8"));
  expect(state.step).toBe(top.step);
  expect(existsSync(join(s.run_dir, "best", "adapter_model.safetensors"))).toBe(true);
  expect(readdirSync(join(s.run_dir, "checkpoints")).length).toBeLessThanOrEqual(2);
  // and it scores as the checkpoint did
  const again = await scoreModel(JSON.parse(readFileSync(join(s.run_dir, "config.json"), "utf8")), s.run_dir, {
    step: top.step,
    tokens: 0,
    checkpoint: s.best_checkpoint,
  });
  expect(again.forgetting).toBe(top.forgetting);
}, 180_000);

test("keep_best by a score while pruning races the scoring: each checkpoint scored from its own linked copy, the first best kept", async () => {
  const { trainWithEval } = await import("@loralab/eval");
  const out = tempDir("keep-best-race");
  // 300 documents: each scoring takes longer than the steps between checkpoints, so the engine
  // prunes (keep_checkpoints = 1) checkpoints still waiting to be scored, or being scored
  const src = readFileSync(join(root, "tests/fixtures/eval/winogrande/validation.jsonl"), "utf8").trim().split("\n");
  mkdirSync(join(out, "wg"));
  writeFileSync(
    join(out, "wg", "validation.jsonl"),
    `${Array.from({ length: 300 }, (_, i) => src[i % 3]).join("\n")}\n`,
  );
  const said: string[] = [];
  const s = await trainWithEval(
    tinyConfig(out, {
      run_id: "race",
      method: { kind: "lora", rank: 4 },
      train: {
        steps: 40,
        checkpoint_every: 0,
        eval_every: 2,
        eval_tasks: ["winogrande"],
        eval_limit: 300,
        eval_data: { winogrande: join(out, "wg") },
        keep_best: "eval/winogrande/acc_per_token",
        keep_checkpoints: 1,
      },
    }),
    { log: (l) => said.push(l) },
  );
  expect(s.status).toBe("completed");
  expect(said.filter((l) => l.includes("could not keep"))).toEqual([]);
  const scored = s.evals.filter((e) => e.checkpoint && !e.skipped);
  // the race happened: some checkpoints were gone before their turn
  console.log(`race: ${scored.length} of ${s.evals.length - 1} checkpoints scored`);
  expect(scored.length).toBeLessThan(s.evals.length - 1);
  const value = (e: (typeof scored)[number]) => e.tasks.winogrande!.acc_per_token!;
  const top = scored.reduce((a, b) => (value(b) > value(a) ? b : a));
  const kept = JSON.parse(readFileSync(join(s.run_dir, "best.json"), "utf8"));
  expect([kept.step, kept.value]).toEqual([top.step, value(top)]);
  expect(JSON.parse(readFileSync(join(s.run_dir, "best", "trainer_state.json"), "utf8")).step).toBe(top.step);
  // no staging copy left behind
  expect(readdirSync(s.run_dir).filter((f) => f.startsWith(".scoring-") || f.startsWith("best."))).toEqual([
    "best.json",
  ]);
}, 180_000);

test("eval_tasks and forgetting_budget are checked at the edge", () => {
  const out = tempDir("evaltrain-cfg");
  const bad = (train: Record<string, unknown>, field: string, msg: RegExp) => {
    let err: unknown;
    try {
      resolveConfig(tinyConfig(out, { train }));
    } catch (e) {
      err = e;
    }
    expect([(err as ConfigError).field, (err as Error).message]).toEqual([field, expect.stringMatching(msg)]);
  };
  bad({ eval_tasks: ["mmlu"], eval_every: 2 }, "train.eval_tasks", /unknown task `mmlu` \(hint: one of hellaswag/);
  bad({ eval_tasks: ["winogrande"] }, "train.eval_tasks", /scored every train.eval_every steps, which is 0/);
  bad(
    { eval_tasks: ["gsm8k"], eval_every: 2, forgetting_budget: 5 },
    "train.forgetting_budget",
    /needs a forgetting task/,
  );
  bad(
    { eval_tasks: ["winogrande"], eval_every: 2, forgetting_budget: 101 },
    "train.forgetting_budget",
    /0 \(off\) to 100/,
  );
  bad(
    { eval_tasks: ["winogrande"], eval_every: 2, eval_data: { hellaswag: "x" } },
    "train.eval_data",
    /not in train.eval_tasks/,
  );
  bad(
    { eval_tasks: ["winogrande"], eval_every: 2, keep_best: "val_loss" },
    "train.keep_best",
    /needs validation during training/,
  );
  // a score to keep by: of a task the run scores
  bad(
    { eval_tasks: ["winogrande"], eval_every: 2, keep_best: "eval/hellaswag/acc" },
    "train.keep_best",
    /a task in train.eval_tasks/,
  );
  bad({ keep_best: "eval/forgetting" }, "train.keep_best", /set train.eval_tasks and train.eval_every/);
  bad(
    { eval_tasks: ["winogrande"], eval_every: 2, keep_best: "eval/loss" },
    "train.keep_best",
    /`eval\/loss`: a score is kept by/,
  );
  expect(
    resolveConfig(
      tinyConfig(out, { train: { eval_tasks: ["winogrande"], eval_every: 2, keep_best: "eval/winogrande/acc" } }),
    ).train.keep_best,
  ).toBe("eval/winogrande/acc");
});
