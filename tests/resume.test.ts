// Exact resume: a run killed with SIGKILL mid-training and resumed from its last
// checkpoint ends with the same losses as an uninterrupted run (CPU: ≤ 1e-6).
import { expect, test } from "bun:test";
import { join } from "node:path";
import { train } from "loralab";
import { metricLosses, root, tempDir, tinyConfig } from "./helpers.ts";

for (const kind of ["full", "lora"] as const) {
  test(`${kind}: SIGKILL then resume equals uninterrupted`, async () => {
    const out = tempDir(`kill-${kind}`);
    // dropout on (LoRA and attention) so the RNG state must be restored too
    const over = {
      method: { kind, rank: 4, dropout: 0.1 },
      train: { steps: 8, checkpoint_every: 3, attention_dropout: 0.1, grad_accum: 2 },
    };
    const whole = await train(tinyConfig(out, { ...over, run_id: "whole" }));

    const cfg = tinyConfig(out, { ...over, run_id: "killed" });
    const child = Bun.spawn([process.execPath, join(root, "tests/fixtures/train-child.ts"), JSON.stringify(cfg)], {
      cwd: root,
      stdout: "pipe",
      stderr: "inherit",
    });
    let lastCheckpoint = "";
    let buf = "";
    const dec = new TextDecoder();
    for await (const chunk of child.stdout) {
      buf += dec.decode(chunk);
      let nl: number;
      let killed = false;
      for (nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const ev = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (ev.type === "checkpoint") lastCheckpoint = ev.path;
        if (ev.type === "progress" && ev.step === 5) {
          child.kill("SIGKILL"); // between the step-3 and step-6 checkpoints
          killed = true;
          break;
        }
      }
      if (killed) break;
    }
    expect(await child.exited).not.toBe(0);
    expect(child.signalCode).toBe("SIGKILL");
    expect(lastCheckpoint).toEndWith("step-000003");
    const run = await Bun.file(join(out, "killed/run.json")).json();
    expect(run.status).toBe("running"); // it never got to say otherwise

    const resumed = await train({ ...cfg, train: { ...cfg.train, resume_from: lastCheckpoint } });
    expect(resumed.status).toBe("completed");
    const a = await metricLosses(whole.run_dir);
    const b = await metricLosses(resumed.run_dir);
    expect(b.map(([s]) => s)).toEqual(a.map(([s]) => s));
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]![1] - b[i]![1])).toBeLessThanOrEqual(1e-6);
  });
}
