// The study: the laboratory's --quick variant end to end through the CLI (the report renders
// in headless Chromium without console errors, its PNGs exist), a sweep that resumes by
// skipping finished cells, CPT duration branches, and the hybrid method.
import { expect, test } from "bun:test";
import { cpSync, existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { runSweep } from "@loralab/study";
import { launchChromium, root, tempDir } from "./helpers.ts";
import { tinySweep } from "./sweeps.ts";

test("bun run train --quick: the laboratory end to end, a summary table, a report that renders", async () => {
  const p = Bun.spawnSync([process.execPath, "packages/cli/src/main.ts", "train", "--quick"], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
  });
  const out = p.stdout.toString();
  expect(p.stderr.toString()).toBe("");
  expect(p.exitCode).toBe(0); // quality gates passed
  expect(out).toContain("quality gate: passed: the base model knows its source domain");
  expect(out).toContain("quality gate: passed: full fine-tuning learns the target domain");
  // --quick must decide the first finding (its gate), and says which findings need the full grid
  expect(out).toMatch(/finding: LoRA learns less than full fine-tuning: (HELD|REFUTED)\. best full FT/);
  expect(out).toContain("quality gate: passed: the quick laboratory decides whether LoRA learns less");
  expect(out).toMatch(
    /finding: LoRA's best learning rate is about 10× full fine-tuning's: UNDECIDED\. the grid does not bracket/,
  );
  expect(out).toMatch(/^decided: [1-4] of the study's 4 findings decided at 95 %/m);
  // its two runs side by side in single-threaded worker processes, one per core (at most one per run)
  const lanes = Math.min(2, availableParallelism());
  expect(out).toContain(
    `2 runs in ${lanes} lane${lanes > 1 ? "s (worker processes side by side, one thread each)" : ""}`,
  );
  expect(out).toMatch(/^power: learning: 400 target questions detect a paired difference of [\d.]+ points/m);
  expect(out).toMatch(/^base\s+0\s+[\d.]+ ±\s*[\d.]+/m);
  const report = /report: (\S+report\.html)/.exec(out)![1]!;
  const dir = join(root, report, "..");
  for (const f of ["pareto", "duration", "lr", "rank90"]) {
    expect(existsSync(join(dir, `${f}.svg`))).toBe(true);
    const png = join(dir, `${f}.png`);
    expect(statSync(png).size).toBeGreaterThan(5000);
    expect(readFileSync(png).subarray(1, 4).toString()).toBe("PNG");
  }
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    await page.goto(`file://${join(root, report)}`);
    expect(await page.locator("figure svg").count()).toBeGreaterThanOrEqual(4);
    expect(await page.textContent("h1")).toContain("laboratory");
    const shot = await page.screenshot({ fullPage: true });
    expect(shot.length).toBeGreaterThan(20_000);
    expect(errors).toEqual([]);
  } finally {
    await browser.close();
  }
}, 600_000);

const tinySpec = tinySweep;

test("a sweep: every cell a run in the store, epoch checkpoints, and a resumed sweep skips finished cells", async () => {
  const out = tempDir("sweep");
  const store = await openStore({ path: join(out, "s.db") });
  const spec = tinySpec("t", out, { targets: ["all", "attention"] });
  const logs: string[] = [];
  const cks = (await runSweep(spec, store, join(out, "runs"), (m) => logs.push(m))).checkpoints;
  expect(cks.map((c) => `${c.cell.key}@${c.duration}`)).toEqual([
    "full-lr1e-3-s0@1",
    "full-lr1e-3-s0@2",
    "lora-r4-a8-all-lr3e-3-s0@1",
    "lora-r4-a8-all-lr3e-3-s0@2",
    "lora-r4-a8-attention-lr3e-3-s0@1",
    "lora-r4-a8-attention-lr3e-3-s0@2",
  ]);
  expect(cks[2]!.adapter).toContain("checkpoints/step-000004"); // 16 records / 4 per step = 4 steps an epoch
  expect((await store.listRuns()).map((r) => r.status)).toEqual(["completed", "completed", "completed"]);
  const again: string[] = [];
  await runSweep(spec, store, join(out, "runs"), (m) => again.push(m));
  expect(again.filter((m) => m.includes("skipped")).length).toBe(3);
  // a field the stored config lacks (a default a newer engine added since) is not drift
  for (const r of await store.listRuns()) {
    const older = structuredClone(r.config) as { train: Record<string, unknown> };
    delete older.train.eval_every;
    await store.updateRun(r.id, { config: older as unknown as Record<string, unknown> });
  }
  const newer = await runSweep(spec, store, join(out, "runs"), () => {});
  expect([newer.failed, newer.checkpoints.length]).toEqual([[], 6]);
  // the same sweep name with an edited spec: its runs are not taken as the edited cells' own
  const edited = { ...spec, base: { ...spec.base, optim: { ...spec.base.optim, weight_decay: 0.5 } } };
  const drifted = await runSweep(edited, store, join(out, "runs"), () => {});
  expect(drifted.checkpoints).toEqual([]);
  expect(drifted.failed.map((f) => f.error)).toEqual(
    Array(3).fill(
      expect.stringMatching(
        /^run t-\S+ in the store was trained with another optim\.weight_decay .*hint: an edited spec is a new sweep/,
      ),
    ),
  );
  await store.close();
}, 180_000);

