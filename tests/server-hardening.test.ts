// The HTTP edge under attack and abuse (issue 16): ~ in a config path does not leave the roots
// (item 3), another localhost port cannot drive the API and bodies must be JSON (item 4), and
// malformed requests get 4xx problem details, never a 500 (item 9: no Host, deep JSON, loose
// query numbers, seeds past 2^53, host spellings, the OpenAPI document's statuses and schema).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { createServer, resolveConfig, type LoralabServer } from "loralab";
import { enginePath, hostAllowed, inside, realPath } from "@loralab/server";
import { root, tempDir, tinyConfig } from "./helpers.ts";

const TOKEN = "hardening-token";
const auth = { Authorization: `Bearer ${TOKEN}` };
let srv: LoralabServer;
let out: string;

function req(path: string, init: RequestInit & { headers?: Record<string, string> } = {}) {
  return srv.app.request(path, { ...init, headers: { ...auth, ...init.headers } });
}
function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  return req(path, {
    method: "POST",
    body: typeof body === "string" ? body : JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...headers },
  });
}
function runConfig(over: Parameters<typeof tinyConfig>[1] = {}) {
  const c = tinyConfig(out, over);
  delete c.out_dir;
  return c;
}

beforeAll(async () => {
  out = tempDir("hardening");
  // run: false: what is queued stays queued; these tests look at what the edge lets through
  srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token: TOKEN,
    run: false,
    importRuns: false,
    allowOrigins: ["http://localhost:5173"],
  });
});
afterAll(async () => {
  await srv.close();
});

