// The addon from Bun: it loads, trains with progress events, cancels a running loop
// through an AbortSignal, and a cancelled run's checkpoint loads and resumes.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, evalLoss, train, type ProgressEvent, type TrainEvent } from "loralab";
import { metricLosses, tempDir, tinyConfig } from "./helpers.ts";

describe("addon", () => {
  test("trains full FT and LoRA from Bun, with progress while it runs", async () => {
    const out = tempDir("addon");
    for (const kind of ["full", "lora"] as const) {
      const events: TrainEvent[] = [];
      const s = await train(tinyConfig(out, { run_id: kind, method: { kind, rank: 4 } }), {
        onEvent: (e) => events.push(e),
      });
      expect(s.status).toBe("completed");
      expect(s.steps).toBe(6);
      expect(Number.isFinite(s.final_loss)).toBe(true);
      expect(events.slice(0, 2).map((e) => e.type)).toEqual(["prepared", "start"]);
      const progress = events.filter((e): e is ProgressEvent => e.type === "progress");
      expect(progress.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(progress.every((p) => p.tokens_per_s > 0 && p.lr > 0 && p.grad_norm > 0)).toBe(true);
      expect(events.filter((e) => e.type === "checkpoint").length).toBe(3);
      expect(existsSync(join(s.output, kind === "full" ? "model.safetensors" : "adapter_model.safetensors"))).toBe(
        true,
      );
      if (kind === "lora") expect(s.trainable_params).toBeLessThan(s.params / 5);
    }
    // the LoRA adapter evaluates on top of its (kept) random base, merged or not, to the same loss
    const data = {
      train: tinyConfig(out).data!.train!,
      text_field: "content",
      seq_len: 32,
      cache_dir: join(out, "cache"),
    };
    const unmerged = await evalLoss({ model: join(out, "lora/base"), adapter: join(out, "lora/adapter"), data });
    const merged = await evalLoss({
      model: join(out, "lora/base"),
      adapter: join(out, "lora/adapter"),
      merged: true,
      data,
    });
    expect(Math.abs(unmerged.loss - merged.loss)).toBeLessThan(1e-4);
  });

  test("an AbortSignal cancels a running loop; its checkpoint loads and resumes", async () => {
    const out = tempDir("cancel");
    const abort = new AbortController();
    const cfg = tinyConfig(out, { run_id: "c", train: { steps: 200, checkpoint_every: 0 } });
    const s = await train(cfg, {
      signal: abort.signal,
      onProgress: (p) => {
        if (p.step === 3) abort.abort();
      },
    });
    expect(s.status).toBe("cancelled");
    expect(s.steps).toBeGreaterThanOrEqual(3);
    expect(s.steps).toBeLessThan(200);
    expect(s.output).toBe("");
    const run = await Bun.file(join(s.run_dir, "run.json")).json();
    expect(run.status).toBe("cancelled");
    // the checkpoint is a loadable Hugging Face model directory ...
    const loss = await evalLoss({ model: s.last_checkpoint, data: cfg.data! });
    expect(Number.isFinite(loss.loss)).toBe(true);
    // ... and the run resumes from it to the end, each step once in metrics.jsonl
    const resumed = await train({
      ...cfg,
      train: { ...cfg.train, steps: s.steps + 2, resume_from: s.last_checkpoint },
    });
    expect(resumed.status).toBe("completed");
    const steps = (await metricLosses(s.run_dir)).map(([step]) => step);
    expect(steps).toEqual(Array.from({ length: s.steps + 2 }, (_, i) => i + 1));
  });

  test("a tokenizer that does not fit the model fails with a message, not a crash", async () => {
    const out = tempDir("vocab");
    const small = join(out, "config.json");
    const cfg = await Bun.file(tinyConfig(out).model!.config!).json();
    await Bun.write(small, JSON.stringify({ ...cfg, vocab_size: 100 }));
    const err = await train(tinyConfig(out, { run_id: "v", model: { config: small } })).catch((e) => e as Error);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain("has 512 tokens but the model's vocab_size is 100");
    const run = await Bun.file(join(out, "v/run.json")).json();
    expect(run.status).toBe("failed");
  });

  test("a signal aborted before the start cancels at step 0", async () => {
    const out = tempDir("cancel0");
    const s = await train(tinyConfig(out, { run_id: "c0" }), { signal: AbortSignal.abort() });
    expect(s.status).toBe("cancelled");
    expect(s.steps).toBe(0);
  });
});
