// `loralab train` with no config (the laboratory), `loralab sweep FILE` and `loralab report DIR`.
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { progressReporter } from "./progress.ts";
import { openStore } from "@loralab/db";
import {
  cells,
  describeEta,
  drawStudy,
  enqueueSweep,
  loadStudySpec,
  openQueue,
  queuedPoints,
  redrawReport,
  reportRuns,
  labLanes,
  type LabMode,
  runLab,
  runStudy,
  runWorker,
  scoreBase,
  scoreCheckpoint,
  type SlurmOptions,
  submitSlurm,
  summaryTable,
  sweepCell,
  sweepState,
  waitForSlurm,
  waitForSweep,
} from "@loralab/study";

const stamp = () => new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);

export async function runLaboratory(mode: LabMode, seed = 0): Promise<number> {
  const out = join("runs", `lab-${stamp()}${mode === "default" ? "" : `-${mode}`}${seed ? `-seed${seed}` : ""}`);
  // runs side by side print lines, not bars that redraw over each other
  const lanes = labLanes();
  const r = await runLab({
    mode,
    seed,
    out,
    lanes,
    progress: (label) => progressReporter(label, process.stdout, 4, lanes === 1 && process.stdout.isTTY === true),
  });
  console.log(`\n${summaryTable(r)}\n`);
  for (const f of r.findings)
    console.log(`finding${f.primary ? "" : " (supporting)"}: ${f.claim}: ${f.verdict}. ${f.evidence}`);
  console.log(`decided: ${r.decision}`);
  for (const g of r.gates) console.log(`quality gate: ${g.passed ? "passed" : "FAILED"}: ${g.name}: ${g.detail}`);
  console.log(`\nreport: ${r.report} (figures as SVG and PNG beside it)`);
  console.log(
    `time: ${r.seconds.total.toFixed(0)} s${r.seconds.lanes > 1 ? ` in ${r.seconds.lanes} lanes (worker-seconds: training ${r.seconds.train.toFixed(0)}, evaluation and analysis ${r.seconds.eval.toFixed(0)})` : ` (training ${r.seconds.train.toFixed(0)} s, evaluation and analysis ${r.seconds.eval.toFixed(0)} s)`}`,
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
  for (const f of r.failed) console.log(`failed: ${f.cell}: ${f.error}`);
  if (r.failed.length) {
    console.log(`${r.failed.length} cell(s) failed; the report is over the others (re-running retries them)`);
    return 1;
  }
  return 0;
}

/** A database URL fit to print: its password (in the authority or the query) hidden. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "…";
    if (u.searchParams.has("password")) u.searchParams.set("password", "…");
    return u.href;
  } catch {
    return "postgres://…";
  }
}

/** `loralab sweep FILE --queue`: the cells (and, as they finish, their checkpoints' evaluations)
 *  as jobs; wait for the workers; draw the report from the points they scored. */
export async function cmdSweepQueued(
  file: string,
  outDir: string | undefined,
  url: string,
  retries: number,
): Promise<number> {
  const spec = loadStudySpec(file);
  const out = outDir ?? join("runs", `sweep-${spec.name}`);
  const runs = resolve(join(out, "runs"));
  const q = await enqueueSweep(spec, runs, { url, retries });
  console.log(
    `queued ${q.sent} of ${q.cells} cells (${q.already} already queued or running) for workers sharing ${runs} (start them with: loralab worker --db "$DATABASE_URL"; the store is ${redact(url)})`,
  );
  if (q.drifted.length)
    console.error(
      `loralab sweep: warning: ${q.drifted.length} cell(s) are queued or running with another version of this spec (${q.drifted.slice(0, 3).join(", ")}${q.drifted.length > 3 ? ", …" : ""}); they train as first queued, and the store refuses the edited one's runs later (hint: an edited spec is a new sweep: give it another name)`,
    );
  const st = await waitForSweep(spec, { url, retries, log: console.log });
  for (const d of st.dead) console.log(`dead: ${d.cell}: ${d.error}`);
  const got = await queuedPoints(spec, { url });
  let base = got.base;
  if (!base) {
    // the base needs no checkpoint: scored here rather than leaving the sweep without a report
    console.error(
      "loralab sweep: warning: the base model's point job is dead (see above): scoring the base here, on this host's CPU",
    );
    base = await scoreBase(spec);
  }
  const { points } = got;
  const report = await drawStudy(spec, out, base, points);
  console.log(`report: ${report} (${points.length} points)`);
  return st.dead.length ? 1 : 0;
}

/** `loralab sweep FILE --slurm`: one sbatch array over the cells; wait for its tasks; report here. */
export async function cmdSweepSlurm(
  file: string,
  outDir: string | undefined,
  url: string,
  o: Omit<SlurmOptions, "specFile" | "out">,
): Promise<number> {
  const spec = loadStudySpec(file);
  const out = resolve(outDir ?? join("runs", `sweep-${spec.name}`));
  // the tasks reach the store through the environment sbatch exports, not through the script
  const { jobId, script } = await submitSlurm(spec, { ...o, specFile: file, out, env: { DATABASE_URL: url } });
  console.log(`submitted Slurm job ${jobId}: ${cells(spec).length} array tasks (${script})`);
  const { failed } = await waitForSlurm(spec, out, { log: console.log });
  for (const f of failed) console.log(`failed: ${f.cell} (log: ${f.log})`);
  const r = await runStudy(spec, out, console.log, (label) => progressReporter(label, process.stdout, 4), url);
  console.log(`report: ${r.report} (${r.points.length} points)`);
  return failed.length || r.failed.length ? 1 : 0;
}

/** `loralab sweep cell FILE I --out DIR`: train one cell (a Slurm array task), resuming it. */
export async function cmdSweepCell(
  file: string,
  index: number,
  outDir: string | undefined,
  url: string,
  signal?: AbortSignal,
): Promise<number> {
  const spec = loadStudySpec(file);
  const all = cells(spec);
  const c = all[index];
  if (!c)
    throw new Error(`sweep ${spec.name} has ${all.length} cells: no cell ${index} (hint: 0 to ${all.length - 1})`);
  const out = resolve(outDir ?? join("runs", `sweep-${spec.name}`));
  const store = await openStore({ url });
  try {
    console.log(`cell ${index}: ${c.key}`);
    // trained, then its checkpoints scored here, on the task's GPU: the submitter reads the
    // points from beside the checkpoints (shared storage, as Slurm's array needs anyway)
    let cks: Awaited<ReturnType<typeof sweepCell>>;
    try {
      cks = await sweepCell(spec, c, store, join(out, "runs"), { log: console.log, train: { signal } });
    } catch (e) {
      if (!signal?.aborted) throw e;
      console.error(`cell ${index}: stopped by a signal after a checkpoint; run it again (a requeue) to resume`);
      return 143;
    }
    // an evaluation cannot stop mid-way, and its result is written only whole: a signal now ends
    // the task at once (the requeued task finds the cell trained and scores what is left)
    const preempted = () => {
      console.error(`cell ${index}: stopped by a signal while scoring; run it again (a requeue) to score the rest`);
      process.exit(143);
    };
    if (signal?.aborted) preempted();
    signal?.addEventListener("abort", preempted, { once: true });
    const device = process.env.CUDA_VISIBLE_DEVICES ? "cuda:0" : undefined;
    for (const ck of cks) await scoreCheckpoint(spec, ck, { device, log: console.log });
    signal?.removeEventListener("abort", preempted);
    return 0;
  } finally {
    await store.close();
  }
}

/** `loralab sweep status FILE`: the cells by queue state. */
export async function cmdSweepStatus(file: string, url: string): Promise<number> {
  const spec = loadStudySpec(file);
  const store = await openStore({ url });
  const boss = await openQueue({ url }).catch(async (e) => {
    await store.close();
    throw e;
  });
  try {
    const st = await sweepState(spec, boss, store);
    console.log(`sweep ${spec.name}: ${st.cells} cells`);
    for (const [k, v] of Object.entries(st.byState)) console.log(`  ${k}: ${v}`);
    const pts = Object.entries(st.points);
    if (pts.length) console.log(`  points: ${pts.map(([k, v]) => `${v} ${k}`).join(", ")}`);
    for (const d of st.dead) console.log(`  dead: ${d.cell}: ${d.error}`);
    for (const m of st.missing)
      console.log(`  missing: ${m}: not in the queue (enqueue the sweep again: only what is missing is sent)`);
    console.log(`  ${describeEta(st.eta)}`);
    return 0;
  } finally {
    await boss.stop({ graceful: false });
    await store.close();
  }
}

/** `loralab worker`: train queued cells until stopped (SIGINT/SIGTERM). */
export async function cmdWorker(
  url: string,
  devices: string[],
  runsDir: string | undefined,
  signal: AbortSignal,
): Promise<number> {
  console.log(`worker: ${devices.length} slot(s) (${devices.join(", ")}) on ${redact(url)}`);
  await runWorker({ url, devices, ...(runsDir ? { runsDir: resolve(runsDir) } : {}), signal });
  return 0;
}

export async function cmdReport(dirs: string[], outDir?: string): Promise<number> {
  if (dirs.length === 1 && existsSync(join(dirs[0]!, "points.json")))
    console.log(`report: ${await redrawReport(dirs[0]!)}`);
  else console.log(`report: ${await reportRuns(dirs, outDir ?? join("runs", `report-${stamp()}`))}`);
  return 0;
}
