// Dataset readers (packages/data): every format yields the same records, streamed; the
// study's recipes map them; the library trains from any of them; bad rows are named.
import { describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { DataError, normalize, readRecords } from "@loralab/data";
import { train } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

const fx = join(root, "tests/fixtures/data");
const expected = await Bun.file(join(fx, "expected.json")).json();

async function all(path: string) {
  const out = [];
  for await (const r of readRecords(path)) out.push(r);
  return out;
}

describe("readers", () => {
  for (const f of ["rows.jsonl.gz", "rows.json", "rows.csv", "rows.snappy.parquet", "rows.zstd.parquet", "hfdir"]) {
    test(`${f} yields the five records`, async () => {
      expect(await all(join(fx, f))).toEqual(expected);
    });
  }

  test("bad input is named by file and record", async () => {
    const dir = tempDir("baddata");
    const cases: [string, string, string][] = [
      ["bad.jsonl", '{"a": "x"}\n{"a": \n', "record 2"],
      ["bad.csv", "a,b\n1,2\n3\n", "record 2: 1 fields, the header has 2"],
      ["bad.json", '[{"a": 1}, {"a": ', "not closed"],
      ["bad.parquet", "not parquet at all", "not a readable Parquet file"],
      ["bad.xml", "<a/>", "unknown format"],
    ];
    for (const [name, body, msg] of cases) {
      await Bun.write(join(dir, name), body);
      const err = await all(join(dir, name)).catch((e) => e as Error);
      expect(err).toBeInstanceOf(DataError);
      expect((err as Error).message).toContain(join(dir, name));
      expect((err as Error).message).toContain(msg);
    }
  });

  test("the chat recipe keeps conversations (also when a CSV stores them as JSON text)", async () => {
    const dir = tempDir("chat");
    const conv = [
      { role: "user", content: "Hi, you" },
      { role: "assistant", content: "Hello." },
    ];
    await Bun.write(join(dir, "c.csv"), `id,messages\n1,"${JSON.stringify(conv).replaceAll('"', '""')}"\n`);
    const m = {
      format: "chat" as const,
      text_field: "",
      prompt_field: "",
      response_field: "",
      messages_field: "messages",
    };
    const r = await normalize(join(dir, "c.csv"), m, dir);
    expect(JSON.parse((await Bun.file(r.output).text()).trim())).toEqual({ messages: conv });
    await Bun.write(join(dir, "bad.jsonl"), '{"messages": [{"role": "user"}]}\n');
    const err = await normalize(join(dir, "bad.jsonl"), m, dir).catch((e) => e as Error);
    expect((err as Error).message).toContain("record 1: turn 1 needs string role and content");
  });

  test("normalising with a recipe writes engine input once; a missing field leaves nothing behind", async () => {
    const cache = tempDir("norm");
    const m = {
      format: "ift" as const,
      text_field: "text",
      prompt_field: "instruction",
      response_field: "response",
      messages_field: "messages",
    };
    const r = await normalize(join(fx, "rows.snappy.parquet"), m, cache);
    expect(r.records).toBe(5);
    const lines = (await Bun.file(r.output).text())
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => l.prompt)).toEqual(expected.map((e: { instruction: string }) => e.instruction));
    expect((await normalize(join(fx, "rows.snappy.parquet"), m, cache)).reused).toBe(true);
    const bad = await normalize(join(fx, "rows.csv"), { ...m, prompt_field: "query" }, cache).catch((e) => e as Error);
    expect((bad as Error).message).toContain("record 1: no field `query`");
    const left = Array.from(new Bun.Glob("normalized/*").scanSync({ cwd: cache }));
    expect(left.length).toBe(1); // only the good one
  });
});

test("the library trains from a Parquet file with the study's Magicoder recipe", async () => {
  const out = tempDir("parquet-train");
  const s = await train(
    tinyConfig(out, {
      run_id: "pq",
      data: { format: "ift", train: join(fx, "rows.zstd.parquet"), recipe: "magicoder-evol-instruct", seq_len: 64 },
      train: { steps: 2, micro_batch: 2, checkpoint_every: 0 },
    }),
  );
  expect(s.status).toBe("completed");
  const report = await Bun.file(join(s.run_dir, "data.json")).json();
  expect(report.documents).toBe(5);
  expect(report.source).toBe(join(fx, "rows.zstd.parquet"));
  const cfg = await Bun.file(join(s.run_dir, "config.json")).json();
  expect(cfg.data.source).toBe(join(fx, "rows.zstd.parquet"));
});

test("runs in several processes preparing the same shards at once all train (a sweep's cells share the cache)", async () => {
  const out = tempDir("shared-cache");
  const cfg = (id: string) => tinyConfig(out, { run_id: id, train: { steps: 1, checkpoint_every: 0 } });
  const script = `const { train } = await import("loralab"); const s = await train(JSON.parse(process.argv[1])); console.log(s.status);`;
  const ps = ["a", "b", "c", "d"].map((id) =>
    Bun.spawn([process.execPath, "-e", script, JSON.stringify(cfg(id))], { cwd: root, stdout: "pipe", stderr: "pipe" }),
  );
  const res = await Promise.all(
    ps.map(async (p) => [
      await p.exited,
      (await new Response(p.stdout).text()).trim(),
      await new Response(p.stderr).text(),
    ]),
  );
  expect(res.map((r) => [r[0], r[1]])).toEqual(ps.map(() => [0, "completed"]));
  // one published cache directory, no tmp left
  expect(readdirSync(join(out, "cache")).filter((n) => n.includes(".tmp"))).toEqual([]);
}, 120_000);
