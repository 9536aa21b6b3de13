// @loralab/db: the run store. SQLite through bun:sqlite by default (a file under the working
// directory, created and migrated on first use, WAL mode); Postgres when DATABASE_URL (or
// `url`) is set. Two thin schema files (held equal by a test), one migrations folder per
// dialect (drizzle-kit, committed), and this one query module for both: drizzle's query
// builders have the same surface on both dialects, so the queries are written once against
// the SQLite types and run unchanged on Postgres (the store tests run them on both).
import { Database } from "bun:sqlite";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { and, asc, desc, eq, gt, inArray, sql } from "drizzle-orm";
import { drizzle as drizzleSqlite, type BunSQLiteDatabase } from "drizzle-orm/bun-sqlite";
import { migrate as migrateSqlite } from "drizzle-orm/bun-sqlite/migrator";
import { drizzle as drizzlePg } from "drizzle-orm/postgres-js";
import { migrate as migratePg } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import { leaseFile, leasePostgres, type StoreLease } from "./lease.ts";
import * as pgSchema from "./schema.pg.ts";
import * as sqliteSchema from "./schema.sqlite.ts";

export { StoreBusy, type StoreLease } from "./lease.ts";
export { pgSchema, sqliteSchema };

const MIGRATIONS = join(import.meta.dir, "..", "drizzle");

export type RunStatus = "queued" | "running" | "completed" | "cancelled" | "failed" | "interrupted";
export type RunRow = typeof sqliteSchema.runs.$inferSelect & { status: RunStatus; config: Record<string, unknown> };
export type NewRun = Omit<typeof sqliteSchema.runs.$inferInsert, "attempts" | "createdAt" | "status"> & {
  status?: RunStatus;
};
/** The per-step metrics the store keeps of a run (metrics.jsonl's fields of the same names). */
export const LOGGED_METRICS = ["loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed_s", "val_loss"] as const;

export interface MetricRow {
  step: number;
  name: string;
  value: number;
}
export type EvalRow = Omit<typeof sqliteSchema.evalResults.$inferSelect, "runId">;
export type SpectrumRow = Omit<typeof sqliteSchema.spectra.$inferSelect, "runId">;
export type ArtifactRow = Omit<typeof sqliteSchema.artifacts.$inferSelect, "runId">;

export interface StoreOptions {
  /** postgres://… (default: $DATABASE_URL); when absent, SQLite at `path`. */
  url?: string;
  /** SQLite file (default ./loralab.db). */
  path?: string;
}

const now = () => new Date().toISOString();
/** The advisory lock key the Postgres migrations are taken under ("lora" in ASCII). */
const MIGRATION_LOCK = 0x6c6f7261;
const CHUNK = 500; // rows per insert statement (SQLite's bound-parameter limit)

export class Store {
  private constructor(
    readonly kind: "sqlite" | "postgres",
    // one query module: typed as SQLite, the same calls run on the Postgres database and tables
    private readonly db: BunSQLiteDatabase<typeof sqliteSchema>,
    private readonly t: typeof sqliteSchema,
    private readonly closeFn: () => Promise<void>,
    readonly where: string,
    private readonly leaseFn: (what: string, onLost: (why: string) => void) => Promise<StoreLease>,
  ) {}

