// Spectral analysis from Bun: every checkpoint of a run (full FT and LoRA), the JSON and
// figures it leaves, the random baseline, and bad input through the CLI.
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { analyze, analyzeRun, randomBaseline, train } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

describe("analyze", () => {
  test("every checkpoint of a full-FT and a LoRA run: ΔW's rank over training, JSON and figures", async () => {
    const out = tempDir("spectrum");
    for (const kind of ["full", "lora"] as const) {
      const s = await train(
        tinyConfig(out, { run_id: kind, method: { kind, rank: 4 }, train: { steps: 4, checkpoint_every: 2 } }),
      );
      const progress: number[] = [];
      const cks = await analyzeRun(s.run_dir, { thresholds: [0.5, 0.9], onProgress: (d) => progress.push(d) });
      expect(cks.map((c) => c.checkpoint)).toEqual(["step-000002", "step-000004"]); // the last checkpoint is the final output
      expect(cks.map((c) => c.step)).toEqual([2, 4]);
      expect(progress.length).toBe(2 * 4 * 7);
      const last = cks[1]!.analysis;
      expect(last.kind).toBe(kind === "lora" ? "lora" : "dense");
      expect(last.matrices.length).toBe(28);
      for (const m of last.matrices) {
        expect(m.delta.rank_at["0.5"]!).toBeLessThanOrEqual(m.delta.rank_at["0.9"]!);
        if (kind === "lora") expect(m.delta.numerical_rank).toBeLessThanOrEqual(4);
        else expect(m.noise_floor!.frobenius).toBe(0); // f32 checkpoints: no rounding noise
      }
      if (kind === "full") {
        // full FT needs far more than LoRA's rank to explain 90 % of its change
        const mean = last.matrices.reduce((a, m) => a + m.delta.rank_at["0.9"]!, 0) / last.matrices.length;
        expect(mean).toBeGreaterThan(4);
      }
      const files = readdirSync(join(s.run_dir, "spectrum"));
      expect(files).toContain("step-000004.json");
      expect(files).toContain("rank_by_layer_0.9.svg");
      expect(files.some((f) => f.startsWith("spectra_"))).toBe(true);
      expect(readFileSync(join(s.run_dir, "spectrum", "rank_by_layer_0.9.svg"), "utf8")).toContain("<svg");
    }
  }, 120_000);

  test("an adapter against its base from the library; intruders only when asked", async () => {
    const out = tempDir("spectrum-lib");
    const s = await train(
      tinyConfig(out, { run_id: "l", method: { kind: "lora", rank: 2 }, train: { steps: 2, checkpoint_every: 0 } }),
    );
    const a = await analyze(
      { base: join(s.run_dir, "base"), adapter: s.output },
      { modules: ["q_proj", "down_proj"], layers: [0, 3], intruders: true },
    );
    expect(a.matrices.map((m) => m.name)).toEqual([
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.mlp.down_proj.weight",
      "model.layers.3.self_attn.q_proj.weight",
      "model.layers.3.mlp.down_proj.weight",
    ]);
    expect(a.matrices.every((m) => m.intruders !== null && m.intruders.top_k === 10)).toBe(true);
    const plain = await analyze(
      { base: join(s.run_dir, "base"), adapter: s.output },
      { modules: ["q_proj"], layers: [0] },
    );
    expect(plain.matrices[0]!.intruders).toBeNull();
  }, 60_000);

  test("the random baseline: A + cB's spectrum converges to A's as c shrinks", async () => {
    const b = await randomBaseline(100, [1, 0.1, 0.01]);
    expect(b.points.map((p) => p.c)).toEqual([1, 0.1, 0.01]);
    expect(b.points[0]!.relative_shift).toBeGreaterThan(b.points[1]!.relative_shift);
    expect(b.points[1]!.relative_shift).toBeGreaterThan(b.points[2]!.relative_shift);
  });

  test("CLI: a clear error for a mismatched pair, and the baseline's files", () => {
    const out = tempDir("spectrum-cli");
    const run = (args: string[]) => {
      const p = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", "analyze", ...args], {
        cwd: root,
        stdout: "pipe",
        stderr: "pipe",
      });
      return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
    };
    const bad = run(["--base", join(root, "datasets/tiny"), "--tuned", join(root, "tests/fixtures/hf/qwen2")]);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/^\nloralab: .*(architecture|model.safetensors)/);
    expect(bad.err).not.toContain("    at ");
    const none = run(["--base", "x"]);
    expect([none.code, none.err]).toEqual([2, expect.stringContaining("give --base and one of --tuned / --adapter")]);
    const b = run(["--baseline", "--n", "60", "--c", "1,0.1", "--out", out]);
    expect(b.code).toBe(0);
    expect(existsSync(join(out, "random_baseline.svg")) && existsSync(join(out, "random_baseline.json"))).toBe(true);
  }, 60_000);
});