describe("item 3: a config path is normalised once, as the engine opens it, then checked and used", () => {
  const home = process.env.HOME!;

  test("the server's ~/ is the engine's ~/", () => {
    // the engine's expand_home shows in its error: it looked in $HOME, not in <cwd>/~
    expect(() => resolveConfig({ ...runConfig(), data: { train: "~/loralab-no-such-file.jsonl" } })).toThrow(
      join(home, "loralab-no-such-file.jsonl"),
    );
    expect(enginePath("~/loralab-no-such-file.jsonl")).toBe(join(home, "loralab-no-such-file.jsonl"));
    // only a leading "~/" (the engine's rule): "~", "~user/x" and "a/~/b" are plain names
    expect(enginePath("~/a", "/c", "/h")).toBe("/h/a");
    expect(enginePath("~", "/c", "/h")).toBe("/c/~");
    expect(enginePath("~user/x", "/c", "/h")).toBe("/c/~user/x");
    expect(enginePath("a/~/b", "/c", "/h")).toBe("/c/a/~/b");
    expect(enginePath("~/a/../../etc", "/c", "/h")).toBe("/etc");
  });

  test("every path field spelled with ~ is refused when $HOME is outside the roots", async () => {
    // as in the issue: the server runs in a project directory, $HOME is not a root
    const inRoots = (p: string) => [root, out].some((r) => inside(realPath(p), realPath(r)));
    expect(inRoots(enginePath("~/x"))).toBe(false);
    expect(inRoots(join(process.cwd(), "~", "x"))).toBe(true); // the old reading: inside
    const attacks: [string, Parameters<typeof tinyConfig>[1]][] = [
      ["data.train", { data: { train: "~/secret.jsonl" } }],
      ["data.cache_dir", { data: { cache_dir: "~/x" } }],
      ["model.config", { model: { config: "~/.config/loralab/token" } }],
      ["model.path", { model: { path: "~/models/llama" } }],
      ["model.tokenizer", { model: { tokenizer: "~/tokenizer.json" } }],
      ["train.resume_from", { train: { resume_from: "~/runs/r/checkpoints/step-000010" } }],
      ["data.source", { data: { source: "~/data.parquet" } }],
      ["data.train", { data: { train: "~/../../etc/passwd" } }],
      ["data.train", { data: { train: "~//secret.jsonl" } }],
      ["data.cache_dir", { data: { cache_dir: "~/./.cache/loralab" } }],
      ["data.validation", { data: { validation: "~/held-out.jsonl" } }],
      ["tracking.tensorboard_dir", { tracking: { tensorboard_dir: "~/tb" } }],
      ["tracking.wandb_dir", { tracking: { wandb_dir: "/etc/wandb" } }],
      [
        "train.eval_data.winogrande",
        { train: { eval_tasks: ["winogrande"], eval_every: 2, eval_data: { winogrande: "~/wg" } } },
      ],
    ];
    let contained = 0;
    for (const [field, over] of attacks) {
      const r = await post("/api/runs", runConfig(over));
      const b = await r.json();
      expect([field, r.status, b.field]).toEqual([field, 422, field]);
      expect(b.detail).toContain("outside the directories this server may read");
      contained++;
    }
    expect(contained).toBe(attacks.length);
    // and a tracking server is the server's own: a client's would get requests and the run's files
    const ssrf = await post("/api/runs", runConfig({ tracking: { mlflow_uri: "http://169.254.169.254/" } }));
    expect([ssrf.status, (await ssrf.json()).field]).toEqual([422, "tracking.mlflow_uri"]);
    expect(await srv.store.listRuns()).toEqual([]);
  });

  test("an accepted config runs on the absolute paths that were checked: no ~, no relative path", async () => {
    const fakeHome = join(out, "home");
    mkdirSync(join(fakeHome, "data"), { recursive: true });
    copyFileSync(join(root, "datasets/tiny/code.jsonl"), join(fakeHome, "data", "code.jsonl"));
    symlinkSync(join(fakeHome, "data"), join(out, "data-link"));
    symlinkSync("/etc", join(fakeHome, "etc"));
    const prev = process.env.HOME;
    process.env.HOME = fakeHome; // a $HOME inside a root: ~ is allowed there
    try {
      const r = await post("/api/runs", runConfig({ data: { train: "~/data/code.jsonl", cache_dir: "~/cache" } }));
      expect(r.status).toBe(201);
      const run = await srv.store.getRun((await r.json()).id);
      const data = (run!.config as { data: { train: string; cache_dir: string } }).data;
      expect([data.train, data.cache_dir]).toEqual([join(fakeHome, "data", "code.jsonl"), join(fakeHome, "cache")]);
      // a symlink that stays inside the roots is followed for the check and kept in the path (the
      // file's name is what the engine reads its format from); one that leaves them is refused
      const viaLink = await post(
        "/api/runs",
        runConfig({ data: { train: join(out, "data-link", "..", "data-link", "code.jsonl") } }),
      );
      expect(viaLink.status).toBe(201);
      const linked = await srv.store.getRun((await viaLink.json()).id);
      expect((linked!.config as { data: { train: string } }).data.train).toBe(join(out, "data-link", "code.jsonl"));
      const outside = await post("/api/runs", runConfig({ data: { train: "~/etc/passwd" } }));
      expect([outside.status, (await outside.json()).field]).toEqual([422, "data.train"]);
    } finally {
      process.env.HOME = prev;
    }
  });
});

