// The ready-made configs: every one opens with its launch line, parses and resolves (with its
// placeholder paths pointed at real files), at the study's hyperparameters; the sweep example parses.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadConfigFile, resolveConfig } from "loralab";
import { loadStudySpec, cells } from "@loralab/study";
import { root, tempDir } from "./helpers.ts";

const STUDY: Record<string, { lr: number; kind: string; seq: number; schedule: string }> = {
  "code-cpt-full": { lr: 1e-5, kind: "full", seq: 4096, schedule: "inverse_sqrt" },
  "code-cpt-lora": { lr: 1e-5, kind: "lora", seq: 4096, schedule: "inverse_sqrt" },
  "math-cpt-full": { lr: 1e-5, kind: "full", seq: 4096, schedule: "inverse_sqrt" },
  "math-cpt-lora": { lr: 4e-5, kind: "lora", seq: 4096, schedule: "inverse_sqrt" },
  "code-ift-full": { lr: 5e-5, kind: "full", seq: 4096, schedule: "cosine" },
  "code-ift-lora": { lr: 2e-4, kind: "lora", seq: 4096, schedule: "cosine" },
  "math-ift-full": { lr: 1e-5, kind: "full", seq: 1024, schedule: "cosine" },
  "math-ift-lora": { lr: 1e-4, kind: "lora", seq: 1024, schedule: "cosine" },
};

test("every config opens with its launch line and resolves; the study's four regimes × two methods are there", async () => {
  const files = readdirSync(join(root, "configs")).filter((f) => f.endsWith(".toml") && f !== "sweep-example.toml");
  for (const name of Object.keys(STUDY)) expect(files).toContain(`${name}.toml`);
  const out = tempDir("configs");
  for (const f of files) {
    const text = readFileSync(join(root, "configs", f), "utf8");
    expect([f, text.split("\n")[0]!.startsWith(`# bun run train configs/${f}`)]).toEqual([f, true]);
    const cfg = await loadConfigFile(join(root, "configs", f));
    // placeholders pointed at real files, so resolution checks everything else
    if (cfg.model?.path) cfg.model = { ...cfg.model, path: join(root, "tests/fixtures/hf/llama3") };
    if (cfg.data?.train?.startsWith("/path/"))
      cfg.data = { ...cfg.data, train: join(root, "datasets/tiny/code.jsonl"), recipe: "" };
    if (cfg.model?.path && !cfg.model.tokenizer)
      cfg.model = { ...cfg.model, tokenizer: join(root, "datasets/tiny/tokenizer.json") };
    const r = resolveConfig({ ...cfg, out_dir: out, data: { ...cfg.data, cache_dir: join(out, "cache") } });
    const want = STUDY[f.replace(".toml", "")];
    if (want) {
      expect([
        f,
        r.optim.lr,
        r.method.kind,
        r.data.seq_len,
        r.schedule.kind,
        r.optim.name,
        r.train.micro_batch * r.train.grad_accum >= 192,
      ]).toEqual([f, want.lr, want.kind, want.seq, want.schedule, "lionw", true]);
      if (want.kind === "lora") expect([r.method.rank, r.method.alpha]).toEqual([16, 32]);
    }
  }
});

test("the sweep example parses into its grid", () => {
  const spec = loadStudySpec(join(root, "configs/sweep-example.toml"));
  expect(spec.eval.learning).toBe("humaneval");
  const cs = cells(spec);
  expect(cs.filter((c) => c.method === "full").length).toBe(3);
  expect(cs.filter((c) => c.method === "lora").length).toBe(3 * 3 * 2);
  expect(new Set(cs.map((c) => c.key)).size).toBe(cs.length);
});
