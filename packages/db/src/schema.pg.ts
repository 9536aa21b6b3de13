// The run store's tables for Postgres: the same columns as src/schema.sqlite.ts (held equal
// by tests/store.test.ts), in Postgres types.
import { bigint, doublePrecision, index, integer, jsonb, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

export const runs = pgTable(
  "runs",
  {
    id: text("id").primaryKey(),
    name: text("name").notNull(),
    status: text("status").notNull(),
    method: text("method").notNull(),
    config: jsonb("config").notNull(),
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

export const metrics = pgTable(
  "metrics",
  {
    runId: text("run_id").notNull(),
    step: bigint("step", { mode: "number" }).notNull(),
    name: text("name").notNull(),
    value: doublePrecision("value").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.step, t.name] })],
);

export const evalResults = pgTable(
  "eval_results",
  {
    runId: text("run_id").notNull(),
    checkpoint: text("checkpoint").notNull(),
    task: text("task").notNull(),
    metric: text("metric").notNull(),
    value: doublePrecision("value").notNull(),
    stderr: doublePrecision("stderr"),
    n: integer("n").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.checkpoint, t.task, t.metric] })],
);

export const spectra = pgTable(
  "spectra",
  {
    runId: text("run_id").notNull(),
    checkpoint: text("checkpoint").notNull(),
    layer: integer("layer").notNull(),
    module: text("module").notNull(),
    threshold: doublePrecision("threshold").notNull(),
    rank: integer("rank").notNull(),
    maxRank: integer("max_rank").notNull(),
    effectiveRank: doublePrecision("effective_rank").notNull(),
    stableRank: doublePrecision("stable_rank").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.checkpoint, t.layer, t.module, t.threshold] })],
);

export const sweeps = pgTable("sweeps", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  config: jsonb("config").notNull(),
  createdAt: text("created_at").notNull(),
});

export const artifacts = pgTable(
  "artifacts",
  {
    runId: text("run_id").notNull(),
    path: text("path").notNull(),
    kind: text("kind").notNull(),
    bytes: bigint("bytes", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.path] })],
);
