// `loralab sweep FILE`: the study on the user's own model and data. The file is a SweepSpec
// (JSON or TOML) plus `eval`: which learning task (humaneval or gsm8k) and which forgetting
// tasks to score every checkpoint on, with their data. Results go to <out>/points.json and the
// report; `loralab report DIR` redraws the report from points.json.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { evaluate, FORGETTING_DEFAULT, MC_TASKS, summarize, type EvalOptions, type TaskName } from "@loralab/eval";
import { analyze } from "@loralab/spectrum";
import { groupOf, type Point } from "./points.ts";
import { writeReport } from "./report.ts";
import { runSweep, type Checkpoint, type SweepSpec } from "./sweep.ts";

export interface StudySpec extends SweepSpec {
  eval: Pick<EvalOptions, "data" | "limit" | "humaneval" | "gsm8k" | "shots" | "batchSize"> & { learning: "humaneval" | "gsm8k" };
}

export function loadStudySpec(file: string): StudySpec {
  const text = readFileSync(file, "utf8");
  const spec = (file.endsWith(".toml") ? Bun.TOML.parse(text) : JSON.parse(text)) as StudySpec;
  for (const k of ["name", "regime", "base", "methods", "lr", "durations", "eval"] as const)
    if (spec[k] === undefined) throw new Error(`${file}: the sweep spec lacks \`${k}\` (hint: see configs/sweep-example.toml)`);
  if (!["ift", "cpt"].includes(spec.regime)) throw new Error(`${file}: regime must be "ift" or "cpt", not ${JSON.stringify(spec.regime)}`);
  return spec;
}

async function score(model: string, adapter: string, spec: StudySpec) {
  const tasks: TaskName[] = [spec.eval.learning, ...MC_TASKS];
  const r = await evaluate({ ...spec.eval, model, adapter: adapter || undefined, merged: true, tasks });
  const s = summarize(r.tasks, FORGETTING_DEFAULT, spec.eval.shots);
  const lt = r.tasks[spec.eval.learning]!;
  const lm = lt.metrics[spec.eval.learning === "humaneval" ? "pass@1" : "strict_match"];
  const lse = typeof lm === "number" ? Math.sqrt((s.learning!.value * (1 - s.learning!.value)) / Math.max(1, lt.docs)) : lm!.stderr;
  const parts = MC_TASKS.map((t) => r.tasks[t]!.metrics[FORGETTING_DEFAULT.metrics[t]] as { stderr: number });
  const fse = Math.sqrt(parts.reduce((a, p) => a + p.stderr ** 2, 0)) / parts.length;
  return { learning: { value: s.learning!.value, stderr: lse }, forgetting: { value: s.forgetting!.value, stderr: fse }, perplexity: NaN };
}

export async function runStudy(spec: StudySpec, out: string, log: (m: string) => void = console.log): Promise<{ report: string; points: Point[] }> {
  mkdirSync(out, { recursive: true });
  const store = await openStore({ path: join(out, "study.db") });
  try {
    const baseModel = spec.base.model?.path;
    if (!baseModel) throw new Error(`sweep ${spec.name}: base.model.path must name the base model (HF directory or .gguf)`);
    const bm = await score(baseModel, "", spec);
    const base: Point = { key: "base", group: "base", method: "base", rank: null, targets: "", lr: 0, seed: 0, duration: 0, tokens: 0, ...bm, rank90: null, rank90By: [] };
    const cks: Checkpoint[] = await runSweep(spec, store, join(out, "runs"), log);
    const points: Point[] = [];
    for (const ck of cks) {
      const dir = ck.adapter || ck.model;
      const cache = join(dir, "study-point.json");
      if (existsSync(cache)) {
        points.push(JSON.parse(readFileSync(cache, "utf8")));
        continue;
      }
      log(`eval ${ck.runId} @ ${ck.duration}`);
      const m = await score(ck.model, ck.adapter, spec);
      const a = await analyze(ck.adapter ? { base: baseModel, adapter: ck.adapter } : { base: baseModel, tuned: ck.model }, { spectra: false, keep: 0 });
      const rank90By = a.matrices.map((x) => ({ module: x.module, layer: x.layer, rank: x.delta.rank_at["0.9"] ?? 0, maxRank: x.delta.max_rank }));
      const p: Point = { key: ck.cell.key, group: groupOf(ck.cell), method: ck.cell.method, rank: ck.cell.rank, targets: ck.cell.targets, lr: ck.cell.lr, seed: ck.cell.seed, duration: ck.duration, tokens: ck.tokens, ...m, rank90: rank90By.reduce((s, x) => s + x.rank, 0) / Math.max(1, rank90By.length), rank90By };
      writeFileSync(cache, JSON.stringify(p));
      points.push(p);
    }
    const label = spec.regime === "ift" ? "epochs" : "training tokens";
    writeFileSync(join(out, "points.json"), JSON.stringify({ title: `loralab study: ${spec.name}`, base, points, durationLabel: label }, null, 1));
    const rep = await writeReport(join(out, "report"), { title: `loralab study: ${spec.name}`, base, points, durationLabel: label, notes: [`Sweep spec: ${spec.name} (${spec.regime}).`, spec.regime === "ift" ? "Durations: the checkpoint at the end of each epoch of one run per cell." : "Durations: branches resumed from the checkpoint at 0.8·D of one long run, with a linear cooldown over their last 20 %."], gates: [] });
    return { report: rep.html, points };
  } finally {
    await store.close();
  }
}

/** Redraw a report from a points.json (a study's or the laboratory's). */
export async function redrawReport(dir: string): Promise<string> {
  const f = join(dir, "points.json");
  if (!existsSync(f)) throw new Error(`${dir}: no points.json (hint: a directory written by loralab sweep or the laboratory)`);
  const p = JSON.parse(readFileSync(f, "utf8"));
  return (await writeReport(join(dir, "report"), { ...p, notes: p.notes ?? [], gates: p.gates ?? [] })).html;
}
