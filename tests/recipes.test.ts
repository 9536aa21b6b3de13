// The study's datasets by name (`data.train = "recipe:NAME"`), streamed shard by shard from a
// fake Hub on 127.0.0.1 (tests/fakehub.ts) holding the four repos in their Hub layouts: a token
// budget reads only the shards it needs, the commit is recorded, a second run is answered
// offline from the cache, and each recipe's fields become the engine's.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { readRecords } from "@loralab/data";
import { ConfigError, prepareData, quick, train } from "loralab";
import { parquetWriteBuffer } from "hyparquet-writer";
import { FakeHub, type FakeFile, GOOD_TOKEN } from "./fakehub.ts";
import { root, tempDir, tinyConfig, tinyModel } from "./helpers.ts";

let hub: FakeHub;
let model: string;
const code = readFileSync(join(root, "datasets/tiny/code.jsonl"), "utf8")
  .trim()
  .split("\n")
  .map((l) => (JSON.parse(l) as { content: string }).content);

/** A Parquet shard of `rows`, in row groups of 50 (read one group at a time). */
function parquet(rows: Record<string, string>[]): FakeFile {
  const cols = Object.keys(rows[0]!).map((name) => ({ name, data: rows.map((r) => r[name]) }));
  return { bytes: new Uint8Array(parquetWriteBuffer({ columnData: cols as never, rowGroupSize: 50 })) };
}

const tokens = (texts: string[]) => quick("token_counts", { tokenizer: join(model, "tokenizer.json"), texts });

beforeAll(async () => {
  hub = new FakeHub();
  model = await tinyModel();
  // starcoderdata: gated, one folder per language, the python subset in three shards
  const shards = [code.slice(0, 400), code.slice(400, 800), code.slice(800, 1200)];
  hub.add({
    type: "dataset",
    repo: "bigcode/starcoderdata",
    gated: true,
    files: {
      ...Object.fromEntries(
        shards.map((s, i) => [
          `python/train-0000${i}-of-00003.parquet`,
          parquet(s.map((content) => ({ content, id: "x" }))),
        ]),
      ),
      "java/train-00000-of-00001.parquet": parquet([{ content: "class A {}", id: "j" }]),
      "README.md": { bytes: new TextEncoder().encode("# starcoderdata\n") },
    },
  });
  const pairs = code.slice(0, 60).map((c, i) => ({ instruction: `Write function ${i}.`, response: c }));
  hub.add({
    type: "dataset",
    repo: "ise-uiuc/Magicoder-Evol-Instruct-110K",
    files: {
      "data-evol_instruct-decontaminated.jsonl": {
        bytes: new TextEncoder().encode(`${pairs.map((p) => JSON.stringify(p)).join("\n")}\n`),
      },
    },
  });
  hub.add({
    type: "dataset",
    repo: "meta-math/MetaMathQA",
    refs: { "refs/convert/parquet": "c0ffee00000000000000000000000000000000aa" },
    files: {
      "default/train/0000.parquet": parquet(
        pairs.map((p) => ({ query: p.instruction, response: p.response, type: "GSM_Rephrased" })),
      ),
      "MetaMathQA-395K.json": { bytes: new TextEncoder().encode("[]") },
    },
  });
  hub.add({
    type: "dataset",
    repo: "open-web-math/open-web-math",
    files: {
      "data/train-00000-of-00002.parquet": parquet(code.slice(0, 100).map((text) => ({ text, url: "u" }))),
      "data/train-00001-of-00002.parquet": parquet(code.slice(100, 200).map((text) => ({ text, url: "u" }))),
    },
  });
}, 120_000);

afterAll(() => hub?.stop());

/** Run `fn` with the Hugging Face variables pointed at the fake Hub and `cache`. */
async function withHub<T>(cache: string, env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = { ...process.env };
  Object.assign(process.env, { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_TOKEN: GOOD_TOKEN, ...env });
  for (const [k, v] of Object.entries(env)) if (v === "") delete process.env[k];
  try {
    return await fn();
  } finally {
    process.env = saved;
  }
}

async function rows(path: string): Promise<Record<string, string>[]> {
  const out: Record<string, string>[] = [];
  for await (const r of readRecords(path)) out.push(r as Record<string, string>);
  return out;
}

