// The run store on both dialects: the two schema files describe the same tables, and every
// query runs the same on SQLite (bun:sqlite, WAL) and on a real Postgres server (tests/pg.ts).
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { getTableConfig as pgConfig } from "drizzle-orm/pg-core";
import { getTableConfig as sqliteConfig } from "drizzle-orm/sqlite-core";
import { openStore, pgSchema, sqliteSchema, type Store } from "@loralab/db";
import { train } from "loralab";
import { freshPostgresUrl } from "./pg.ts";
import { tempDir, tinyConfig } from "./helpers.ts";

test("the SQLite and Postgres schemas have the same tables, columns, nullability and keys", () => {
  const kind = (t: string) =>
    ({
      SQLiteText: "text",
      PgText: "text",
      SQLiteTextJson: "json",
      PgJsonb: "json",
      SQLiteInteger: "int",
      PgInteger: "int",
      PgBigInt53: "int",
      SQLiteReal: "real",
      PgDoublePrecision: "real",
    })[t] ?? t;
  const describeT = (c: {
    name: string;
    columns: { name: string; columnType: string; notNull: boolean; primary: boolean }[];
    primaryKeys: { columns: { name: string }[] }[];
    indexes: { config: { name: string } }[];
  }) => ({
    name: c.name,
    columns: c.columns.map((x) => [x.name, kind(x.columnType), x.notNull, x.primary]).sort(),
    pk: c.primaryKeys.map((k) => k.columns.map((x) => x.name)),
    indexes: c.indexes.map((i) => i.config.name).sort(),
  });
  const names = Object.keys(sqliteSchema);
  expect(names.sort()).toEqual(Object.keys(pgSchema).sort());
  expect(names.length).toBe(6);
  for (const n of names) {
    const a = describeT(
      sqliteConfig((sqliteSchema as unknown as Record<string, Parameters<typeof sqliteConfig>[0]>)[n]!) as never,
    );
    const b = describeT(pgConfig((pgSchema as unknown as Record<string, Parameters<typeof pgConfig>[0]>)[n]!) as never);
    expect(a).toEqual(b);
  }
});

async function exercise(store: Store, out: string) {
  // runs: create, list, claim (compare-and-set), update
  const mk = (id: string) =>
    store.createRun({
      id,
      name: "n",
      method: "lora",
      config: { seed: 1, nested: { a: [1, 2] } },
      device: "cpu",
      runDir: join(out, id),
    });
  await mk("a");
  await Bun.sleep(5);
  await mk("b");
  expect((await store.listRuns()).map((r) => r.id)).toEqual(["b", "a"]);
  expect((await store.getRun("a"))!.config).toEqual({ seed: 1, nested: { a: [1, 2] } });
  const [c1, c2] = await Promise.all([store.claimQueued("cpu", 1), store.claimQueued("cpu", 1)]);
  const claimed = [...c1!, ...c2!].map((r) => r.id);
  expect(new Set(claimed).size).toBe(claimed.length); // never the same run twice
  expect(claimed[0]).toBe("a"); // oldest first
  expect((await store.getRun("a"))!.attempts).toBe(1);
  expect(await store.claimQueued("gpu", 5)).toEqual([]);
  await store.updateRun("a", { status: "failed", error: "boom" });
  expect((await store.listRuns({ status: ["failed"] })).map((r) => [r.id, r.error])).toEqual([["a", "boom"]]);
  // metrics: upsert by (run, step, name), never duplicated
  await store.recordMetrics("a", [
    { step: 1, name: "loss", value: 3 },
    { step: 2, name: "loss", value: 2 },
    { step: 2, name: "lr", value: 1e-3 },
  ]);
  await store.recordMetrics("a", [
    { step: 2, name: "loss", value: 1.5 },
    { step: 3, name: "loss", value: 1 },
  ]);
  expect(await store.metrics("a", { name: "loss" })).toEqual([
    { step: 1, name: "loss", value: 3 },
    { step: 2, name: "loss", value: 1.5 },
    { step: 3, name: "loss", value: 1 },
  ]);
  expect((await store.metrics("a", { afterStep: 1 })).length).toBe(3);
  const many = Array.from({ length: 1200 }, (_, i) => ({ step: 100 + i, name: "loss", value: i }));
  await store.recordMetrics("b", many); // more rows than one statement may bind
  expect((await store.metrics("b")).length).toBe(1200);
  // a real run directory, ingested twice: idempotent
  const s = await train(
    tinyConfig(out, { run_id: "real", method: { kind: "lora", rank: 4 }, train: { steps: 4, checkpoint_every: 2 } }),
  );
  expect(await store.ingestRunDir(s.run_dir)).toBe("real");
  await store.ingestRunDir(s.run_dir);
  const loss = await store.metrics("real", { name: "loss" });
  expect(loss.map((m) => m.step)).toEqual([1, 2, 3, 4]);
  expect((await store.getRun("real"))!.status).toBe("completed");
  const arts = await store.artifacts("real");
  expect(arts.some((a) => a.path === "adapter/adapter_model.safetensors" && a.kind === "adapter" && a.bytes > 0)).toBe(
    true,
  );
  expect(arts.some((a) => a.kind === "checkpoint")).toBe(true);
  // eval and spectra summaries
  await store.recordEval("real", [
    { checkpoint: "final", task: "arc_challenge", metric: "acc", value: 0.25, stderr: 0.1, n: 4 },
  ]);
  await store.recordEval("real", [
    { checkpoint: "final", task: "arc_challenge", metric: "acc", value: 0.5, stderr: null, n: 4 },
  ]);
  expect(await store.evalResults("real")).toEqual([
    { checkpoint: "final", task: "arc_challenge", metric: "acc", value: 0.5, stderr: null, n: 4 },
  ]);
  await store.recordSpectra("real", [
    {
      checkpoint: "final",
      layer: 0,
      module: "q_proj",
      threshold: 0.9,
      rank: 3,
      maxRank: 64,
      effectiveRank: 3.5,
      stableRank: 1.2,
    },
  ]);
  expect((await store.spectra("real"))[0]).toEqual({
    checkpoint: "final",
    layer: 0,
    module: "q_proj",
    threshold: 0.9,
    rank: 3,
    maxRank: 64,
    effectiveRank: 3.5,
    stableRank: 1.2,
  });
  await store.createSweep({ id: "s1", name: "lr sweep", config: { lrs: [1e-4, 2e-4] } });
  expect((await store.getSweep("s1"))!.config).toEqual({ lrs: [1e-4, 2e-4] });
}