describe("item 4: only the server's own origin, and JSON bodies", () => {
  test("another port of localhost is another origin: refused", async () => {
    const cases: [Record<string, string>, number][] = [
      [{ Host: "localhost:8080", Origin: "http://localhost:8080" }, 200], // the dashboard itself
      [{ Host: "127.0.0.1:8080", Origin: "http://127.0.0.1:8080" }, 200],
      [{ Host: "localhost:8080", Origin: "http://localhost:3000" }, 403], // a dev server on another port
      [{ Host: "127.0.0.1:8080", Origin: "http://127.0.0.1:8081" }, 403],
      [{ Host: "127.0.0.1:8080", Origin: "http://localhost:8080" }, 403], // another name is another origin
      [{ Host: "localhost:8080", Origin: "https://localhost:8080" }, 403], // another scheme
      [{ Host: "localhost:8080", Origin: "http://localhost" }, 403],
      [{ Host: "localhost", Origin: "http://localhost:80" }, 200], // the default port, spelled out
      [{ Host: "localhost:8080", Origin: "http://localhost:5173" }, 200], // --allow-origin, exactly
      [{ Host: "localhost:8080", Origin: "http://localhost:5174" }, 403],
      [{ Host: "localhost:8080", Origin: "http://localhost:8080/" + "x" }, 403], // not an origin
      [{ Host: "localhost:8080", Origin: "null" }, 403],
    ];
    for (const [headers, status] of cases)
      expect([headers, (await req("/api/runs", { headers })).status]).toEqual([headers, status]);
    await expect(
      createServer({
        store: { path: ":memory:" },
        token: "t",
        run: false,
        importRuns: false,
        allowOrigins: ["http://localhost:5173/app"],
      }),
    ).rejects.toThrow("--allow-origin http://localhost:5173/app: not an origin");
  });

  test("a body a browser sends without a preflight (text/plain, a form) is refused with 415", async () => {
    const cfg = JSON.stringify(runConfig());
    const before = (await srv.store.listRuns()).length;
    for (const type of [
      "text/plain",
      "text/plain;charset=UTF-8",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "application/jsonx",
    ]) {
      const r = await req("/api/runs", { method: "POST", body: cfg, headers: { "Content-Type": type } });
      expect([type, r.status]).toEqual([type, 415]);
      expect(r.headers.get("content-type")).toBe("application/problem+json");
    }
    const untyped = await srv.app.request("/api/runs", { method: "POST", body: new Blob([cfg]), headers: auth });
    expect(untyped.status).toBe(415);
    expect(
      (
        await req("/api/session", {
          method: "POST",
          body: JSON.stringify({ token: TOKEN }),
          headers: { "Content-Type": "text/plain" },
        })
      ).status,
    ).toBe(415);
    expect(
      (await req("/api/runs/nope/cancel", { method: "POST", body: "x", headers: { "Content-Type": "text/plain" } }))
        .status,
    ).toBe(415);
    expect(await srv.store.listRuns()).toHaveLength(before); // nothing was queued
    expect((await post("/api/runs", cfg, { "Content-Type": "application/json; charset=utf-8" })).status).toBe(201);
  });
});

