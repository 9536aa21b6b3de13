// `loralab train` as a user runs it: a config file with overrides, --help, and bad
// input that exits 2 with a message naming the field (no stack trace).
import { expect, test } from "bun:test";
import { root, tempDir } from "./helpers.ts";

function cli(args: string[]) {
  const p = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", ...args], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

test("train a shipped config with overrides; plain progress lines when piped", () => {
  const out = tempDir("cli");
  const r = cli([
    "train",
    "configs/tiny-lora.toml",
    "--train.steps=3",
    `--out_dir=${out}`,
    "--data.seq_len=32",
    `--data.cache_dir=${out}/cache`,
  ]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  expect(r.out).toContain("step 3/3");
  expect(r.out).toContain("completed: 3/3 steps");
  expect(r.out).toMatch(/data: 1,300 records → [\d,]+ rows of 32 tokens/);
  expect(r.out).not.toContain("\r");
  expect(r.out).toMatch(/output: .*\/adapter/);
});

test("--help lists every section with defaults and reasons", () => {
  const r = cli(["train", "--help"]);
  expect(r.code).toBe(0);
  for (const s of [
    "[method]",
    "method.rank",
    "method.alpha",
    "optim.betas",
    "schedule.cooldown_frac",
    "train.resume_from",
    "the study",
  ])
    expect(r.out).toContain(s);
});

test("bad input exits 2 naming the field, without a stack trace", () => {
  const r = cli(["train", "configs/tiny-lora.toml", "--method.rank=0"]);
  expect(r.code).toBe(2);
  expect(r.err).toContain("config method.rank: must be ≥ 1");
  expect(r.err).not.toContain("    at ");
  const missing = cli(["train", "nope.toml"]);
  expect(missing.code).toBe(2);
  expect(missing.err).toContain("nope.toml: not found");
  // the laboratory's modes: one at a time, and only without a config file
  const both = cli(["train", "--quick", "--full"]);
  expect(both.code).toBe(2);
  expect(both.err).toContain("--quick and --full: the laboratory runs one of them");
  const withConfig = cli(["train", "configs/tiny-lora.toml", "--full"]);
  expect(withConfig.code).toBe(2);
  expect(withConfig.err).toContain("--full is for the laboratory (no config file)");
});

test("merge folds a trained adapter into its base; the merged model scores the same", async () => {
  const out = tempDir("merge");
  const r = cli([
    "train",
    "configs/tiny-lora.toml",
    "--train.steps=3",
    `--out_dir=${out}`,
    "--run_id=m",
    "--data.seq_len=32",
    `--data.cache_dir=${out}/cache`,
  ]);
  expect(r.code).toBe(0);
  const m = cli(["merge", `${out}/m/base`, `${out}/m/adapter`, `${out}/merged`]);
  expect(m.err).toBe("");
  expect(m.code).toBe(0);
  const data = {
    train: "datasets/tiny/code_heldout.jsonl",
    text_field: "content",
    seq_len: 32,
    cache_dir: `${out}/cache`,
  };
  const { evalLoss } = await import("loralab");
  const unmerged = await evalLoss({ model: `${out}/m/base`, adapter: `${out}/m/adapter`, data });
  const merged = await evalLoss({ model: `${out}/merged`, data });
  expect(Math.abs(unmerged.loss - merged.loss)).toBeLessThan(1e-4);
  expect(cli(["merge", "only-one-arg"]).code).toBe(2);
});

test("eval a run: a progress line per task, a table beside the base model, results in the run directory", () => {
  const out = tempDir("cli-eval");
  const t = cli([
    "train",
    "configs/tiny-lora.toml",
    "--train.steps=2",
    `--out_dir=${out}`,
    "--run_id=r",
    "--data.seq_len=32",
    `--data.cache_dir=${out}/cache`,
  ]);
  expect(t.code).toBe(0);
  const fx = `${root}/tests/fixtures/eval`;
  const p = Bun.spawnSync(
    [
      process.execPath,
      "packages/cli/src/main.ts",
      "eval",
      "--run",
      `${out}/r`,
      "--tasks",
      "winogrande,arc_challenge",
      "--data",
      `winogrande=${fx}/winogrande`,
      "--data",
      `arc_challenge=${fx}/arc_challenge`,
      "--limit",
      "2",
    ],
    { cwd: root, stdout: "pipe", stderr: "pipe", env: { ...process.env, LORALAB_CACHE: `${out}/cache` } },
  );
  const r = { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  expect(r.out).toContain("winogrande 2/2");
  expect(r.out).toContain("arc_challenge 2/2");
  expect(r.out).toMatch(/arc_challenge\s+acc_norm\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+/); // this, ± se, base, Δ
  expect(r.out).toContain(`results: ${out}/r/eval.json`);
  const bad = cli(["eval", "--model", "x", "--tasks", "mmlu"]);
  expect([bad.code, bad.err.trim()]).toEqual([
    2,
    "loralab: --tasks: unknown task `mmlu` (hint: humaneval, gsm8k, hellaswag, winogrande, arc_challenge)",
  ]);
}, 120_000);
