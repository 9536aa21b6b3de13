// The run store's tables for SQLite. src/schema.pg.ts is the same tables for Postgres; a test
// (tests/store.test.ts) holds the two equal column by column. Times are ISO-8601 text.
import { index, integer, primaryKey, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

export const runs = sqliteTable(
  "runs",
  {
    id: text("id").primaryKey(),
    name: text("name").notNull(),
    /** queued | running | completed | cancelled | failed | interrupted */
    status: text("status").notNull(),
    method: text("method").notNull(),
    /** The resolved run config. */
    config: text("config", { mode: "json" }).notNull(),
    device: text("device").notNull(),
    runDir: text("run_dir").notNull(),
    sweepId: text("sweep_id"),
    error: text("error"),
    attempts: integer("attempts").notNull(),
    createdAt: text("created_at").notNull(),
    startedAt: text("started_at"),
    finishedAt: text("finished_at"),
  },
  (t) => [index("runs_status").on(t.status)],
);

export const metrics = sqliteTable(
  "metrics",
  {
    runId: text("run_id").notNull(),
    step: integer("step").notNull(),
    name: text("name").notNull(),
    value: real("value").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.step, t.name] })],
);

export const evalResults = sqliteTable(
  "eval_results",
  {
    runId: text("run_id").notNull(),
    checkpoint: text("checkpoint").notNull(),
    task: text("task").notNull(),
    metric: text("metric").notNull(),
    value: real("value").notNull(),
    stderr: real("stderr"),
    n: integer("n").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.checkpoint, t.task, t.metric] })],
);

export const spectra = sqliteTable(
  "spectra",
  {
    runId: text("run_id").notNull(),
    checkpoint: text("checkpoint").notNull(),
    layer: integer("layer").notNull(),
    module: text("module").notNull(),
    threshold: real("threshold").notNull(),
    rank: integer("rank").notNull(),
    maxRank: integer("max_rank").notNull(),
    effectiveRank: real("effective_rank").notNull(),
    stableRank: real("stable_rank").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.checkpoint, t.layer, t.module, t.threshold] })],
);

export const sweeps = sqliteTable("sweeps", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  config: text("config", { mode: "json" }).notNull(),
  createdAt: text("created_at").notNull(),
});

export const artifacts = sqliteTable(
  "artifacts",
  {
    runId: text("run_id").notNull(),
    path: text("path").notNull(),
    kind: text("kind").notNull(),
    bytes: integer("bytes").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.path] })],
);
