// Sweeps on Slurm: one `sbatch --array=0-(N-1)%K` job whose task i trains cell i against the
// same Postgres store (`loralab sweep cell FILE i`), requeued on preemption (`--requeue`) and
// resuming from the cell's last checkpoint like any rerun. Slurm schedules; this file writes
// the script, submits it and waits for the tasks' end markers. The database URL is not
// written into the script: sbatch exports the submitting environment (DATABASE_URL).
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { cells, type SweepSpec } from "./sweep.ts";

export interface SlurmOptions {
  /** The sweep's spec file (each task loads it). */
  specFile: string;
  /** The sweep's directory (runs, the report, and slurm/ with the script and logs). */
  out: string;
  partition?: string;
  /** e.g. gpu:1 */
  gres?: string;
  /** e.g. 04:00:00 */
  time?: string;
  /** At most this many tasks at once (the array's %K). */
  parallel?: number;
  /** Further `#SBATCH` lines, verbatim (e.g. --account=X). */
  extra?: string[];
  /** The sbatch to run (default: sbatch on PATH). */
  sbatch?: string;
  /** Added to the environment sbatch runs in and exports to the tasks (DATABASE_URL). */
  env?: Record<string, string>;
}

const root = new URL("../../..", import.meta.url).pathname;

/** An #SBATCH value: one token, no newline, no shell metacharacter that could end the line. */
function safe(what: string, v: string): string {
  if (!/^[A-Za-z0-9_.:=,@%/+-]+$/.test(v))
    throw new Error(`slurm: ${what} \`${v}\` is not a plain sbatch value (hint: letters, digits and _.:=,@%/+- only)`);
  return v;
}

/** The batch script of a sweep: task $SLURM_ARRAY_TASK_ID trains that cell. */
export function slurmScript(spec: SweepSpec, o: SlurmOptions): string {
  const n = cells(spec).length;
  const out = resolve(o.out);
  const logs = join(out, "slurm");
  const k = o.parallel ? `%${o.parallel}` : "";
  const lines = [
    "#!/bin/bash",
    `#SBATCH --job-name=loralab-${safe("sweep name", spec.name)}`,
    `#SBATCH --array=0-${n - 1}${k}`,
    "#SBATCH --requeue",
    "#SBATCH --export=ALL",
    `#SBATCH --output=${logs}/cell-%a.log`,
    ...(o.partition ? [`#SBATCH --partition=${safe("partition", o.partition)}`] : []),
    ...(o.gres ? [`#SBATCH --gres=${safe("gres", o.gres)}`] : []),
    ...(o.time ? [`#SBATCH --time=${safe("time", o.time)}`] : []),
    ...(o.extra ?? []).map((x) => `#SBATCH ${safe("sbatch argument", x)}`),
    "set -euo pipefail",
    `cd ${JSON.stringify(root)}`,
    // a requeued task resumes its cell from the checkpoint; its marker says how it ended
    `marker=${JSON.stringify(logs)}/cell-$SLURM_ARRAY_TASK_ID`,
    'rm -f "$marker.done"',
    `status=0; ${JSON.stringify(process.execPath)} packages/cli/src/main.ts sweep cell ${JSON.stringify(resolve(o.specFile))} "$SLURM_ARRAY_TASK_ID" --out ${JSON.stringify(out)} || status=$?`,
    'echo "$status" > "$marker.done"',
    'exit "$status"',
    "",
  ];
  return lines.join("\n");
}

/** Write the script and submit it; returns the Slurm job id. */
export async function submitSlurm(spec: SweepSpec, o: SlurmOptions): Promise<{ jobId: string; script: string }> {
  const logs = join(resolve(o.out), "slurm");
  mkdirSync(logs, { recursive: true });
  const script = join(logs, "cells.sbatch");
  writeFileSync(script, slurmScript(spec, o));
  chmodSync(script, 0o755);
  const p = Bun.spawn([o.sbatch ?? "sbatch", "--parsable", script], {
    env: { ...process.env, ...o.env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  if (code !== 0)
    throw new Error(
      `slurm: sbatch failed (exit ${code}): ${stderr.trim()} (hint: is this a Slurm login node? see ${script})`,
    );
  return { jobId: stdout.trim().split(";")[0]!, script };
}

/** Wait until every task has written its end marker; the cells that failed, with their logs. */
export async function waitForSlurm(
  spec: SweepSpec,
  out: string,
  o: { pollMs?: number; signal?: AbortSignal; log?: (l: string) => void } = {},
): Promise<{ failed: { cell: string; log: string }[] }> {
  const logs = join(resolve(out), "slurm");
  const all = cells(spec);
  let last = -1;
  for (;;) {
    const done = all.map((_, i) => join(logs, `cell-${i}.done`)).filter((f) => existsSync(f));
    if (done.length !== last) o.log?.(`sweep ${spec.name}: ${done.length} of ${all.length} Slurm tasks ended`);
    last = done.length;
    if (done.length === all.length || o.signal?.aborted) break;
    await Bun.sleep(o.pollMs ?? 2000);
  }
  const failed = all.flatMap((c, i) => {
    const f = join(logs, `cell-${i}.done`);
    const code = existsSync(f) ? readFileSync(f, "utf8").trim() : "";
    return code === "0" ? [] : [{ cell: c.key, log: join(logs, `cell-${i}.log`) }];
  });
  return { failed };
}