  static async open(o: StoreOptions = {}): Promise<Store> {
    const url = o.url ?? process.env.DATABASE_URL;
    if (url) {
      const client = postgres(url, { max: 10, onnotice: () => {} });
      const db = drizzlePg(client, { schema: pgSchema });
      try {
        // one migrator at a time: processes opening a new store together (a sweep's workers)
        // would otherwise race on CREATE TABLE and fail on pg_type's unique index
        const gate = postgres(url, { max: 1, onnotice: () => {} });
        try {
          await gate.unsafe(`SELECT pg_advisory_lock(${MIGRATION_LOCK})`);
          await migratePg(db, { migrationsFolder: join(MIGRATIONS, "pg") });
        } finally {
          await gate.end({ timeout: 1 });
        }
      } catch (e) {
        await client.end({ timeout: 1 });
        const cause = (e as { cause?: Error }).cause?.message;
        throw new Error(
          `run store ${url.replace(/\/\/[^@]*@/, "//…@")}: ${cause ?? (e as Error).message} (hint: is the Postgres server up and the database created?)`,
        );
      }
      const where = url.replace(/\/\/[^@]*@/, "//…@");
      return new Store(
        "postgres",
        db as unknown as BunSQLiteDatabase<typeof sqliteSchema>,
        pgSchema as unknown as typeof sqliteSchema,
        () => client.end({ timeout: 5 }),
        "postgres",
        (what, onLost) => leasePostgres(url, where, what, onLost),
      );
    }
    const path = o.path ?? "loralab.db";
    if (dirname(path) !== ".") mkdirSync(dirname(path), { recursive: true });
    const sqlite = new Database(path, { create: true });
    sqlite.exec("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;");
    const db = drizzleSqlite(sqlite, { schema: sqliteSchema });
    migrateSqlite(db, { migrationsFolder: join(MIGRATIONS, "sqlite") });
    // an in-memory database has no other process to share it with
    const lease =
      path === ":memory:"
        ? async () => ({ holder: "", release: async () => {} })
        : (what: string) => leaseFile(path, what);
    return new Store("sqlite", db, sqliteSchema, async () => sqlite.close(), path, lease);
  }

  /** Take the store's lease for the process that works its queue (`loralab serve`): one at a time
   * per store, or StoreBusy naming the holder. Readers (`loralab import`, reports) need none.
   * `onLost` is called if the lease is taken away (Postgres: the connection was lost and another
   * server took it meanwhile). */
  async lease(what: string, onLost: (why: string) => void = () => {}): Promise<StoreLease> {
    return this.leaseFn(what, onLost);
  }

  async close(): Promise<void> {
    await this.closeFn();
  }

  // ---------------------------------------------------------------- runs

  async createRun(r: NewRun): Promise<RunRow> {
    const row = { ...r, status: r.status ?? "queued", attempts: 0, createdAt: now() };
    const [out] = await this.db.insert(this.t.runs).values(row).returning();
    return out as RunRow;
  }

  async getRun(id: string): Promise<RunRow | undefined> {
    const [r] = await this.db.select().from(this.t.runs).where(eq(this.t.runs.id, id));
    return r as RunRow | undefined;
  }

  async listRuns(o: { status?: RunStatus[]; limit?: number; sweepId?: string } = {}): Promise<RunRow[]> {
    const q = this.db.select().from(this.t.runs);
    const conds = [
      ...(o.status?.length ? [inArray(this.t.runs.status, o.status)] : []),
      ...(o.sweepId !== undefined ? [eq(this.t.runs.sweepId, o.sweepId)] : []),
    ];
    const w = conds.length ? q.where(and(...conds)) : q;
    return (await w.orderBy(desc(this.t.runs.createdAt), desc(this.t.runs.id)).limit(o.limit ?? 1000)) as RunRow[];
  }

  async updateRun(id: string, patch: Partial<Omit<RunRow, "id">>): Promise<void> {
    await this.db.update(this.t.runs).set(patch).where(eq(this.t.runs.id, id));
  }

  /** The devices that queued runs wait for (as their configs name them: cpu, cuda, cuda:1, ...). */
  async queuedDevices(): Promise<string[]> {
    const rows = await this.db
      .selectDistinct({ device: this.t.runs.device })
      .from(this.t.runs)
      .where(eq(this.t.runs.status, "queued"));
    return rows.map((r) => r.device).sort();
  }

