// Models and benchmarks by Hub id, against a fake Hub on 127.0.0.1 (tests/fakehub.ts): the
// Hugging Face cache layout, offline use, resume, checksums, every refusal with its hint, the
// benchmarks by name through `loralab eval`, and the cache shared with Python's huggingface_hub
// both ways.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Model } from "@loralab/eval";
import { type HubSettings, hubSettings, parseHubRef, pinnedOfCachePath, resolveModel, resolveRef } from "@loralab/hub";
import { homedir } from "node:os";
import { readRecords } from "@loralab/data";
import { parquetWriteBuffer } from "hyparquet-writer";
import { FakeHub, type FakeFile, GOOD_TOKEN, NO_ACCESS_TOKEN, shardedModelFiles } from "./fakehub.ts";
import { root, tempDir, testPython, tinyConfig, tinyModel } from "./helpers.ts";

let hub: FakeHub;
let modelDir: string;
let tinyFiles: Record<string, FakeFile>;
const quiet = () => {};

function settings(over: Partial<HubSettings> = {}): HubSettings {
  return { endpoint: hub.url, cache: join(tempDir("hubcache"), "hub"), offline: false, ...over };
}

/** A child process, awaited (the fake Hub serves from this process's event loop). */
async function run(cmd: string[], env: Record<string, string | undefined>) {
  const p = Bun.spawn(cmd, { cwd: root, env, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { stdout, stderr, exitCode };
}

async function rows(path: string): Promise<Record<string, unknown>[]> {
  const out = [];
  for await (const r of readRecords(path)) out.push(r);
  return out;
}

/** A split as one parquet file: the fixture's records repeated to `n` (the real split's size). */
async function parquet(fixture: string, n: number): Promise<FakeFile> {
  const src = await rows(join(root, "tests/fixtures/eval", fixture));
  const recs = Array.from({ length: n }, (_, i) => src[i % src.length]!);
  const cols = Object.keys(src[0]!).map((name) => ({ name, data: recs.map((r) => r[name]) }));
  return { bytes: new Uint8Array(parquetWriteBuffer({ columnData: cols as never })) };
}

beforeAll(async () => {
  hub = new FakeHub();
  modelDir = await tinyModel();
  tinyFiles = shardedModelFiles(modelDir);
  // a second copy of the weights beside the shards, as Mistral's repos ship: not the model's files
  hub.add({
    type: "model",
    repo: "loralab/tiny",
    files: { ...tinyFiles, "consolidated.safetensors": tinyFiles["model-00001-of-00002.safetensors"]! },
  });
  hub.add({
    type: "model",
    repo: "loralab/adapter",
    files: {
      "adapter_config.json": { bytes: new TextEncoder().encode('{"peft_type": "LORA", "r": 2}') },
      "adapter_model.safetensors": { bytes: new Uint8Array(64).fill(1) },
      "README.md": { bytes: new TextEncoder().encode("# adapter\n") },
    },
  });
  hub.add({ type: "model", repo: "loralab/gated", files: shardedModelFiles(modelDir), gated: true });
  const big = new Uint8Array(300_000).map((_, i) => (i * 7919) & 255);
  hub.add({
    type: "model",
    repo: "loralab/faults",
    files: {
      "flaky.bin": { bytes: big, lfs: true, breakAt: 120_000 },
      "corrupt.safetensors": { bytes: big.slice(0, 5000), corrupt: true },
      "moved.json": { bytes: new TextEncoder().encode("{}"), wrongEtag: true },
      "big.bin": { bytes: big, lfs: true },
      "stall.bin": { bytes: big.slice().reverse(), lfs: true, stallAt: 50_000 },
      "norange.bin": { bytes: big, lfs: true, ignoreRange: true },
      "cdn.bin": { bytes: big.slice(0, 9000), lfs: true, viaCdn: true },
      "odd name #1 50%.json": { bytes: new TextEncoder().encode('{"a": 1}') },
    },
  });
  // the benchmarks in the Hub's layouts, at lm-eval's record counts
  hub.add({
    type: "dataset",
    repo: "openai/gsm8k",
    files: {
      "main/test-00000-of-00001.parquet": await parquet("gsm8k/test.jsonl", 1319),
      "main/train-00000-of-00001.parquet": await parquet("gsm8k/train.jsonl", 7),
      "socratic/test-00000-of-00001.parquet": await parquet("gsm8k/test.jsonl", 3),
      "README.md": { bytes: new TextEncoder().encode("# gsm8k\n") },
    },
  });
  const conv = "c0ffee0000000000000000000000000000000001";
  hub.add({
    type: "dataset",
    repo: "Rowan/hellaswag",
    refs: { "refs/convert/parquet": conv },
    files: {
      "default/validation/0000.parquet": await parquet("hellaswag/validation.jsonl", 10042),
      "default/train/0000.parquet": await parquet("hellaswag/train.jsonl", 3),
      "hellaswag.py": { bytes: new TextEncoder().encode("# a loading script\n") },
    },
  });
  hub.add({
    type: "dataset",
    repo: "allenai/winogrande",
    refs: { "refs/convert/parquet": conv },
    files: {
      "winogrande_xl/validation/0000.parquet": await parquet("winogrande/validation.jsonl", 1267),
      "winogrande_xl/train/0000.parquet": await parquet("winogrande/train.jsonl", 3),
      "winogrande_debiased/validation/0000.parquet": await parquet("winogrande/validation.jsonl", 5),
    },
  });
  hub.add({
    type: "dataset",
    repo: "allenai/ai2_arc",
    files: {
      // one record short of lm-eval's 1172 at first: the count check must refuse it
      "ARC-Challenge/test-00000-of-00001.parquet": await parquet("arc_challenge/test.jsonl", 1171),
      "ARC-Challenge/train-00000-of-00001.parquet": await parquet("arc_challenge/train.jsonl", 3),
    },
  });
}, 120_000);

afterAll(() => hub?.stop());

describe("Hub references", () => {
  test("ids, hf:// URIs and local paths", () => {
    expect(parseHubRef("HuggingFaceTB/SmolLM2-135M")).toEqual({
      type: "model",
      repo: "HuggingFaceTB/SmolLM2-135M",
      revision: "main",
      path: "",
    });
    expect(parseHubRef("meta-llama/Llama-3.2-1B@v1.0")?.revision).toBe("v1.0");
    expect(parseHubRef("hf://datasets/Rowan/hellaswag@refs/convert/parquet/default/validation")).toEqual({
      type: "dataset",
      repo: "Rowan/hellaswag",
      revision: "refs/convert/parquet",
      path: "default/validation",
    });
    expect(parseHubRef("hf://datasets/org/data@my%2Fbranch/x.parquet")).toMatchObject({ revision: "my/branch" });
    expect(parseHubRef("hf://datasets/openai/gsm8k/main")).toEqual({
      type: "dataset",
      repo: "openai/gsm8k",
      revision: "main",
      path: "main",
    });
    expect(parseHubRef("hf://org/model/file.gguf")).toMatchObject({ type: "model", path: "file.gguf" });
    // a path that exists is a path, even when it looks like an id
    const cwd = process.cwd();
    const dir = tempDir("idlike");
    mkdirSync(join(dir, "org", "name"), { recursive: true });
    try {
      process.chdir(dir);
      expect(parseHubRef("org/name")).toBeNull();
      expect(parseHubRef("org/other")).toMatchObject({ repo: "org/other" });
    } finally {
      process.chdir(cwd);
    }
    expect(parseHubRef("./model")).toBeNull();
    expect(parseHubRef("/abs/dir")).toBeNull();
    expect(() => parseHubRef("org/name@100%")).toThrow(/not a revision/);
    expect(() => parseHubRef("hf://datasets/gsm8k")).toThrow(/not a Hub reference/);
    expect(() => parseHubRef("hf://org/name/../../etc")).toThrow(/\.\./);
    expect(() => parseHubRef("hf://org/name@/x")).toThrow(/empty revision/);
    expect(() => parseHubRef("org/name@..")).toThrow(/is not a revision/);
    expect(() => parseHubRef("hf://org/name@%2E%2E/x")).toThrow(/is not a revision/);
  });

  test("settings come from huggingface_hub's variables, the token from its token file", () => {
    const home = tempDir("hfhome");
    writeFileSync(join(home, "token"), `${GOOD_TOKEN}\n`);
    const s = hubSettings({ HF_HOME: home, HF_ENDPOINT: "http://mirror.local/", HF_HUB_OFFLINE: "1" });
    expect(s).toEqual({
      endpoint: "http://mirror.local",
      cache: join(home, "hub"),
      token: GOOD_TOKEN,
      offline: true,
      timeoutS: 10,
    });
    expect(hubSettings({ HF_HUB_DOWNLOAD_TIMEOUT: "60" }).timeoutS).toBe(60);
    // a token with a stray line end never reaches a header
    expect(hubSettings({ HF_TOKEN: "hf_x\r\n" }).token).toBe("hf_x");
    expect(hubSettings({ HF_HOME: "~/hf", HOME: "/h" }).cache).toBe(join(homedir(), "hf", "hub"));
    expect(hubSettings({ HF_HUB_CACHE: "$X/c", X: "/data" }).cache).toBe("/data/c");
    expect(hubSettings({ TRANSFORMERS_OFFLINE: "1" }).offline).toBe(true);
    // a snapshot path keeps its pin (a config that names it, re-run)
    expect(pinnedOfCachePath(`/c/models--org--name/snapshots/${"a".repeat(40)}`)).toBe(`org/name@${"a".repeat(40)}`);
    expect(pinnedOfCachePath(`/c/datasets--o--d/snapshots/${"b".repeat(40)}/x/y.parquet`)).toBe(
      `o/d@${"b".repeat(40)}/x/y.parquet`,
    );
    expect(pinnedOfCachePath("/some/model")).toBe("");
    expect(hubSettings({ HF_HOME: home, HF_TOKEN: "hf_env", HF_HUB_CACHE: "/c" })).toMatchObject({
      token: "hf_env",
      cache: "/c",
      offline: false,
      endpoint: "https://huggingface.co",
    });
  });
});

describe("a model from the Hub into the standard cache", () => {
  test("sharded safetensors from an empty cache, then offline; loads like the original", async () => {
    const s = settings();
    const before = hub.log.length;
    const r = await resolveModel("loralab/tiny", { settings: s, onProgress: quiet });
    const repoDir = join(s.cache, "models--loralab--tiny");
    const sha = readFileSync(join(repoDir, "refs", "main"), "utf8");
    expect(r.path).toBe(join(repoDir, "snapshots", sha));
    expect(r.pinned).toBe(`loralab/tiny@${sha}`);
    // blobs by ETag (sha256 for LFS, the git blob id otherwise), snapshot entries relative links
    const shard = join(r.path, "model-00001-of-00002.safetensors");
    expect(lstatSync(shard).isSymbolicLink()).toBe(true);
    const shardSha = createHash("sha256").update(readFileSync(shard)).digest("hex");
    expect(readlinkSync(shard)).toBe(`../../blobs/${shardSha}`);
    const cfg = readFileSync(join(r.path, "config.json"));
    const gitOid = createHash("sha1").update(`blob ${cfg.length}\0`).update(cfg).digest("hex");
    expect(readlinkSync(join(r.path, "config.json"))).toBe(`../../blobs/${gitOid}`);
    expect(existsSync(join(r.path, "README.md"))).toBe(false); // only what a model needs
    expect(existsSync(join(r.path, "consolidated.safetensors"))).toBe(false); // only the index's shards
    expect(hub.log.slice(before).some((l) => l.path.endsWith(`/tree/${sha}`))).toBe(true);
    // a plain file's HEAD follows the Hub's relative 307 to /api/resolve-cache/ for its headers
    expect(
      hub.log
        .slice(before)
        .filter((l) => l.method === "HEAD" && l.path.startsWith("/api/resolve-cache/models/loralab/tiny/")).length,
    ).toBe(6);

    // offline: the cache alone, not one request
    const n = hub.log.length;
    const off = await resolveModel("loralab/tiny", { settings: { ...s, offline: true } });
    expect(off.path).toBe(r.path);
    expect(hub.log.length).toBe(n);

    // the Hub unreachable: the cache answers, with a warning
    const away = await resolveModel("loralab/tiny", { settings: { ...s, endpoint: "http://127.0.0.1:9" } });
    expect(away.path).toBe(r.path);

    // the same log-likelihoods as the directory the repo was made from
    const req = [{ context: "The red", continuation: " owl" }];
    const a = await Model.load({ model: modelDir });
    const b = await Model.load({ model: off.path });
    try {
      expect((await b.loglikelihood(req))[0]!.logprob).toBe((await a.loglikelihood(req))[0]!.logprob);
    } finally {
      await a.close();
      await b.close();
    }
  }, 60_000);

  test("refusals say what to do: gated (401/403), bad token, not found, no revision, offline and uncached", async () => {
    const s = settings();
    await expect(resolveModel("loralab/gated", { settings: s, onProgress: quiet })).rejects.toThrow(
      new RegExp(
        `needs a login \\(401: gated or private\\).*accept its licence at ${hub.url}/loralab/gated and set HF_TOKEN`,
      ),
    );
    await expect(
      resolveModel("loralab/gated", { settings: { ...s, token: NO_ACCESS_TOKEN }, onProgress: quiet }),
    ).rejects.toThrow(/no access to it \(403\).*accept the licence at/);
    await expect(resolveModel("loralab/tiny", { settings: { ...s, token: "hf_expired" } })).rejects.toThrow(
      new RegExp(`refused the token \\(401\\).*make a new one at ${hub.url}/settings/tokens`),
    );
    // a token in another format than hf_… is the Hub's to judge, not refused here
    await expect(resolveModel("loralab/tiny", { settings: { ...s, token: "mirror-token" } })).rejects.toThrow(
      /refused the token/,
    );
    const before = hub.log.length;
    const ok = await resolveModel("loralab/gated", { settings: { ...s, token: GOOD_TOKEN }, onProgress: quiet });
    expect(existsSync(join(ok.path, "model.safetensors.index.json"))).toBe(true);
    const sent = hub.log.slice(before);
    expect(sent.length).toBeGreaterThan(5);
    expect(sent.filter((l) => l.auth !== `Bearer ${GOOD_TOKEN}`)).toEqual([]);
    // a missing repo: 401 without a token (it could be private), 404 with one
    await expect(resolveModel("loralab/nope", { settings: s })).rejects.toThrow(
      /no model `loralab\/nope` on .* \(401\).*check the id's spelling; a local path named loralab\/nope does not exist either; if it is private, set HF_TOKEN/,
    );
    await expect(resolveModel("loralab/nope", { settings: { ...s, token: GOOD_TOKEN } })).rejects.toThrow(
      /no model `loralab\/nope` on .* \(404\)/,
    );
    await expect(resolveModel("loralab/tiny@v9", { settings: s })).rejects.toThrow(/no revision `v9`/);
    await expect(resolveModel("loralab/never", { settings: { ...s, offline: true } })).rejects.toThrow(
      /HF_HUB_OFFLINE is set, and loralab\/never@main is not in the cache .*run once with the network/,
    );
    // unreachable with nothing cached
    await expect(resolveModel("loralab/tiny", { settings: { ...s, endpoint: "http://127.0.0.1:9" } })).rejects.toThrow(
      /cannot reach http:\/\/127.0.0.1:9 .*HF_HUB_OFFLINE=1/,
    );
    // a cancel is a cancel, not "unreachable"
    const ctl = new AbortController();
    ctl.abort();
    await expect(resolveModel("loralab/tiny", { settings: s, signal: ctl.signal })).rejects.toThrow(/abort/i);
  }, 60_000);

  test("an adapter repo by id: its config and weights", async () => {
    const r = await resolveModel("loralab/adapter", { settings: settings(), onProgress: quiet });
    expect(readdirSync(r.path).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors"]);
  });

  test("bytes from a CDN on another origin: the Hub's X-Linked headers checked, the token not sent there", async () => {
    const s = { ...settings(), token: GOOD_TOKEN };
    const n = hub.cdnLog.length;
    const r = await resolveRef(
      { type: "model", repo: "loralab/faults", revision: "main", path: "cdn.bin" },
      { settings: s, onProgress: quiet },
    );
    expect(readFileSync(r.path).length).toBe(9000);
    const cdn = hub.cdnLog.slice(n);
    expect(cdn.length).toBeGreaterThan(0);
    expect(cdn.map((l) => l.auth)).toEqual(cdn.map(() => null));
    // and a path with "#", " " and "%" in it
    const odd = await resolveRef(
      { type: "model", repo: "loralab/faults", revision: "main", path: "odd name #1 50%.json" },
      { settings: s, onProgress: quiet },
    );
    expect(readFileSync(odd.path, "utf8")).toBe('{"a": 1}');
  });

  test("a broken download resumes from its partial file with a Range request", async () => {
    const s = settings();
    const ref = { type: "model" as const, repo: "loralab/faults", revision: "main", path: "flaky.bin" };
    await expect(resolveRef(ref, { settings: s, onProgress: quiet })).rejects.toThrow(
      /download of flaky.bin (broke off|ended) at 120000 of 300000 B.*resumes from there/,
    );
    const blobs = join(s.cache, "models--loralab--faults", "blobs");
    const want = createHash("sha256")
      .update(new Uint8Array(300_000).map((_, i) => (i * 7919) & 255))
      .digest("hex");
    expect(lstatSync(join(blobs, `${want}.incomplete`)).size).toBe(120_000);
    const r = await resolveRef(ref, { settings: s, onProgress: quiet });
    expect(createHash("sha256").update(readFileSync(r.path)).digest("hex")).toBe(want);
    expect(existsSync(join(blobs, `${want}.incomplete`))).toBe(false);
    expect(hub.log.some((l) => l.path.endsWith("/flaky.bin") && l.range === "bytes=120000-")).toBe(true);

    // a download whose bytes stop coming: timed out (HF_HUB_DOWNLOAD_TIMEOUT), then resumed
    const t0 = performance.now();
    const st = { ...s, timeoutS: 1 };
    await expect(resolveRef({ ...ref, path: "stall.bin" }, { settings: st, onProgress: quiet })).rejects.toThrow(
      /download of stall.bin broke off at 50000 of 300000 B: no answer from .* in 1 s.*resumes/,
    );
    expect(performance.now() - t0).toBeLessThan(5000);
    const resumed = await resolveRef({ ...ref, path: "stall.bin" }, { settings: st, onProgress: quiet });
    const reversed = new Uint8Array(300_000).map((_, i) => (i * 7919) & 255).reverse();
    expect(createHash("sha256").update(readFileSync(resumed.path)).digest("hex")).toBe(
      createHash("sha256").update(reversed).digest("hex"),
    );
    expect(hub.log.some((l) => l.path.endsWith("/stall.bin") && l.range === "bytes=50000-")).toBe(true);

    // a mirror that ignores Range (200, the whole file): started over, not appended
    const sha = want;
    mkdirSync(blobs, { recursive: true });
    const big = new Uint8Array(300_000).map((_, i) => (i * 7919) & 255);
    const s2 = settings();
    const blobs2 = join(s2.cache, "models--loralab--faults", "blobs");
    mkdirSync(blobs2, { recursive: true });
    writeFileSync(join(blobs2, `${sha}.incomplete`), big.subarray(0, 1000));
    const nr = await resolveRef({ ...ref, path: "norange.bin" }, { settings: s2, onProgress: quiet });
    expect(createHash("sha256").update(readFileSync(nr.path)).digest("hex")).toBe(sha);
    expect(hub.log.some((l) => l.path.endsWith("/norange.bin") && l.range === "bytes=1000-")).toBe(true);
    // a partial file longer than the file: thrown away
    const s3 = settings();
    const blobs3 = join(s3.cache, "models--loralab--faults", "blobs");
    mkdirSync(blobs3, { recursive: true });
    writeFileSync(join(blobs3, `${sha}.incomplete`), new Uint8Array(300_010));
    const long = await resolveRef({ ...ref, path: "big.bin" }, { settings: s3, onProgress: quiet });
    expect(createHash("sha256").update(readFileSync(long.path)).digest("hex")).toBe(sha);
  });

  test("a file that does not match its hash or ETag is refused and not kept", async () => {
    const s = settings();
    const at = (path: string) => ({ type: "model" as const, repo: "loralab/faults", revision: "main", path });
    await expect(resolveRef(at("corrupt.safetensors"), { settings: s, onProgress: quiet })).rejects.toThrow(
      /corrupt.safetensors does not match the Hub's sha256 .*discarded/,
    );
    await expect(resolveRef(at("moved.json"), { settings: s, onProgress: quiet })).rejects.toThrow(
      /moved.json changed between listing and download/,
    );
    const blobs = join(s.cache, "models--loralab--faults", "blobs");
    const left = existsSync(blobs) ? Bun.spawnSync(["ls", blobs]).stdout.toString().trim() : "";
    expect(left).toBe("");
  });

  test("a full disk is named, with the bytes still to free; the partial file is kept for the resume", async () => {
    // a 64 KiB tmpfs as the cache (the tests run as root, as the sandbox's do)
    const mnt = tempDir("fulldisk");
    const m = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], { stderr: "pipe" });
    if (m.exitCode !== 0) throw new Error(`mount tmpfs: ${m.stderr.toString()} (the test needs root)`);
    try {
      const s = { endpoint: hub.url, cache: join(mnt, "hub"), offline: false };
      await expect(
        resolveRef(
          { type: "model", repo: "loralab/faults", revision: "main", path: "big.bin" },
          { settings: s, onProgress: quiet },
        ),
      ).rejects.toThrow(
        /disk full writing big.bin .*\(\d+ of 300000 B written\).*free \d+ B there, or set HF_HUB_CACHE/,
      );
      const blobs = join(s.cache, "models--loralab--faults", "blobs");
      const left = readdirSync(blobs);
      expect(left.length).toBe(1);
      expect(left[0]).toMatch(/^[0-9a-f]{64}\.incomplete$/);
    } finally {
      Bun.spawnSync(["umount", mnt]);
    }
  });
});

describe("a cache that never names a partial model", () => {
  test("refs/main moves only with the weights; a snapshot without them is refused offline", async () => {
    const files = shardedModelFiles(modelDir);
    files["model-00002-of-00002.safetensors"]!.breakAt = 4096;
    hub.add({ type: "model", repo: "loralab/brittle", files });
    const s = settings();
    const refFile = join(s.cache, "models--loralab--brittle", "refs", "main");
    await expect(resolveModel("loralab/brittle", { settings: s, onProgress: quiet })).rejects.toThrow(
      /model-00002-of-00002.safetensors (broke off|ended) at 4096/,
    );
    expect(existsSync(refFile)).toBe(false);
    await expect(resolveModel("loralab/brittle", { settings: { ...s, offline: true } })).rejects.toThrow(
      /not in the cache/,
    );
    const r = await resolveModel("loralab/brittle", { settings: s, onProgress: quiet });
    expect(readFileSync(refFile, "utf8")).toBe(r.pinned.split("@")[1]!);

    // a snapshot whose ref was written before its files (as huggingface_hub does), a shard missing
    const { rmSync } = await import("node:fs");
    rmSync(join(r.path, "model-00002-of-00002.safetensors"));
    await expect(resolveModel("loralab/brittle", { settings: { ...s, offline: true } })).rejects.toThrow(
      /in the cache at .* without its weights \(model-00002-of-00002.safetensors missing\).*with the network/,
    );
  }, 60_000);

  test("the Hub down (503): the cache answers; with nothing cached, the error says so", async () => {
    const s = settings();
    const r = await resolveModel("loralab/adapter", { settings: s, onProgress: quiet });
    hub.down = true;
    try {
      expect((await resolveModel("loralab/adapter", { settings: s, onProgress: quiet })).path).toBe(r.path);
      await expect(resolveModel("loralab/tiny", { settings: settings(), onProgress: quiet })).rejects.toThrow(
        /the Hub answered 503.*down or busy: run again later/,
      );
    } finally {
      hub.down = false;
    }
  });

  test("an empty partial file is started over; a cancel mid-download is a cancel, its bytes kept", async () => {
    const big = new Uint8Array(300_000).map((_, i) => (i * 7919) & 255);
    const sha = createHash("sha256").update(big).digest("hex");
    const s = settings();
    const blobs = join(s.cache, "models--loralab--faults", "blobs");
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(blobs, `${sha}.incomplete`), "");
    const r = await resolveRef(
      { type: "model", repo: "loralab/faults", revision: "main", path: "big.bin" },
      { settings: s, onProgress: quiet },
    );
    expect(createHash("sha256").update(readFileSync(r.path)).digest("hex")).toBe(sha);

    hub.add({ type: "model", repo: "loralab/slow", files: { "slow.bin": { bytes: big, lfs: true, stallAt: 70_000 } } });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 500);
    const t0 = performance.now();
    const err = await resolveRef(
      { type: "model", repo: "loralab/slow", revision: "main", path: "slow.bin" },
      { settings: { ...s, timeoutS: 30 }, onProgress: quiet, signal: ctl.signal },
    ).catch((e: Error) => e);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(String((err as Error).name)).toBe("AbortError");
    expect(lstatSync(join(s.cache, "models--loralab--slow", "blobs", `${sha}.incomplete`)).size).toBe(70_000);
  });
});

