// A new user's first hour (issue 15): what broke or surprised on a fresh machine, each a test.
import { expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { summarize, type TaskResult } from "@loralab/eval";
import { WASM_HINT } from "@loralab/report";
import { loadStudySpec, writeReport, type Point } from "@loralab/study";
import { ConfigError, train } from "loralab";
import { progressReporter } from "../packages/cli/src/progress.ts";
import { root, tempDir, tinyConfig, tinyModel } from "./helpers.ts";
import { userSweepYaml } from "./sweeps.ts";

function cli(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", ...args], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
  });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

const point = (key: string, method: string, l: number, f: number, perplexity: number | null = null): Point => ({
  key,
  group: method === "base" ? "base" : method === "lora" ? "LoRA r=4" : "full FT",
  method,
  rank: method === "lora" ? 4 : null,
  targets: "all",
  lr: method === "base" ? 0 : 1e-3,
  seed: 0,
  duration: method === "base" ? 0 : 1,
  tokens: 0,
  learning: { value: l, stderr: 0.05 },
  forgetting: { value: f, stderr: 0.05 },
  perplexity,
  rank90: method === "base" ? null : 2,
  rank90By: [],
});

// 1. the report builds nothing: without the WebAssembly module it keeps its static figures and says
// how to enable the interactive part
test("a report without the WebAssembly module: static figures, one line saying how to build it, no build", async () => {
  const empty = tempDir("no-wasm");
  const dir = tempDir("report-no-wasm");
  const before = process.env.LORALAB_WASM_DIR;
  process.env.LORALAB_WASM_DIR = empty;
  try {
    const t0 = performance.now();
    const { html } = await writeReport(dir, {
      title: "no wasm",
      base: point("base", "base", 0.1, 0.8, 20),
      points: [point("f", "full", 0.5, 0.6, 40), point("l", "lora", 0.3, 0.75, 25)],
      durationLabel: "epochs",
      notes: [],
      gates: [],
    });
    const page = readFileSync(html, "utf8");
    expect(page).toContain("bun run build:wasm");
    expect(page).not.toContain("initSync");
    expect(page).toContain("<figure><svg");
    expect(readdirSync(empty)).toEqual([]); // nothing was built into it
    expect(performance.now() - t0).toBeLessThan(30_000);
  } finally {
    if (before === undefined) delete process.env.LORALAB_WASM_DIR;
    else process.env.LORALAB_WASM_DIR = before;
  }
  expect(WASM_HINT).toContain("bun run build:wasm");
  // and no library code can build it: the build lives in scripts/ only
  for (const f of readdirSync(join(root, "packages/report/src")))
    expect(readFileSync(join(root, "packages/report/src", f), "utf8")).not.toContain("build-wasm.sh");
}, 60_000);

// 2 and 3: a user sweep (YAML spec, `--out DIR`) finishes, resumes, and redraws; missing numbers are "–"
test("a user sweep runs, resumes and redraws: `--out DIR`, a YAML spec, perplexity shown as –", async () => {
  const model = await tinyModel();
  const out = tempDir("user-sweep");
  const spec = userSweepYaml("us", model, out);
  writeFileSync(join(out, "spec.yaml"), spec);
  const dir = join(out, "study");
  const first = cli(["sweep", join(out, "spec.yaml"), "--out", dir]);
  const noHint = (err: string) => err.replace(`${WASM_HINT}\n`, ""); // where the wasm is not built
  expect(noHint(first.err)).toBe("");
  expect(first.code).toBe(0);
  expect(first.out).toContain("[1/2] full-lr1e-3-s0");
  expect(existsSync(join(dir, "points.json"))).toBe(true); // --out DIR, not runs/sweep-us
  const again = cli(["sweep", join(out, "spec.yaml"), `--out=${dir}`]);
  expect(again.code).toBe(0);
  expect(again.out).toContain("(finished earlier: skipped)");
  const redraw = cli(["report", dir]);
  expect(noHint(redraw.err)).toBe("");
  expect(redraw.code).toBe(0);
  const page = readFileSync(join(dir, "report", "report.html"), "utf8");
  expect(page).toMatch(/<td>–<\/td>/); // perplexity: not measured in user sweeps
  expect(page).not.toContain("NaN");
}, 600_000);