  /** queued → running for up to `limit` runs of `device` (one name, or the names of one device:
   * `cuda` and `cuda:0`), oldest first; each claim is a compare-and-set, so two workers never take
   * the same run. */
  async claimQueued(device: string | string[], limit: number): Promise<RunRow[]> {
    if (limit <= 0) return [];
    const devices = typeof device === "string" ? [device] : device;
    if (!devices.length) return [];
    const candidates = await this.db
      .select({ id: this.t.runs.id })
      .from(this.t.runs)
      .where(and(eq(this.t.runs.status, "queued"), inArray(this.t.runs.device, devices)))
      .orderBy(asc(this.t.runs.createdAt), asc(this.t.runs.id))
      .limit(limit);
    const out: RunRow[] = [];
    for (const c of candidates) {
      const [r] = await this.db
        .update(this.t.runs)
        .set({ status: "running", startedAt: now(), attempts: sql`${this.t.runs.attempts} + 1` })
        .where(and(eq(this.t.runs.id, c.id), eq(this.t.runs.status, "queued")))
        .returning();
      if (r) out.push(r as RunRow);
    }
    return out;
  }

  // ---------------------------------------------------------------- metrics

  /** Upsert by (run, step, name): a resumed run re-logging a step replaces it, never duplicates it. */
  async recordMetrics(runId: string, rows: MetricRow[]): Promise<void> {
    for (let i = 0; i < rows.length; i += CHUNK) {
      const chunk = rows.slice(i, i + CHUNK).map((r) => ({ runId, ...r }));
      await this.db
        .insert(this.t.metrics)
        .values(chunk)
        .onConflictDoUpdate({
          target: [this.t.metrics.runId, this.t.metrics.step, this.t.metrics.name],
          set: { value: sql`excluded.value` },
        });
    }
  }

  async metrics(runId: string, o: { name?: string; afterStep?: number } = {}): Promise<MetricRow[]> {
    const m = this.t.metrics;
    const conds = [eq(m.runId, runId)];
    if (o.name) conds.push(eq(m.name, o.name));
    if (o.afterStep !== undefined) conds.push(gt(m.step, o.afterStep));
    return this.db
      .select({ step: m.step, name: m.name, value: m.value })
      .from(m)
      .where(and(...conds))
      .orderBy(asc(m.step), asc(m.name));
  }

  /** One metric of many runs, in one query: run id → its rows by step. */
  async metricsOf(runIds: string[], name: string): Promise<Map<string, { step: number; value: number }[]>> {
    const out = new Map<string, { step: number; value: number }[]>();
    if (!runIds.length) return out;
    const m = this.t.metrics;
    const rows = await this.db
      .select({ runId: m.runId, step: m.step, value: m.value })
      .from(m)
      .where(and(inArray(m.runId, [...new Set(runIds)]), eq(m.name, name)))
      .orderBy(asc(m.runId), asc(m.step));
    for (const r of rows) {
      const list = out.get(r.runId) ?? [];
      if (!list.length) out.set(r.runId, list);
      list.push({ step: r.step, value: r.value });
    }
    return out;
  }

  // ---------------------------------------------------------------- results

  async recordEval(runId: string, rows: EvalRow[]): Promise<void> {
    const e = this.t.evalResults;
    for (let i = 0; i < rows.length; i += CHUNK)
      await this.db
        .insert(e)
        .values(rows.slice(i, i + CHUNK).map((r) => ({ runId, ...r })))
        .onConflictDoUpdate({
          target: [e.runId, e.checkpoint, e.task, e.metric],
          set: { value: sql`excluded.value`, stderr: sql`excluded.stderr`, n: sql`excluded.n` },
        });
  }

  /** Forget a run's eval rows under one checkpoint key (before a fresh evaluation replaces them). */
  async clearEval(runId: string, checkpoint: string): Promise<void> {
    const e = this.t.evalResults;
    await this.db.delete(e).where(and(eq(e.runId, runId), eq(e.checkpoint, checkpoint)));
  }