describe("one downloader per blob", () => {
  test("another process's flock on huggingface_hub's lock file is waited for; a cancel ends the wait", async () => {
    const s = settings();
    const ref = { type: "model" as const, repo: "loralab/faults", revision: "main", path: "big.bin" };
    const big = new Uint8Array(300_000).map((_, i) => (i * 7919) & 255);
    const sha = createHash("sha256").update(big).digest("hex");
    const lock = join(s.cache, ".locks", "models--loralab--faults", `${sha}.lock`);
    mkdirSync(join(s.cache, ".locks", "models--loralab--faults"), { recursive: true });
    // util-linux flock(1) holds the same flock(2) huggingface_hub's filelock takes
    const hold = (sec: number) => Bun.spawn(["flock", lock, "sleep", String(sec)]);
    let holder = hold(1.5);
    await Bun.sleep(200);
    const t0 = performance.now();
    const r = await resolveRef(ref, { settings: s, onProgress: quiet });
    expect(performance.now() - t0).toBeGreaterThan(1000);
    expect(createHash("sha256").update(readFileSync(r.path)).digest("hex")).toBe(sha);
    await holder.exited;

    const s2 = { ...s, cache: join(tempDir("hubcache"), "hub") };
    const lock2 = join(s2.cache, ".locks", "models--loralab--faults", `${sha}.lock`);
    mkdirSync(dirname(lock2), { recursive: true });
    holder = Bun.spawn(["flock", lock2, "sleep", "10"]);
    await Bun.sleep(200);
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 500);
    const err = await resolveRef(ref, { settings: s2, onProgress: quiet, signal: ctl.signal }).catch((e: Error) => e);
    holder.kill();
    expect((err as Error).name).toBe("AbortError");
    expect(existsSync(join(s2.cache, "models--loralab--faults", "blobs", sha))).toBe(false);
  }, 30_000);
});