test("a failing cell fails alone: the others train, the failure is named, each run's device is recorded", async () => {
  const out = tempDir("sweep-iso");
  const store = await openStore({ path: join(out, "s.db") });
  // rank 9999 exceeds the tiny model's dimensions: that cell is refused, the rest go on
  const spec = tinySpec("iso", out, { ranks: [9999, 4], durations: [1] });
  const logs: string[] = [];
  const r = await runSweep(spec, store, join(out, "runs"), (m) => logs.push(m));
  expect(r.failed.map((f) => f.cell)).toEqual(["lora-r9999-a19998-all-lr3e-3-s0"]);
  expect(r.failed[0]!.error).toMatch(/exceeds min\(d_in, d_out\)/);
  expect(logs.some((l) => /failed: .*the other cells go on/.test(l))).toBe(true);
  expect(r.checkpoints.map((c) => c.cell.key)).toEqual(["full-lr1e-3-s0", "lora-r4-a8-all-lr3e-3-s0"]);
  const runs = (await store.listRuns()).sort((a, b) => a.id.localeCompare(b.id));
  // the failed cell is in the store as failed, with its error
  expect(runs.map((x) => [x.id.replace("iso-", ""), x.status, x.device])).toEqual([
    ["full-lr1e-3-s0", "completed", "cpu"],
    ["lora-r4-a8-all-lr3e-3-s0", "completed", "cpu"],
    ["lora-r9999-a19998-all-lr3e-3-s0", "failed", "cpu"],
  ]);
  expect(runs[2]!.error).toMatch(/exceeds min/);
  await store.close();
}, 180_000);

test("CPT durations are branches from 0.8·D of one long run; hybrid trains LoRA, merges, then fully trains chosen modules", async () => {
  const out = tempDir("sweep-cpt");
  const store = await openStore({ path: join(out, "s.db") });
  const cpt = tinySpec("c", out, { regime: "cpt", methods: ["full"], durations: [32 * 4 * 10, 32 * 4 * 20] }); // 10 and 20 steps of 4×32 tokens
  const cks = (await runSweep(cpt, store, join(out, "runs"), () => {})).checkpoints;
  expect(cks.map((c) => c.runId)).toEqual(["c-full-lr1e-3-s0-D10", "c-full-lr1e-3-s0-D20"]);
  const longRun = join(out, "runs", "c-full-lr1e-3-s0", "checkpoints");
  expect(readdirSync(longRun).sort()).toEqual(["step-000008", "step-000016", "step-000020"]);
  const branch = JSON.parse(readFileSync(join(out, "runs", "c-full-lr1e-3-s0-D10", "config.json"), "utf8"));
  expect(branch.train.resume_from).toContain("step-000008");
  expect(branch.schedule).toMatchObject({ kind: "inverse_sqrt", cooldown_frac: 0.2 });
  const lrs = readFileSync(join(out, "runs", "c-full-lr1e-3-s0-D10", "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l).lr as number);
  expect(lrs.length).toBe(2); // steps 9 and 10: the cooldown
  expect(lrs[1]!).toBeLessThan(lrs[0]!);

  const hy = tinySpec("h", out, {
    methods: ["hybrid"],
    lr: { hybrid: [1e-3] },
    durations: [1, 2, 3],
    hybrid: { lora_fraction: 1 / 3, full_targets: ["gate_proj", "up_proj", "down_proj"], rank: 4 },
  });
  const hcks = (await runSweep(hy, store, join(out, "runs"), () => {})).checkpoints;
  expect(hcks.map((c) => c.duration)).toEqual([2, 3]);
  // the same sweep from a copy of its runs directory (a moved checkout, a worker's own): phase 2's
  // model is the merged one inside it, under another path, and that is not drift
  cpSync(join(out, "runs"), join(out, "moved"), { recursive: true });
  const moved = await runSweep(hy, store, join(out, "moved"), () => {});
  expect([moved.failed, moved.checkpoints.map((c) => c.duration)]).toEqual([[], [2, 3]]);
  const phase2 = JSON.parse(readFileSync(join(out, "runs", hcks[0]!.runId, "config.json"), "utf8"));
  expect(phase2.method).toMatchObject({ kind: "full", targets: ["gate_proj", "up_proj", "down_proj"] });
  // only the MLP weights moved in phase 2: attention equals the merged LoRA phase's
  const { analyze } = await import("@loralab/spectrum");
  const merged = join(out, "runs", `${hcks[0]!.runId}-merged`);
  const a = await analyze({ base: merged, tuned: hcks[1]!.model }, { spectra: false, layers: [0] });
  for (const m of a.matrices)
    expect([m.module, m.delta.frobenius > 0]).toEqual([
      m.module,
      ["gate_proj", "up_proj", "down_proj"].includes(m.module),
    ]);
  await store.close();
}, 300_000);