  async evalResults(runId: string): Promise<EvalRow[]> {
    const e = this.t.evalResults;
    return this.db
      .select({ checkpoint: e.checkpoint, task: e.task, metric: e.metric, value: e.value, stderr: e.stderr, n: e.n })
      .from(e)
      .where(eq(e.runId, runId))
      .orderBy(asc(e.checkpoint), asc(e.task), asc(e.metric));
  }

  async recordSpectra(runId: string, rows: SpectrumRow[]): Promise<void> {
    const s = this.t.spectra;
    for (let i = 0; i < rows.length; i += CHUNK)
      await this.db
        .insert(s)
        .values(rows.slice(i, i + CHUNK).map((r) => ({ runId, ...r })))
        .onConflictDoUpdate({
          target: [s.runId, s.checkpoint, s.layer, s.module, s.threshold],
          set: {
            rank: sql`excluded.rank`,
            maxRank: sql`excluded.max_rank`,
            effectiveRank: sql`excluded.effective_rank`,
            stableRank: sql`excluded.stable_rank`,
          },
        });
  }

  async spectra(runId: string): Promise<SpectrumRow[]> {
    const s = this.t.spectra;
    const cols = {
      checkpoint: s.checkpoint,
      layer: s.layer,
      module: s.module,
      threshold: s.threshold,
      rank: s.rank,
      maxRank: s.maxRank,
      effectiveRank: s.effectiveRank,
      stableRank: s.stableRank,
    };
    return this.db
      .select(cols)
      .from(s)
      .where(eq(s.runId, runId))
      .orderBy(asc(s.checkpoint), asc(s.layer), asc(s.module), asc(s.threshold));
  }

  async recordArtifacts(runId: string, rows: ArtifactRow[]): Promise<void> {
    await this.db.delete(this.t.artifacts).where(eq(this.t.artifacts.runId, runId));
    for (let i = 0; i < rows.length; i += CHUNK)
      await this.db.insert(this.t.artifacts).values(rows.slice(i, i + CHUNK).map((r) => ({ runId, ...r })));
  }

  async artifacts(runId: string): Promise<ArtifactRow[]> {
    const a = this.t.artifacts;
    return this.db
      .select({ path: a.path, kind: a.kind, bytes: a.bytes })
      .from(a)
      .where(eq(a.runId, runId))
      .orderBy(asc(a.path));
  }

  async createSweep(s: { id: string; name: string; config: Record<string, unknown> }): Promise<void> {
    await this.db.insert(this.t.sweeps).values({ ...s, createdAt: now() });
  }

  async getSweep(id: string): Promise<{ id: string; name: string; config: unknown; createdAt: string } | undefined> {
    const [s] = await this.db.select().from(this.t.sweeps).where(eq(this.t.sweeps.id, id));
    return s;
  }

  async listSweeps(): Promise<{ id: string; name: string; config: unknown; createdAt: string }[]> {
    return await this.db.select().from(this.t.sweeps).orderBy(desc(this.t.sweeps.createdAt), desc(this.t.sweeps.id));
  }

  // ---------------------------------------------------------------- the run-directory contract

