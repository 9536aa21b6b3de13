// Runs trained outside the server (`loralab train`, the library) into its store: what
// `loralab import RUN_DIR...` calls, and the scan `createServer` makes of its runs directory at
// start. Store.ingestRunDir reads a directory (run.json, metrics.jsonl, eval.json, spectrum/);
// this file decides which directories may be read and which are another process's business.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Store } from "@loralab/db";

export type ImportOutcome =
  | { dir: string; id: string; action: "imported" | "updated" }
  | { dir: string; id: string; action: "skipped"; reason: string }
  | { dir: string; action: "failed"; reason: string };

export interface ImportOptions {
  /** Runs this process is training now (the server's runner): never read under it. */
  isActive?: (id: string) => boolean;
}

interface RunJson {
  run_id: string;
  status: string;
  device?: string;
  started_at?: string;
  updated_at?: string;
}

// run.json's word for a run not ended: still training in some process, or that process died
// (docs/run-directory.md); an import would show it as running forever, and the runner's
// recovery would take over a run it never started
const UNFINISHED = new Set(["running", "interrupted"]);
// the store's: a runner queued it or is training it, and ingests it itself when it ends
const RUNNER_OWNED = new Set(["queued", "running", "interrupted"]);

/** A run directory's run.json, or null when `dir` has none (not a run directory). */
export function readRunJson(dir: string): RunJson | null {
  const file = join(dir, "run.json");
  if (!existsSync(file)) return null;
  const run = JSON.parse(readFileSync(file, "utf8")) as Partial<RunJson>;
  if (typeof run.run_id !== "string" || !run.run_id || typeof run.status !== "string")
    throw new Error(`${file}: no run_id or status (hint: a run directory written by loralab train)`);
  return run as RunJson;
}

/** run.json's `YYYYMMDD-HHMMSS-mmm` (UTC) as the store's ISO-8601. */
function isoTime(t: string | undefined): string | null {
  const m = /^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})-(\d{3})$/.exec(t ?? "");
  return m ? `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z` : null;
}

/** One run directory into the store: created when the store does not know it, refreshed when it
 *  does (eval.json and spectrum/ written since; metric, eval and spectrum rows are upserted,
 *  never duplicated). Skipped while it is unfinished or a runner's. */
export async function importRunDir(store: Store, dir: string, o: ImportOptions = {}): Promise<ImportOutcome> {
  const runDir = resolve(dir);
  if (!existsSync(runDir))
    return { dir: runDir, action: "failed", reason: `${runDir}: no such directory (hint: check the path)` };
  let run: RunJson | null;
  try {
    run = readRunJson(runDir);
  } catch (e) {
    return { dir: runDir, action: "failed", reason: (e as Error).message };
  }
  if (!run)
    return {
      dir: runDir,
      action: "failed",
      reason: `${runDir}: not a run directory (no run.json) (hint: give a directory written by loralab train, or a directory of them)`,
    };
  const id = run.run_id;
  if (UNFINISHED.has(run.status))
    return {
      dir: runDir,
      id,
      action: "skipped",
      reason: `run.json says ${run.status}: still training, or its process died (hint: import it once it has ended; resume a dead run with --train.resume_from=<its last checkpoint>)`,
    };
  const known = await store.getRun(id);
  if (known && resolve(known.runDir) !== runDir)
    return {
      dir: runDir,
      id,
      action: "skipped",
      reason: `the store's run ${id} is another directory, ${known.runDir} (hint: a copy? train it with another run_id)`,
    };
  if (known && (RUNNER_OWNED.has(known.status) || o.isActive?.(id)))
    return {
      dir: runDir,
      id,
      action: "skipped",
      reason: `a server's runner has it (${known.status}): it reads the directory itself when the run ends`,
    };
  try {
    await store.ingestRunDir(runDir, run.device ?? "cpu", id);
  } catch (e) {
    return { dir: runDir, action: "failed", reason: `${runDir}: ${(e as Error).message}` };
  }
  if (!known) {
    // listed by when it ran, not when it was imported
    const startedAt = isoTime(run.started_at);
    await store.updateRun(id, {
      attempts: 1,
      createdAt: startedAt ?? new Date().toISOString(),
      startedAt,
      finishedAt: isoTime(run.updated_at),
    });
  }
  return { dir: runDir, id, action: known ? "updated" : "imported" };
}

/** `importRunDir` for a run directory, or for each run directory in a directory of them. */
export async function importRuns(store: Store, dir: string, o: ImportOptions = {}): Promise<ImportOutcome[]> {
  if (!existsSync(join(dir, "run.json")) && existsSync(dir)) {
    const children = runDirsIn(dir);
    if (children.length) {
      const out: ImportOutcome[] = [];
      for (const c of children) out.push(await importRunDir(store, c, o));
      return out;
    }
  }
  return [await importRunDir(store, dir, o)];
}

/** The run directories directly under `runsDir` (those with a run.json), by name. */
function runDirsIn(runsDir: string): string[] {
  return readdirSync(runsDir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(join(runsDir, e.name, "run.json")))
    .map((e) => join(runsDir, e.name))
    .sort();
}

/** At server start: the run directories under `runsDir` the store does not know yet (runs trained
 *  by `loralab train` or the library). A known run is left alone, so a restart reads nothing twice;
 *  directories without run.json are not runs and are passed over in silence. */
export async function scanRunsDir(store: Store, runsDir: string, o: ImportOptions = {}): Promise<ImportOutcome[]> {
  if (!existsSync(runsDir)) return [];
  const out: ImportOutcome[] = [];
  for (const dir of runDirsIn(runsDir)) {
    let run: RunJson | null;
    try {
      run = readRunJson(dir);
    } catch (e) {
      out.push({ dir, action: "failed", reason: (e as Error).message });
      continue;
    }
    if (!run || (await store.getRun(run.run_id))) continue;
    out.push(await importRunDir(store, dir, o));
  }
  return out;
}