describe("training from Hub ids", () => {
  test("model.path and data.train by id: the commits pinned in run.json, the adapter names its base for PEFT", async () => {
    const { train } = await import("loralab");
    const cache = join(tempDir("hubcache"), "hub");
    hub.add({
      type: "dataset",
      repo: "loralab/code",
      files: { "code.jsonl": { bytes: new Uint8Array(readFileSync(join(root, "datasets/tiny/code.jsonl"))) } },
    });
    const saved = { ...process.env };
    Object.assign(process.env, { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache });
    let s: Awaited<ReturnType<typeof train>>;
    try {
      const out = tempDir("hubtrain");
      const cfg = tinyConfig(out, {
        run_id: "h",
        method: { kind: "lora", rank: 2 },
        train: { steps: 2, checkpoint_every: 0 },
      });
      s = await train({
        ...cfg,
        model: { path: "loralab/tiny" },
        data: { ...cfg.data, train: "hf://datasets/loralab/code/code.jsonl" },
      });
    } finally {
      process.env = saved;
    }
    const runJson = JSON.parse(readFileSync(join(s.run_dir, "run.json"), "utf8"));
    const sha = readFileSync(join(cache, "models--loralab--tiny", "refs", "main"), "utf8");
    const dsha = readFileSync(join(cache, "datasets--loralab--code", "refs", "main"), "utf8");
    expect(runJson.inputs).toEqual({ model: `loralab/tiny@${sha}`, data: `loralab/code@${dsha}/code.jsonl` });
    const ac = JSON.parse(readFileSync(join(s.output, "adapter_config.json"), "utf8"));
    expect([ac.base_model_name_or_path, ac.revision]).toEqual(["loralab/tiny", sha]);
    // PEFT resolves that base from the same cache, offline, and applies the adapter
    const py = `
import sys, torch
from peft import AutoPeftModelForCausalLM
m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
print(type(m.base_model.model).__name__, m.peft_config["default"].revision)
`;
    const p = await run([testPython(), "-c", py, s.output], {
      ...process.env,
      HF_HUB_CACHE: cache,
      HF_HUB_OFFLINE: "1",
      TRANSFORMERS_OFFLINE: "1",
    });
    expect(p.stderr).toBe(p.exitCode === 0 ? p.stderr : "(failed)");
    expect(p.stdout.trim()).toBe(`LlamaForCausalLM ${sha}`);
  }, 180_000);
});