  /** Everything a run directory holds (docs/run-directory.md) into the store: the run row (when
   * absent), metrics.jsonl, eval.json, spectrum/*.json and its artifacts. Idempotent. */
  async ingestRunDir(runDir: string, device = "cpu", id?: string): Promise<string> {
    const read = (f: string) => JSON.parse(readFileSync(join(runDir, f), "utf8"));
    if (!existsSync(join(runDir, "run.json")))
      throw new Error(`${runDir}: no run.json (hint: a run directory written by loralab train)`);
    const run = read("run.json") as {
      run_id: string;
      name: string;
      method: string;
      status: RunStatus;
      error: string | null;
      started_at?: string;
      updated_at?: string;
    };
    if (id) run.run_id = id;
    const config = existsSync(join(runDir, "config.json")) ? read("config.json") : {};
    if (!(await this.getRun(run.run_id)))
      await this.createRun({
        id: run.run_id,
        name: run.name,
        method: run.method,
        status: run.status,
        config,
        device,
        runDir,
        error: run.error,
      });
    else await this.updateRun(run.run_id, { status: run.status, error: run.error });
    if (existsSync(join(runDir, "metrics.jsonl"))) {
      const rows: MetricRow[] = [];
      for (const line of readFileSync(join(runDir, "metrics.jsonl"), "utf8").split("\n")) {
        if (!line.trim()) continue;
        const m = JSON.parse(line) as Record<string, number>;
        for (const name of LOGGED_METRICS)
          if (typeof m[name] === "number") rows.push({ step: m.step!, name, value: m[name]! });
      }
      await this.recordMetrics(run.run_id, rows);
    }
    if (existsSync(join(runDir, "eval.json"))) await this.recordEval(run.run_id, evalRows(read("eval.json")));
    const spec = join(runDir, "spectrum");
    if (existsSync(spec))
      for (const f of readdirSync(spec).filter((f) => f.endsWith(".json")))
        await this.recordSpectra(run.run_id, spectrumRows(JSON.parse(readFileSync(join(spec, f), "utf8"))));
    await this.recordArtifacts(run.run_id, listArtifacts(runDir));
    return run.run_id;
  }
}

/** eval.json (packages/eval's RunEvaluation) as rows: the run's own results under "final", the base's under "base". */
export function evalRows(e: {
  tasks: Record<string, { docs: number; metrics: Record<string, number | { value: number; stderr: number }> }>;
  base?: {
    tasks: Record<string, { docs: number; metrics: Record<string, number | { value: number; stderr: number }> }>;
  };
}): EvalRow[] {
  const rows: EvalRow[] = [];
  const add = (checkpoint: string, tasks: typeof e.tasks) => {
    for (const [task, t] of Object.entries(tasks))
      for (const [metric, m] of Object.entries(t.metrics)) {
        const [value, stderr] =
          typeof m === "number" ? [m, null] : [m.value, Number.isFinite(m.stderr) ? m.stderr : null];
        if (Number.isFinite(value)) rows.push({ checkpoint, task, metric, value, stderr, n: t.docs });
      }
  };
  add("final", e.tasks);
  if (e.base) add("base", e.base.tasks);
  return rows;
}

/** A spectrum/<checkpoint>.json (packages/spectrum's CheckpointAnalysis) as summary rows. */
export function spectrumRows(c: {
  checkpoint: string;
  analysis: {
    matrices: {
      layer: number;
      module: string;
      delta: { rank_at: Record<string, number>; max_rank: number; effective_rank: number; stable_rank: number };
    }[];
  };
}): SpectrumRow[] {
  return c.analysis.matrices.flatMap((m) =>
    Object.entries(m.delta.rank_at).map(([t, rank]) => ({
      checkpoint: c.checkpoint,
      layer: m.layer,
      module: m.module,
      threshold: Number(t),
      rank,
      maxRank: m.delta.max_rank,
      effectiveRank: m.delta.effective_rank,
      stableRank: m.delta.stable_rank,
    })),
  );
}

/** The files a run directory offers for download, classified. */
export function listArtifacts(runDir: string): ArtifactRow[] {
  const out: ArtifactRow[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && !e.name.endsWith(".tmp")) {
        const rel = relative(runDir, p);
        const kind = rel.startsWith("adapter/")
          ? "adapter"
          : rel.startsWith("model/")
            ? "model"
            : rel.startsWith("checkpoints/")
              ? "checkpoint"
              : rel.startsWith("spectrum/") || rel.startsWith("eval")
                ? "report"
                : rel.startsWith("base/")
                  ? "base"
                  : "run";
        out.push({ path: rel, kind, bytes: statSync(p).size });
      }
    }
  };
  if (existsSync(runDir)) walk(runDir);
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

export async function openStore(o: StoreOptions = {}): Promise<Store> {
  return Store.open(o);
}