test("sweep specs are validated by a schema: unknown keys get the nearest name, values are typed", () => {
  const dir = tempDir("spec");
  const good = readFileSync(join(root, "configs/sweep-example.toml"), "utf8");
  const cases: [string, RegExp][] = [
    [good.replace("ranks = ", "rankz = "), /rankz: unknown key `rankz` \(hint: did you mean `ranks`\?/],
    [good.replace("records_per_epoch", "recordsPerEpoch"), /did you mean `records_per_epoch`/],
    [
      good.replace("micro_batch = 1", "micro_batchh = 1"),
      /base\.train\.micro_batchh: unknown key .*did you mean `micro_batch`/,
    ],
    [
      good.replace('regime = "ift"', 'regime = "ifft"'),
      /regime: "ifft" is not one of ift, cpt \(hint: did you mean "ift"\?\)/,
    ],
    [good.replace("ranks = [16, 64, 256]", "ranks = [16, 0]"), /ranks\[1\]: must be ≥ 1/],
    [
      good.replace('learning = "humaneval"', 'learning = "mmlu"'),
      /eval\.learning: "mmlu" is not one of humaneval, gsm8k/,
    ],
  ];
  for (const [text, want] of cases) {
    const f = join(dir, `s${cases.findIndex((c) => c[0] === text)}.toml`);
    writeFileSync(f, text);
    let err: unknown;
    try {
      loadStudySpec(f);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(want);
  }
  expect(loadStudySpec(join(root, "configs/sweep-example.toml")).ranks).toEqual([16, 64, 256]);
});

// 4. sizes are bounded by the model and the machine before any work
test("rank, seq_len and micro-batch beyond the model or the machine are refused before any work", async () => {
  const out = tempDir("bounds");
  const refuse = async (over: Parameters<typeof tinyConfig>[1], field: string, msg: RegExp) => {
    const t0 = performance.now();
    let err: unknown;
    try {
      await train(tinyConfig(out, over));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).field).toBe(field);
    expect((err as Error).message).toMatch(msg);
    expect(performance.now() - t0).toBeLessThan(10_000);
  };
  // the tiny model: hidden 128, 4 heads of 32, 2 kv heads → k_proj/v_proj are 64×128
  await refuse(
    { method: { kind: "lora", rank: 65 } },
    "method.rank",
    /65 exceeds min\(d_in, d_out\) = 64 of k_proj \(64×128\).*hint: method.rank ≤ 64/,
  );
  await refuse({ method: { kind: "lora", rank: 4294967297 } }, "method.rank", /exceeds min\(d_in, d_out\)/);
  await refuse(
    { data: { seq_len: 100_000 } },
    "data.seq_len",
    /longer than the model's max_position_embeddings \(512\)/,
  );
  await refuse({ train: { micro_batch: 1e9 } }, "train.micro_batch", /GiB available \(hint: lower train.micro_batch/);
  // rank 64 on attention + mlp is allowed (min over k/v is 64), and trains
  const s = await train(
    tinyConfig(out, { run_id: "r64", method: { kind: "lora", rank: 64 }, train: { steps: 1, checkpoint_every: 0 } }),
  );
  expect(s.status).toBe("completed");
  expect(s.trainable_params).toBeLessThan(s.params);
}, 120_000);

// 6. CLI conventions
test("every subcommand answers --help with exit 0; --version; one parser for `--flag V` and `--flag=V`", () => {
  for (const sub of ["train", "eval", "analyze", "serve", "sweep", "report", "merge", "bench"]) {
    const r = cli([sub, "--help"]);
    expect([sub, r.code, r.err]).toEqual([sub, 0, ""]);
    expect(r.out).toContain("usage:");
  }
  const v = cli(["--version"]);
  expect(v.code).toBe(0);
  expect(v.out).toMatch(/^loralab \d+\.\d+\.\d+/);
  const typo = cli(["sweep", "x.toml", "--outt", "y"]);
  expect(typo.code).toBe(2);
  expect(typo.err).toContain("unknown option --outt (hint: did you mean --out?)");
  const nothing = cli(["frobnicate"]);
  expect(nothing.code).toBe(2);
});

test("YAML configs train like TOML; TOML and YAML syntax errors give line and column; the LR hint is per method", () => {
  const out = tempDir("yaml");
  const yaml = `name: y
seed: 0
out_dir: ${out}
model: { config: datasets/tiny/config.json, tokenizer: datasets/tiny/tokenizer.json }
data: { format: cpt, train: datasets/tiny/code.jsonl, text_field: content, seq_len: 32, cache_dir: ${out}/cache }
method: { kind: lora, rank: 4 }
train:
  steps: 2
  micro_batch: 2
`;
  writeFileSync(join(out, "c.yaml"), yaml);
  const r = cli(["train", join(out, "c.yaml"), "--run_id", "y1"]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  expect(r.out).toContain("completed: 2/2 steps");
  writeFileSync(join(out, "bad.toml"), 'name = "x"\n[data]\nseq_len = = 3\n');
  const t = cli(["train", join(out, "bad.toml")]);
  expect(t.code).toBe(2);
  expect(t.err).toContain(`${join(out, "bad.toml")}:3:`);
  writeFileSync(join(out, "bad.yaml"), "name: x\ndata:\n  seq_len: [1, 2\n");
  const y = cli(["train", join(out, "bad.yaml")]);
  expect(y.code).toBe(2);
  expect(y.err).toMatch(/bad\.yaml:\d+:\d+: /);
  const lora = cli(["train", "configs/tiny-lora.toml", "--optim.lr=0"]);
  expect(lora.code).toBe(2);
  expect(lora.err).toContain("hint: LoRA: the study's best LRs are 1e-4 to 5e-4");
  const full = cli(["train", "configs/tiny-full.toml", "--optim.lr=0"]);
  expect(full.code).toBe(2);
  expect(full.err).toContain("hint: full fine-tuning: the study's best LRs are 1e-5 to 5e-5");
}, 120_000);

// 7. progress: an ETA from the pace of the steps, never 0:00 at the start
test("progress bar: ETA from a moving average of step times, right from step 1; plain lines when piped", () => {
  const chunks: string[] = [];
  const fake = (tty: boolean) =>
    ({
      isTTY: tty,
      write: (s: string) => {
        chunks.push(s);
        return true;
      },
    }) as unknown as NodeJS.WriteStream;
  const ev = (step: number, tps: number) => ({
    type: "progress" as const,
    step,
    total_steps: 100,
    tokens: step * 1000,
    loss: 2,
    lr: 1e-3,
    grad_norm: 1,
    tokens_per_s: tps,
    elapsed_s: step,
  });
  const tty = progressReporter("run", fake(true));
  tty.onProgress(ev(1, 1000)); // 1 s a step, 99 left
  expect(chunks.at(-1)).toContain("ETA 1:39");
  tty.onProgress(ev(2, 500)); // slower: the average moves toward 2 s a step
  expect(chunks.at(-1)).toMatch(/ETA 2:(0|1|2)\d/);
  tty.end();
  chunks.length = 0;
  const piped = progressReporter("run", fake(false), 4);
  for (let s = 1; s <= 100; s++) piped.onProgress(ev(s, 1000));
  expect(chunks.join("")).not.toContain("\r");
  expect(chunks.length).toBe(5); // first step, and every quarter
  expect(chunks.some((c) => c.includes("ETA 0:00"))).toBe(true); // only at the end
  expect(chunks[0]).not.toContain("ETA 0:00");
});

// 8. resume edge cases
test("resuming from the final checkpoint exits 0; a run killed before its first checkpoint restarts in place", async () => {
  const out = tempDir("resume-edges");
  const args = [
    "train",
    "configs/tiny-lora.toml",
    `--out_dir=${out}`,
    "--data.seq_len=32",
    `--data.cache_dir=${out}/cache`,
  ];
  const r = cli([...args, "--run_id=a", "--train.steps=2", "--train.checkpoint_every=2"]);
  expect(r.code).toBe(0);
  const again = cli([...args, "--run_id=a", "--train.steps=2", `--train.resume_from=${out}/a/checkpoints/step-000002`]);
  expect(again.err).toBe("");
  expect(again.code).toBe(0);
  expect(again.out).toContain("no step left to train");
  // a finished run is not silently overwritten
  const clash = cli([...args, "--run_id=a", "--train.steps=2"]);
  expect(clash.code).toBe(2);
  expect(clash.err).toContain("already exists");
  // killed (SIGKILL) before its first checkpoint: nothing to resume, so the same command starts over
  const long = Bun.spawn(
    [
      process.execPath,
      "packages/cli/src/main.ts",
      ...args,
      "--run_id=k",
      "--train.steps=100000",
      "--train.checkpoint_every=0",
    ],
    { cwd: root, stdout: "pipe", stderr: "pipe" },
  );
  const reader = long.stdout.getReader();
  let seen = "";
  while (!seen.includes("step ")) seen += new TextDecoder().decode((await reader.read()).value ?? new Uint8Array());
  // while it trains, a second process on the same run directory is refused
  const busy = cli([...args, "--run_id=k", "--train.steps=2"]);
  expect(busy.code).toBe(2);
  expect(busy.err).toContain("being trained by another process");
  long.kill("SIGKILL");
  await long.exited;
  expect(JSON.parse(readFileSync(join(out, "k", "run.json"), "utf8")).status).toBe("running"); // what a SIGKILL leaves
  const restart = cli([...args, "--run_id=k", "--train.steps=2"]);
  expect(restart.err).toBe("");
  expect(restart.code).toBe(0);
  expect(restart.out).toContain("completed: 2/2 steps");
  const steps = readFileSync(join(out, "k", "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l).step);
  expect(steps).toEqual([1, 2]);
}, 180_000);

// 9. a forgetting score from the tasks that ran, marked partial
test("the forgetting score is computed from the forgetting tasks that ran, and says when it is partial", () => {
  const mc = (v: number): TaskResult =>
    ({
      metrics: { acc: { value: v, stderr: 0.1 }, acc_norm: { value: v, stderr: 0.1 } },
      docs: 10,
      seconds: 0,
    }) as unknown as TaskResult;
  const one = summarize({ hellaswag: mc(0.4) });
  expect(one.forgetting?.value).toBeCloseTo(0.4, 12);
  expect(one.forgetting?.complete).toBe(false);
  expect(one.forgetting?.definition).toContain("PARTIAL (1 of 3 tasks: hellaswag)");
  const all = summarize({ hellaswag: mc(0.4), winogrande: mc(0.6), arc_challenge: mc(0.5) });
  expect(all.forgetting?.value).toBeCloseTo(0.5, 12);
  expect(all.forgetting?.complete).toBe(true);
  expect(summarize({}).forgetting).toBeNull();
});