describe("item 9: malformed requests are 4xx, never 500", () => {
  test("no Host header: 400 (over a real socket; HTTP/1.0 has none)", async () => {
    const url = new URL(srv.listen(0));
    const raw = async (text: string) => {
      const chunks: string[] = [];
      const done = Promise.withResolvers<void>();
      await Bun.connect({
        hostname: url.hostname,
        port: Number(url.port),
        socket: {
          open: (s) => void s.write(text),
          data: (_s, d) => void chunks.push(new TextDecoder().decode(d)),
          close: () => done.resolve(),
          error: () => done.resolve(),
        },
      });
      await Promise.race([done.promise, Bun.sleep(3000)]);
      return chunks.join("");
    };
    for (const path of ["/api/runs", "/api/openapi.json", "/"]) {
      const res = await raw(`GET ${path} HTTP/1.0\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`);
      expect([path, res.split("\r\n")[0]]).toEqual([path, expect.stringMatching(/^HTTP\/1\.[01] 400/)]);
    }
    const ok = await raw(
      `GET /api/runs HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: Bearer ${TOKEN}\r\nConnection: close\r\n\r\n`,
    );
    expect(ok.split("\r\n")[0]).toMatch(/^HTTP\/1\.1 200/);
  });

  test("JSON nested 100k deep: 422 before anything recurses on it", async () => {
    for (const body of [
      `{"model":${"[".repeat(100_000)}${"]".repeat(100_000)}}`,
      "[".repeat(100_000),
      `{"name":"${"[".repeat(1000)}"}`,
    ]) {
      const r = await post("/api/runs", body);
      expect(r.status).toBeLessThan(500);
    }
    expect((await post("/api/runs", `{"model":${"[".repeat(100_000)}${"]".repeat(100_000)}}`)).status).toBe(422);
    expect((await post("/api/session", "[".repeat(100_000) + "]".repeat(100_000))).status).toBe(422);
  });

  test("query numbers: integers in range or 400", async () => {
    for (const q of ["1.5", "1e309", "1e3", "abc", "-1", "0", "1001", "", "0x10", " 1", "99999999999999999999"]) {
      const r = await req(`/api/runs?limit=${encodeURIComponent(q)}`);
      expect([q, r.status]).toEqual([q, 400]);
      expect((await r.json()).field).toBe("limit");
    }
    expect((await req("/api/runs?limit=1")).status).toBe(200);
    expect((await req("/api/runs?limit=1000")).status).toBe(200);
    const id = (await srv.store.listRuns())[0]!.id;
    for (const q of ["1.5", "1e309", "NaN", "-1", "x"])
      expect([q, (await req(`/api/runs/${id}/metrics?after=${q}`)).status]).toEqual([q, 400]);
    expect((await req(`/api/runs/${id}/metrics?after=0`)).status).toBe(200);
  });

  test("integers past 2^53 and non-finite numbers in a config: 422 naming the field", async () => {
    const base = JSON.stringify(runConfig());
    const cases: [string, string][] = [
      ["seed", base.replace(/"seed":\d+/, '"seed":9223372036854775808')],
      ["seed", base.replace(/"seed":\d+/, '"seed":18446744073709551615')],
      ["seed", base.replace(/"seed":\d+/, '"seed":9007199254740993')],
      ["train.tokens", base.replace(/"steps":\d+/, '"tokens":9223372036854775807')],
      [
        "train.checkpoint_at_tokens[1]",
        base.replace(/"steps":\d+/, '"steps":2,"checkpoint_at_tokens":[1,9223372036854775808]'),
      ],
      ["optim.lr", base.replace(/"lr":[^,}]+/, '"lr":1e309')],
    ];
    for (const [field, body] of cases) {
      const r = await post("/api/runs", body);
      const b = await r.json();
      expect([field, r.status, b.field]).toEqual([field, 422, field]);
    }
    expect((await post("/api/runs", base.replace(/"seed":\d+/, '"seed":9007199254740991'))).status).toBe(201);
  });

  test("Host: name[:port] exactly", async () => {
    const allowed = ["localhost", "127.0.0.1", "[::1]", "lab.example:8443"];
    for (const h of [
      "localhost:abc",
      "127.0.0.1:1@evil.example",
      "localhost:99999",
      "localhost:",
      "localhost:80:80",
      "evil.example#localhost",
      "localhost evil",
      "lab.example",
      "lab.example:8444",
      "[::1]x",
      "",
    ])
      expect([h, hostAllowed(h, allowed)]).toEqual([h, false]);
    for (const h of ["localhost", "LOCALHOST:8080", "127.0.0.1:1", "[::1]:8080", "lab.example:8443"])
      expect([h, hostAllowed(h, allowed)]).toEqual([h, true]);
    for (const h of ["localhost:abc", "127.0.0.1:1@evil.example"])
      expect([h, (await req("/api/runs", { headers: { Host: h } })).status]).toEqual([h, 403]);
  });

  test("a known path with another method: 405 with Allow", async () => {
    const r = await req("/api/runs", { method: "PATCH", headers: { "Content-Type": "application/json" }, body: "{}" });
    expect([r.status, r.headers.get("allow")]).toEqual([405, "POST, GET, HEAD"]);
    expect((await req("/api/runs/x/cancel")).status).toBe(405);
  });

  test("the OpenAPI document names every status the server answers with, and the server's own rules", async () => {
    const doc = await (await srv.app.request("/api/openapi.json")).json();
    const codes = (path: string, method: string) => Object.keys(doc.paths[path][method].responses);
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>))
      for (const method of Object.keys(ops)) {
        expect([path, method, codes(path, method)]).toEqual([path, method, expect.arrayContaining(["403"])]);
        if (path.includes("{id}"))
          expect([path, method, codes(path, method)]).toEqual([path, method, expect.arrayContaining(["404"])]);
      }
    expect(codes("/api/runs", "post")).toEqual(
      expect.arrayContaining(["201", "400", "401", "403", "413", "415", "422"]),
    );
    expect(codes("/api/runs", "get")).toEqual(expect.arrayContaining(["200", "400"]));
    expect(doc.paths["/api/templates/tiny"]).toBeDefined();
    const s = doc.components.schemas;
    expect(s.RunConfig.properties.name).toMatchObject({ minLength: 1, pattern: "^[^/]+$" });
    expect(s.RunConfig.properties.seed.maximum).toBe(Number.MAX_SAFE_INTEGER);
    expect(s.DataConfig.properties.seq_len.minimum).toBe(2);
    expect(s.TrainConfig.properties.micro_batch.minimum).toBe(1);
    expect(s.TrainConfig.properties.device.pattern).toBe("^(cpu|cuda|cuda:[0-9]+)$");
    expect(s.RunConfig.additionalProperties).toBe(false);
  });
});