describe("store", () => {
  test("SQLite: created and migrated on first use, WAL mode, every query", async () => {
    const out = tempDir("store-sqlite");
    const path = join(out, "sub", "loralab.db");
    const store = await openStore({ path });
    expect(store.kind).toBe("sqlite");
    expect(existsSync(path)).toBe(true);
    await exercise(store, out);
    await store.close();
    expect(existsSync(`${path}-wal`) || existsSync(path)).toBe(true);
    const again = await openStore({ path }); // reopening migrates nothing twice and keeps the rows
    expect((await again.listRuns()).length).toBe(3);
    await again.close();
  }, 120_000);

  test("Postgres: the same queries against a real server", async () => {
    const url = await freshPostgresUrl("store");
    const out = tempDir("store-pg");
    const store = await openStore({ url });
    expect(store.kind).toBe("postgres");
    await exercise(store, out);
    await store.close();
    const again = await openStore({ url });
    expect((await again.listRuns()).length).toBe(3);
    await again.close();
  }, 120_000);

  test("an unreachable Postgres is a clear error", async () => {
    await expect(openStore({ url: "postgres://nobody@127.0.0.1:1/none" })).rejects.toThrow(
      /run store postgres:[\s\S]*hint: is the Postgres server up/,
    );
  }, 30_000);
});

test("processes opening a new Postgres store at once all succeed: the migrations run one at a time", async () => {
  const url = await freshPostgresUrl("race");
  // separate processes, as a sweep's workers are (in one process the race hides behind its event loop)
  const script = `const { openStore } = await import("@loralab/db"); const s = await openStore({ url: process.argv[1] }); await s.close(); console.log("ok");`;
  const ps = Array.from({ length: 6 }, () =>
    Bun.spawn([process.execPath, "-e", script, url], {
      cwd: join(import.meta.dir, ".."),
      stdout: "pipe",
      stderr: "pipe",
    }),
  );
  const outs = await Promise.all(
    ps.map(async (p) => [
      await p.exited,
      (await new Response(p.stdout).text()).trim(),
      await new Response(p.stderr).text(),
    ]),
  );
  expect(outs).toEqual(ps.map(() => [0, "ok", ""]));
}, 60_000);