describe("benchmarks by name, through `loralab eval` with a Hub model", () => {
  const cli = (args: string[], env: Record<string, string>) =>
    run([process.execPath, "packages/cli/src/main.ts", ...args], { ...process.env, ...env });

  test("from an empty cache, then offline from the same cache; a wrong record count is refused", async () => {
    const home = tempDir("hfhome");
    const env = { HF_HOME: home, HF_ENDPOINT: hub.url, LORALAB_CACHE: tempDir("llcache") };
    const args = [
      "eval",
      "--model",
      "loralab/tiny",
      "--tasks",
      "gsm8k,hellaswag,winogrande,arc_challenge",
      "--limit",
      "20",
    ];
    // ARC-Challenge's test split is one record short of lm-eval's
    let p = await cli([...args, "--out", join(home, "bad.json")], env);
    expect(p.exitCode).not.toBe(0);
    expect(p.stderr).toMatch(
      /allenai\/ai2_arc@[0-9a-f]{40}\/ARC-Challenge: the test split has 1171 records, lm-eval's arc_challenge has 1172/,
    );
    hub.add({
      type: "dataset",
      repo: "allenai/ai2_arc",
      files: {
        "ARC-Challenge/test-00000-of-00001.parquet": await parquet("arc_challenge/test.jsonl", 1172),
        "ARC-Challenge/train-00000-of-00001.parquet": await parquet("arc_challenge/train.jsonl", 3),
      },
    });
    p = await cli([...args, "--out", join(home, "online.json")], env);
    expect(p.stderr).toBe(p.exitCode === 0 ? p.stderr : "(failed)");
    expect(p.exitCode).toBe(0);
    const online = JSON.parse(readFileSync(join(home, "online.json"), "utf8"));
    expect(online.model_source).toMatch(/^loralab\/tiny@[0-9a-f]{40}$/);
    expect(online.tasks.gsm8k.settings.data_source).toMatch(/^openai\/gsm8k@[0-9a-f]{40}\/main$/);
    expect(online.tasks.hellaswag.settings.data_source).toBe(
      "Rowan/hellaswag@c0ffee0000000000000000000000000000000001/default",
    );
    for (const t of ["gsm8k", "hellaswag", "winogrande", "arc_challenge"]) expect(online.tasks[t].docs).toBe(20);
    // only the splits scored were fetched: not gsm8k's socratic config, not winogrande_debiased
    expect(existsSync(join(home, "hub", "datasets--openai--gsm8k"))).toBe(true);
    expect(hub.log.some((l) => l.path.includes("socratic/") && l.path.includes("/resolve/"))).toBe(false);
    expect(hub.log.some((l) => l.path.includes("winogrande_debiased/") && l.path.includes("/resolve/"))).toBe(false);

    // `loralab fetch` names where each went and the commit it resolved to
    p = await cli(["fetch", "gsm8k", "loralab/tiny"], env);
    expect(p.exitCode).toBe(0);
    expect(p.stdout).toContain(`gsm8k: ${join(home, "hub", "datasets--openai--gsm8k", "snapshots")}`);
    expect(p.stdout).toMatch(
      /loralab\/tiny: .*models--loralab--tiny\/snapshots\/[0-9a-f]{40} {2}\(loralab\/tiny@[0-9a-f]{40}\)/,
    );
    p = await cli(["fetch", "mmlu"], env);
    expect([p.exitCode, p.stderr]).toEqual([2, expect.stringContaining("neither a benchmark")]);

    const n = hub.log.length;
    p = await cli([...args, "--out", join(home, "offline.json")], { ...env, HF_HUB_OFFLINE: "1" });
    expect(p.exitCode).toBe(0);
    expect(hub.log.length).toBe(n);
    const offline = JSON.parse(readFileSync(join(home, "offline.json"), "utf8"));
    for (const t of ["gsm8k", "hellaswag", "winogrande", "arc_challenge"])
      expect(offline.tasks[t].metrics).toEqual(online.tasks[t].metrics);
  }, 240_000);
});

