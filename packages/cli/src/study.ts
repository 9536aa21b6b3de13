// `loralab train` with no config (the laboratory), `loralab sweep FILE` and `loralab report DIR`.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { progressReporter } from "./progress.ts";
import { loadStudySpec, redrawReport, reportRuns, runLab, runStudy, summaryTable } from "@loralab/study";

const stamp = () => new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);

export async function runLaboratory(quick: boolean, seed = 0): Promise<number> {
  const out = join("runs", `lab-${stamp()}${quick ? "-quick" : ""}${seed ? `-seed${seed}` : ""}`);
  const r = await runLab({ quick, seed, out, progress: (label) => progressReporter(label, process.stdout, 4) });
  console.log(`\n${summaryTable(r)}\n`);
  for (const f of r.findings)
    console.log(`finding${f.primary ? "" : " (supporting)"}: ${f.claim}: ${f.verdict}. ${f.evidence}`);
  console.log(`decided: ${r.decision}`);
  for (const g of r.gates) console.log(`quality gate: ${g.passed ? "passed" : "FAILED"}: ${g.name}: ${g.detail}`);
  console.log(`\nreport: ${r.report} (figures as SVG and PNG beside it)`);
  console.log(
    `time: ${r.seconds.total.toFixed(0)} s (training ${r.seconds.train.toFixed(0)} s, evaluation and analysis ${r.seconds.eval.toFixed(0)} s)`,
  );
  if (r.gates.some((g) => !g.passed)) {
    console.error("\nloralab: a quality gate failed: the findings above are not to be trusted (see the report)");
    return 1;
  }
  return 0;
}

export async function cmdSweep(file: string, outDir?: string): Promise<number> {
  const spec = loadStudySpec(file);
  const out = outDir ?? join("runs", `sweep-${spec.name}`);
  const r = await runStudy(spec, out, console.log, (label) => progressReporter(label, process.stdout, 4));
  console.log(
    `report: ${r.report} (${r.points.length} points; re-running the same command resumes and skips finished cells)`,
  );
  return 0;
}

export async function cmdReport(dirs: string[], outDir?: string): Promise<number> {
  if (dirs.length === 1 && existsSync(join(dirs[0]!, "points.json")))
    console.log(`report: ${await redrawReport(dirs[0]!)}`);
  else console.log(`report: ${await reportRuns(dirs, outDir ?? join("runs", `report-${stamp()}`))}`);
  return 0;
}