describe("recipes from the Hub", () => {
  test("starcoder-python within a token budget: only the shards it needs, the commit recorded, offline the second time", async () => {
    const cache = join(tempDir("recipe-hub"), "hub");
    const out = tempDir("recipe-run");
    // the budget ends inside the second shard
    const first = tokens(code.slice(0, 400)).reduce((a, b) => a + b + 1, 0);
    const budget = first + 500;
    const before = hub.log.length;
    const s = await withHub(cache, {}, () =>
      train(
        tinyConfig(out, {
          run_id: "sc",
          model: { path: model },
          data: { train: "recipe:starcoder-python", max_tokens: budget },
          train: { steps: 2, checkpoint_every: 0 },
        }),
      ),
    );
    const sent = hub.log.slice(before).map((l) => `${l.method} ${l.path}`);
    expect(sent.some((l) => l.includes("python/train-00000-of-00003.parquet"))).toBe(true);
    expect(sent.some((l) => l.includes("python/train-00001-of-00003.parquet"))).toBe(true);
    expect(sent.filter((l) => l.includes("train-00002-of-00003") || l.includes("/java/"))).toEqual([]);
    // the stream stopped at the record that reached the budget
    const cfg = JSON.parse(readFileSync(join(s.run_dir, "config.json"), "utf8"));
    const used = await rows(cfg.data.train);
    const counts = tokens(used.map((r) => r.text!));
    const total = counts.reduce((a, b) => a + b + 1, 0);
    expect(total).toBeGreaterThanOrEqual(budget);
    expect(total - counts.at(-1)! - 1).toBeLessThan(budget);
    expect(used.map((r) => r.text)).toEqual(code.slice(0, used.length));
    expect(used.length).toBeGreaterThan(400);
    const sha = readFileSync(join(cache, "datasets--bigcode--starcoderdata", "refs", "main"), "utf8");
    expect(cfg.data.source).toBe(`bigcode/starcoderdata@${sha}/python`);
    const runJson = JSON.parse(readFileSync(join(s.run_dir, "run.json"), "utf8"));
    expect(runJson.inputs.data).toBe(`bigcode/starcoderdata@${sha}/python`);

    // again, offline: the same prepared data from the cache, not one request
    const n = hub.log.length;
    const again = await withHub(cache, { HF_HUB_OFFLINE: "1" }, () =>
      prepareData({ train: "recipe:starcoder-python", max_tokens: budget, cache_dir: cfg.data.cache_dir }, undefined, {
        path: model,
      }),
    );
    expect(again.train).toBe(cfg.data.train);
    expect(hub.log.length).toBe(n);
  }, 120_000);

  test("the gated set without a token says what to do", async () => {
    const cache = join(tempDir("recipe-hub"), "hub");
    const err = await withHub(cache, { HF_TOKEN: "" }, () =>
      prepareData({ train: "recipe:starcoder-python", cache_dir: join(cache, "shards") }, undefined, { path: model }),
    ).catch((e: Error) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(
      /needs a login \(401: gated or private\).*accept its licence at .*bigcode\/starcoderdata/,
    );
  });

  test("the instruction sets and OpenWebMath: each recipe's fields become the engine's", async () => {
    const cache = join(tempDir("recipe-hub"), "hub");
    const shards = join(cache, "shards");
    const magic = await withHub(cache, {}, () =>
      prepareData({ train: "recipe:magicoder-evol-instruct", max_records: 10, cache_dir: shards }, undefined, {
        path: model,
      }),
    );
    expect(magic.format).toBe("ift");
    const m = await rows(magic.train!);
    expect(m.length).toBe(10);
    expect(m[3]).toEqual({ prompt: "Write function 3.", response: code[3]! });
    expect(magic.source).toMatch(/^ise-uiuc\/Magicoder-Evol-Instruct-110K@[0-9a-f]{40}$/);

    const meta = await withHub(cache, {}, () =>
      prepareData({ train: "recipe:metamathqa", cache_dir: shards }, undefined, { path: model }),
    );
    const mm = await rows(meta.train!);
    expect([meta.format, mm.length, mm[0]]).toEqual(["ift", 60, { prompt: "Write function 0.", response: code[0]! }]);
    expect(meta.source).toBe("meta-math/MetaMathQA@c0ffee00000000000000000000000000000000aa/default/train");

    const owm = await withHub(cache, {}, () =>
      prepareData({ train: "recipe:openwebmath", cache_dir: shards }, undefined, { path: model }),
    );
    const o = await rows(owm.train!);
    expect([owm.format, o.length, o[150]]).toEqual(["cpt", 200, { text: code[150]! }]);
  });

  test("data.max_tokens on a local file: the engine uses records until the budget", async () => {
    const out = tempDir("budget-run");
    const s = await train(
      tinyConfig(out, { run_id: "b", data: { max_tokens: 2000 }, train: { steps: 1, checkpoint_every: 0 } }),
    );
    const report = JSON.parse(readFileSync(join(s.run_dir, "data.json"), "utf8"));
    const all = JSON.parse(
      readFileSync(
        join(
          (await train(tinyConfig(tempDir("budget-all"), { run_id: "a", train: { steps: 1, checkpoint_every: 0 } })))
            .run_dir,
          "data.json",
        ),
        "utf8",
      ),
    );
    expect(report.tokens).toBeGreaterThanOrEqual(2000 - 32);
    expect(report.tokens).toBeLessThan(2000 + 64);
    expect(report.documents).toBeLessThan(all.documents);
  }, 120_000);

  test("refusals: an unknown recipe, no model to count tokens with, the engine handed a recipe", async () => {
    const cache = join(tempDir("recipe-hub"), "hub");
    await expect(
      withHub(cache, {}, () => prepareData({ train: "recipe:the-pile" }, undefined, { path: model })),
    ).rejects.toThrow(/unknown recipe.*recipe:starcoder-python, recipe:openwebmath/);
    await expect(withHub(cache, {}, () => prepareData({ train: "recipe:openwebmath" }))).rejects.toThrow(
      /counted in the model's tokens.*model.path/,
    );
    expect(() =>
      quick("resolve_config", {
        config: { ...tinyConfig(tempDir("r")), data: { train: "recipe:openwebmath" } } as never,
      }),
    ).toThrow(/streamed from the Hub by the loralab library/);
  });
});
