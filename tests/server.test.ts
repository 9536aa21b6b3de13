// Every endpoint in-process (app.request): auth, Host/Origin, body limit, config validation
// and roots, runs end to end with their SSE stream, cancel, artifacts and path traversal,
// the OpenAPI document, problem details.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createServer, evaluateRun, type LoralabServer } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

const TOKEN = "s3cret-token-for-tests";
let srv: LoralabServer;
let out: string;
const auth = { Authorization: `Bearer ${TOKEN}` };

function req(path: string, init: RequestInit & { headers?: Record<string, string> } = {}) {
  return srv.app.request(path, { ...init, headers: { ...auth, ...init.headers } });
}

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  return req(path, {
    method: "POST",
    body: typeof body === "string" ? body : JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...headers },
  });
}

/** A tiny config with every path under the test's roots. */
function runConfig(over: Parameters<typeof tinyConfig>[1] = {}) {
  const c = tinyConfig(out, over);
  delete c.out_dir; // the server decides where runs go
  return c;
}

async function waitFor(id: string, statuses: string[], ms = 60_000) {
  const t0 = Date.now();
  for (;;) {
    const r = await (await req(`/api/runs/${id}`)).json();
    if (statuses.includes(r.status)) return r;
    if (Date.now() - t0 > ms) throw new Error(`run ${id} stuck at ${r.status}`);
    await Bun.sleep(50);
  }
}

beforeAll(async () => {
  out = tempDir("server");
  srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token: TOKEN,
    maxBodyBytes: 64 * 1024,
  });
});
afterAll(async () => {
  await srv.close();
});