describe("the cache is huggingface_hub's: Python reads what loralab fetched, and loralab what Python fetched", () => {
  test("both ways", async () => {
    const python = testPython();
    // loralab writes, Python reads offline
    const s = settings();
    const r = await resolveModel("loralab/tiny", { settings: s, onProgress: quiet });
    const read = `
import json, sys, hashlib
from huggingface_hub import snapshot_download, hf_hub_download
d = snapshot_download("loralab/tiny", cache_dir=sys.argv[1])
f = hf_hub_download("loralab/tiny", "model-00002-of-00002.safetensors", cache_dir=sys.argv[1])
print(json.dumps({"dir": d, "file": f, "sha": hashlib.sha256(open(f, "rb").read()).hexdigest()}))
`;
    let p = await run([python, "-c", read, s.cache], { ...process.env, HF_HUB_OFFLINE: "1" });
    expect(p.stderr).toBe(p.exitCode === 0 ? p.stderr : "(failed)");
    const got = JSON.parse(p.stdout);
    expect(got.dir).toBe(r.path);
    expect(got.file).toBe(join(r.path, "model-00002-of-00002.safetensors"));
    expect(got.sha).toBe(
      createHash("sha256").update(tinyFiles["model-00002-of-00002.safetensors"]!.bytes).digest("hex"),
    );

    // Python writes (online, from the fake Hub), loralab reads offline and loads the model
    const cache2 = join(tempDir("pycache"), "hub");
    const write = `
import sys
from huggingface_hub import snapshot_download
print(snapshot_download("loralab/tiny", cache_dir=sys.argv[1], allow_patterns=["*.json", "*.safetensors"]))
`;
    p = await run([python, "-c", write, cache2], {
      ...process.env,
      HF_ENDPOINT: hub.url,
      HF_HUB_DISABLE_XET: "1",
      HF_HUB_DISABLE_TELEMETRY: "1",
    });
    expect(p.stderr).toBe(p.exitCode === 0 ? p.stderr : "(failed)");
    const pyDir = p.stdout.trim();
    const n = hub.log.length;
    const mine = await resolveModel("loralab/tiny", { settings: { ...s, cache: cache2, offline: true } });
    expect(mine.path).toBe(pyDir);
    expect(hub.log.length).toBe(n);
    const m = await Model.load({ model: mine.path });
    try {
      expect((await m.countTokens("The red owl")) > 0).toBe(true);
    } finally {
      await m.close();
    }
  }, 120_000);
});