describe("server", () => {
  test("401 without a token, with a wrong one; the cookie login; problem details", async () => {
    const none = await srv.app.request("/api/runs");
    expect(none.status).toBe(401);
    expect(none.headers.get("content-type")).toBe("application/problem+json");
    const body = await none.json();
    expect([body.status, body.title]).toEqual([401, "Unauthorized"]);
    expect(JSON.stringify(body)).not.toContain("    at ");
    expect((await srv.app.request("/api/runs", { headers: { Authorization: "Bearer wrong" } })).status).toBe(401);
    expect((await srv.app.request("/api/runs", { headers: { Authorization: TOKEN } })).status).toBe(401); // not a bearer
    expect((await req("/api/runs")).status).toBe(200);
    // the dashboard's login: the token becomes an HttpOnly SameSite=Strict cookie (not the token itself)
    expect(
      (
        await srv.app.request("/api/session", {
          method: "POST",
          body: JSON.stringify({ token: "nope" }),
          headers: { "Content-Type": "application/json" },
        })
      ).status,
    ).toBe(401);
    const login = await srv.app.request("/api/session", {
      method: "POST",
      body: JSON.stringify({ token: TOKEN }),
      headers: { "Content-Type": "application/json" },
    });
    expect(login.status).toBe(204);
    const cookie = login.headers.get("set-cookie")!;
    expect(cookie).toMatch(/loralab_session=[^;]+; Path=\/; HttpOnly; SameSite=Strict/);
    expect(cookie).not.toContain(TOKEN);
    const viaCookie = await srv.app.request("/api/runs", { headers: { Cookie: cookie.split(";")[0]! } });
    expect(viaCookie.status).toBe(200);
    expect((await srv.app.request("/api/runs", { headers: { Cookie: "loralab_session=forged" } })).status).toBe(401);
  });

  test("a foreign Host or Origin is refused (DNS rebinding, cross-site)", async () => {
    expect((await req("/api/runs", { headers: { Host: "evil.example" } })).status).toBe(403);
    expect((await srv.app.request("http://evil.example/api/runs", { headers: auth })).status).toBe(403);
    expect((await req("/api/runs", { headers: { Origin: "http://evil.example" } })).status).toBe(403);
    expect((await req("/api/runs", { headers: { Origin: "null" } })).status).toBe(403);
    expect(
      (await req("/api/runs", { headers: { Host: "127.0.0.1:8080", Origin: "http://127.0.0.1:8080" } })).status,
    ).toBe(200);
    expect(
      (await req("/api/runs", { headers: { Host: "127.0.0.1:8080", Origin: "http://127.0.0.1:3000" } })).status,
    ).toBe(403); // another port, another origin
    expect((await req("/", { headers: { Host: "attacker.test:8080" } })).status).toBe(403);
  });

  test("404 for unknown runs and routes; 413 for a large body; 400/422 for bad configs, naming the field", async () => {
    expect((await req("/api/runs/nope")).status).toBe(404);
    expect((await req("/api/runs/nope/metrics")).status).toBe(404);
    expect((await req("/api/nothing")).status).toBe(404);
    const big = await post("/api/runs", JSON.stringify({ name: "x".repeat(100 * 1024) }));
    expect(big.status).toBe(413);
    expect((await post("/api/runs", "{not json")).status).toBe(400);
    expect((await post("/api/runs", [1, 2])).status).toBe(422);
    const bad = await post("/api/runs", runConfig({ method: { kind: "lora", rank: 0 } }));
    expect(bad.status).toBe(422);
    expect((await bad.json()).field).toBe("method.rank");
    const unknown = await post("/api/runs", { ...runConfig(), nonsense: 1 });
    expect(unknown.status).toBe(422);
    // a file outside the roots, however it is spelled
    for (const [field, cfg] of [
      ["data.train", runConfig({ data: { train: "/etc/passwd" } })],
      ["data.train", runConfig({ data: { train: join(root, "..", "..", "etc", "passwd") } })],
      ["model.config", runConfig({ model: { config: "/root/.ssh/id_rsa" } })],
      ["data.cache_dir", runConfig({ data: { cache_dir: "/tmp/elsewhere" } })],
    ] as const) {
      const r = await post("/api/runs", cfg);
      expect(r.status).toBe(422);
      const b = await r.json();
      expect([b.field, b.detail]).toEqual([
        field,
        expect.stringContaining("outside the directories this server may read"),
      ]);
    }
    // a symlink inside a root that points outside is outside
    mkdirSync(join(out, "links"), { recursive: true });
    symlinkSync("/etc", join(out, "links", "etc"));
    const viaLink = await post("/api/runs", runConfig({ data: { train: join(out, "links", "etc", "passwd") } }));
    expect([viaLink.status, (await viaLink.json()).field]).toEqual([422, "data.train"]);
  });

  test("a run end to end: 201, its SSE stream to the end, metrics, artifacts, 409 on cancelling it after", async () => {
    const r = await post(
      "/api/runs",
      runConfig({ method: { kind: "lora", rank: 4 }, train: { steps: 6, checkpoint_every: 3 } }),
    );
    expect(r.status).toBe(201);
    const run = await r.json();
    expect(run.status).toBe("queued");
    expect(run.runDir).toBeUndefined(); // server paths are not handed out
    const sse = await req(`/api/runs/${run.id}/events`);
    expect(sse.headers.get("content-type")).toContain("text/event-stream");
    const text = await sse.text(); // the stream ends when the run does
    const events = [...text.matchAll(/event: (\w+)\ndata: (.*)\n/g)].map((m) => [m[1], JSON.parse(m[2]!)] as const);
    const kinds = events.map((e) => e[0]);
    expect(kinds[0]).toBe("snapshot");
    expect(kinds[kinds.length - 1]).toBe("end");
    expect(events[events.length - 1]![1].status).toBe("completed");
    const steps = events.filter((e) => e[0] === "progress").map((e) => e[1].step);
    const snapshot = events[0]![1].loss.map((p: number[]) => p[0]);
    expect([...snapshot, ...steps].slice(-1)[0]).toBe(6); // together they saw every step up to the last
    const done = await waitFor(run.id, ["completed"]);
    expect(done.attempts).toBe(1);
    const m = await (await req(`/api/runs/${run.id}/metrics?name=loss`)).json();
    expect(m.map((x: { step: number }) => x.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect((await req(`/api/runs/${run.id}/metrics?name=loss&after=4`)).status).toBe(200);
    expect((await (await req(`/api/runs/${run.id}/metrics?name=loss&after=4`)).json()).length).toBe(2);
    const arts = await (await req(`/api/runs/${run.id}/artifacts`)).json();
    expect(arts.map((a: { path: string }) => a.path)).toContain("adapter/adapter_model.safetensors");
    const file = await req(`/api/runs/${run.id}/artifacts/adapter/adapter_config.json`);
    expect(file.status).toBe(200);
    expect((await file.json()).peft_type).toBe("LORA");
    expect(file.headers.get("content-security-policy")).toContain("default-src 'none'");
    const cancel = await req(`/api/runs/${run.id}/cancel`, { method: "POST" });
    expect(cancel.status).toBe(409);
    // artifact path traversal, every spelling: nothing outside the run directory
    const runDir = join(out, "runs", run.id);
    symlinkSync("/etc/passwd", join(runDir, "escape"));
    symlinkSync(join(runDir, "run.json"), join(runDir, "inside-link"));
    writeFileSync(join(out, "runs", "secret.txt"), "outside the run");
    for (const p of [
      "../secret.txt",
      "..%2fsecret.txt",
      "%2e%2e/secret.txt",
      "%2e%2e%2fsecret.txt",
      "adapter/../../secret.txt",
      "%2Fetc%2Fpasswd",
      "/etc/passwd",
      "escape",
      "adapter%2f..%2f..%2fsecret.txt",
      "%252e%252e/secret.txt",
      "%00",
      "..\\secret.txt",
    ]) {
      const x = await srv.app.request(`http://localhost/api/runs/${run.id}/artifacts/${p}`, { headers: auth });
      expect([p, x.status]).toEqual([p, 404]);
    }
    expect((await req(`/api/runs/${run.id}/artifacts/inside-link`)).status).toBe(200);
    // results written after the run (loralab eval --run) reach the store and the API
    const fx = join(root, "tests/fixtures/eval");
    const prev = process.env.LORALAB_CACHE;
    process.env.LORALAB_CACHE = join(out, "cache");
    const evaluation = await evaluateRun(runDir, {
      tasks: ["arc_challenge"],
      data: { arc_challenge: join(fx, "arc_challenge") },
      limit: 2,
    });
    if (prev === undefined) delete process.env.LORALAB_CACHE;
    else process.env.LORALAB_CACHE = prev;
    const ing = await req(`/api/runs/${run.id}/ingest`, { method: "POST" });
    expect(ing.status).toBe(200);
    const res = await ing.json();
    // exactly the rows eval.json holds: the run's ("final") and its base's, each metric of
    // arc_challenge with its value and stderr as evaluateRun returned them, over 2 documents
    type Row = { checkpoint: string; task: string; metric: string; value: number; stderr: number | null; n: number };
    const rowsOf = (checkpoint: string, metrics: Record<string, unknown>): Row[] =>
      ["acc", "acc_norm", "acc_per_token"].map((metric) => {
        const m = metrics[metric] as { value: number; stderr: number };
        return { checkpoint, task: "arc_challenge", metric, value: m.value, stderr: m.stderr, n: 2 };
      });
    const key = (r: Row) => `${r.checkpoint} ${r.metric}`;
    const byKey = (a: Row, b: Row) => key(a).localeCompare(key(b));
    expect(
      (res.eval as Row[])
        .map(({ checkpoint, task, metric, value, stderr, n }) => ({ checkpoint, task, metric, value, stderr, n }))
        .sort(byKey),
    ).toEqual(
      [
        ...rowsOf("final", evaluation.tasks.arc_challenge!.metrics),
        ...rowsOf("base", evaluation.base.tasks.arc_challenge!.metrics),
      ].sort(byKey),
    );
    const replay = await (await req(`/api/runs/${run.id}/events`)).text();
    expect(replay).toContain("event: eval");
  }, 120_000);

  test("a run with train.eval_tasks: the base's and each checkpoint's scores stored and sent over SSE as they come", async () => {
    const fx = join(root, "tests/fixtures/eval");
    const r = await post(
      "/api/runs",
      runConfig({
        method: { kind: "lora", rank: 4 },
        train: {
          steps: 4,
          checkpoint_every: 0,
          eval_every: 2,
          eval_tasks: ["winogrande", "arc_challenge"],
          eval_limit: 3,
          eval_data: { winogrande: join(fx, "winogrande"), arc_challenge: join(fx, "arc_challenge") },
        },
      }),
    );
    expect(r.status).toBe(201);
    const run = await r.json();
    const text = await (await req(`/api/runs/${run.id}/events`)).text();
    const events = [...text.matchAll(/event: (\w+)\ndata: (.*)\n/g)].map((m) => [m[1], JSON.parse(m[2]!)] as const);
    // one eval event as each model is scored (the base, steps 2 and 4), each with all so far
    const live = events.filter((e) => e[0] === "eval" && !Array.isArray(e[1])).map((e) => e[1].results);
    const seen = (rows: { checkpoint: string }[]) => [...new Set(rows.map((x) => x.checkpoint))].sort();
    expect(live.map(seen)).toEqual([["base"], ["base", "step-000002"], ["base", "step-000002", "step-000004"]]);
    const done = await waitFor(run.id, ["completed"]);
    expect(done.status).toBe("completed");
    const stored = await srv.store.evalResults(run.id);
    const at = (ck: string, task: string, metric: string) =>
      stored.find((x) => x.checkpoint === ck && x.task === task && x.metric === metric);
    expect(at("base", "winogrande", "acc")?.n).toBe(3);
    expect(at("step-000004", "forgetting", "score")?.value).toBeCloseTo(
      (at("step-000004", "winogrande", "acc")!.value + at("step-000004", "arc_challenge", "acc_norm")!.value) / 2,
      12,
    );
  });

  test("cancel a running run: 202, then it stops at a checkpoint", async () => {
    const r = await post(
      "/api/runs",
      runConfig({ method: { kind: "full" }, train: { steps: 2000, checkpoint_every: 0 } }),
    );
    const run = await r.json();
    await waitFor(run.id, ["running"]);
    while (!(await (await req(`/api/runs/${run.id}/metrics?name=loss`)).json()).length) await Bun.sleep(20);
    const asked = Date.now();
    const c = await req(`/api/runs/${run.id}/cancel`, { method: "POST" });
    expect(c.status).toBe(202);
    expect(await c.json()).toEqual({ id: run.id, status: "cancelling" });
    const done = await waitFor(run.id, ["cancelled"]);
    // finishedAt: an ISO 8601 UTC time (it survives a round trip through Date) after the run
    // started and the cancel was asked for, and not in the future
    expect(new Date(done.finishedAt).toISOString()).toBe(done.finishedAt);
    expect(Date.parse(done.startedAt)).toBeLessThanOrEqual(asked);
    expect(Date.parse(done.finishedAt)).toBeGreaterThanOrEqual(asked);
    expect(Date.parse(done.finishedAt)).toBeLessThanOrEqual(Date.now());
    expect((await req(`/api/runs/${run.id}/cancel`, { method: "POST" })).status).toBe(409);
  }, 120_000);

  test("the OpenAPI document covers every route, with the engine's config schema as the request body", async () => {
    const doc = await (await srv.app.request("/api/openapi.json")).json();
    expect(doc.openapi).toBe("3.1.0");
    // the API's routes, by hand from packages/server/src/app.ts: each path and its methods
    const routes: Record<string, string[]> = {
      "/api/openapi.json": ["get"],
      "/api/runs": ["get", "post"],
      "/api/runs/{id}": ["get"],
      "/api/runs/{id}/artifacts": ["get"],
      "/api/runs/{id}/artifacts/{path}": ["get"],
      "/api/runs/{id}/analyze": ["post"],
      "/api/runs/{id}/cancel": ["post"],
      "/api/runs/{id}/evaluate": ["post"],
      "/api/runs/{id}/events": ["get"],
      "/api/runs/{id}/ingest": ["post"],
      "/api/runs/{id}/metrics": ["get"],
      "/api/runs/{id}/results": ["get"],
      "/api/session": ["post"],
      "/api/sweeps": ["get", "post"],
      "/api/sweeps/{id}": ["get"],
      "/api/sweeps/{id}/events": ["get"],
      "/api/templates/tiny": ["get"],
    };
    const methodsByPath = (pairs: [string, string][]) => {
      const out: Record<string, string[]> = {};
      for (const [path, method] of pairs) out[path] = [...(out[path] ?? []), method.toLowerCase()].sort();
      return out;
    };
    const documented = Object.entries(doc.paths as Record<string, object>).flatMap(([p, ops]) =>
      Object.keys(ops).map((m) => [p, m] as [string, string]),
    );
    expect(methodsByPath(documented)).toEqual(routes);
    // and Hono's own route table (middleware aside), its :id and * spelled as OpenAPI spells them
    const served = srv.app.routes
      .filter((r) => r.method !== "ALL" && r.path.startsWith("/api/"))
      .map((r) => [r.path.replace(/:(\w+)/g, "{$1}").replace(/\/\*$/, "/{path}"), r.method] as [string, string]);
    expect(methodsByPath(served)).toEqual(routes);
    expect(doc.paths["/api/runs"].post.requestBody.content["application/json"].schema.$ref).toBe(
      "#/components/schemas/RunConfig",
    );
    // the config's sections (struct RunConfig in crates/core/src/config.rs; deny_unknown_fields)
    // and the method section's fields (struct MethodConfig), kind one of enum MethodKind
    const schemas = doc.components.schemas;
    expect([Object.keys(schemas.RunConfig.properties).sort(), schemas.RunConfig.additionalProperties]).toEqual([
      [
        "data",
        "method",
        "model",
        "name",
        "optim",
        "out_dir",
        "run_id",
        "schedule",
        "seed",
        "track",
        "tracking",
        "train",
      ],
      false,
    ]);
    expect(schemas.RunConfig.properties.method.$ref).toBe("#/components/schemas/MethodConfig");
    expect(Object.keys(schemas.MethodConfig.properties).sort()).toEqual([
      "alpha",
      "dropout",
      "kind",
      "rank",
      "rslora",
      "targets",
    ]);
    expect(schemas.MethodKind.oneOf.map((k: { const: string }) => k.const)).toEqual(["full", "lora"]);
    expect(JSON.stringify(doc)).not.toContain("#/$defs/");
    // 422 answers with problem details naming the field
    expect(doc.paths["/api/runs"].post.responses["422"].content).toEqual({
      "application/problem+json": { schema: { $ref: "#/components/schemas/Problem" } },
    });
    expect(schemas.Problem.properties.field).toEqual({ type: "string" });
  });

  test("the dashboard is served under a strict Content-Security-Policy", async () => {
    const page = await srv.app.request("/");
    expect(page.status).toBe(200);
    expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
    const html = await page.text();
    expect(html).toContain('<script src="/dashboard.js">');
    expect(html).not.toMatch(/<script>(?!<\/script>)/); // no inline script
  });
});

describe("the token", () => {
  test("generated once into the config dir (0600), reused after, overridden by LORALAB_TOKEN; compared in constant time", async () => {
    const { loadToken, sameSecret } = await import("@loralab/server");
    const { readFileSync, statSync } = await import("node:fs");
    const dir = tempDir("token");
    const prev = process.env.XDG_CONFIG_HOME;
    process.env.XDG_CONFIG_HOME = dir;
    try {
      const first = loadToken({});
      expect(first.generated).toBe(true);
      // 32 random bytes in base64url: ⌈32·8/6⌉ = 43 characters, no padding
      expect(first.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(first.file).toBe(join(dir, "loralab", "token"));
      expect(readFileSync(first.file, "utf8")).toBe(`${first.token}\n`);
      expect(statSync(first.file).mode & 0o777).toBe(0o600);
      const again = loadToken({});
      expect([again.generated, again.token]).toEqual([false, first.token]);
      expect(loadToken({ LORALAB_TOKEN: "from-env" })).toEqual({ token: "from-env", file: "", generated: false });
    } finally {
      if (prev === undefined) delete process.env.XDG_CONFIG_HOME;
      else process.env.XDG_CONFIG_HOME = prev;
    }
    expect(sameSecret("abc", "abc")).toBe(true);
    expect(sameSecret("abc", "abcd")).toBe(false);
  });
});
