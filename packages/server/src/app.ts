// The HTTP API and dashboard (Hono). Every /api route but the login and the OpenAPI document
// needs the token: `Authorization: Bearer <token>` or the session cookie the login sets
// (HttpOnly, SameSite=Strict: EventSource cannot send a header, and a token never goes in a
// URL). Host and Origin are checked on every request, bodies are size-limited and must be JSON,
// query parameters are parsed strictly, and errors are problem details, never a stack trace.
import { existsSync, readFileSync } from "node:fs";
import { extname, join } from "node:path";
import type { Store } from "@loralab/db";
import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { getCookie, setCookie } from "hono/cookie";
import { streamSSE } from "hono/streaming";
import { ConfigError, configSchema, resolveConfig, type RunConfig } from "@loralab/engine";
import { TASKS, type TaskName } from "@loralab/eval";
import { DASHBOARD_CSP, dashboardHtml, dashboardJs } from "./dashboard.ts";
import { LIST_LIMIT, MAX_JSON_DEPTH, openapi, routeMethods } from "./openapi.ts";
import { newRunId, type RunEvent, type Runner } from "./runner.ts";
import { expand, parseSweep, SCORES_WHILE_TRAINING, scoresWhileTraining, summarize } from "./sweeps.ts";
import { vendorScript } from "./vendor.ts";
import { artifactFile, confineConfig, hostAllowed, originAllowed, sameSecret, sessionValue } from "./security.ts";

export interface AppOptions {
  store: Store;
  runner: Runner;
  token: string;
  /** Directories a submitted config may name files under. */
  roots: string[];
  /** Host names (optionally host:port) the server answers to. */
  allowedHosts: string[];
  /** Browser origins (normalised: `http://localhost:5173`) that may call besides the server's own. */
  allowOrigins?: string[];
  /** Largest request body, bytes. */
  maxBodyBytes: number;
  /** A config the dashboard offers to start (the tiny laboratory). */
  template?: RunConfig;
  log?: (msg: string) => void;
}

const TERMINAL = new Set(["completed", "cancelled", "failed"]);
/** Most bytes a sweep's run configs may come to, all cells together. */
const MAX_SWEEP_BYTES = 4 << 20;
const RUN_TTL_MS = 100;
const TYPES: Record<string, string> = {
  ".json": "application/json",
  ".jsonl": "application/x-ndjson",
  ".svg": "image/svg+xml",
  ".txt": "text/plain; charset=utf-8",
  ".html": "text/html; charset=utf-8",
  ".md": "text/markdown; charset=utf-8",
};

export function problem(
  c: Context,
  status: number,
  title: string,
  detail: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
) {
  return c.body(JSON.stringify({ type: "about:blank", title, status, detail, ...extra }), status as 400, {
    "Content-Type": "application/problem+json",
    ...headers,
  });
}

/** The request's URL: past the Host check it parses (that check answers 400 when it does not). */
const urlOf = (c: Context): URL => new URL(c.req.url);

/** How deep `text`'s brackets nest (outside strings), counting no further than `limit` + 1: a
 *  body nested 100k deep is refused before JSON.parse and the engine's resolution recurse on it. */
export function jsonDepth(text: string, limit = MAX_JSON_DEPTH): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (inString) {
      if (ch === 92)
        i++; // a backslash escapes the next character
      else if (ch === 34) inString = false;
    } else if (ch === 34) inString = true;
    else if (ch === 123 || ch === 91) {
      depth++;
      if (depth > max) max = depth;
      if (max > limit) return max;
    } else if (ch === 125 || ch === 93) depth--;
  }
  return max;
}

type Schema = {
  $ref?: string;
  type?: string | string[];
  properties?: Record<string, Schema>;
  items?: Schema;
  anyOf?: Schema[];
  oneOf?: Schema[];
  allOf?: Schema[];
};

/** The first number in a submitted config the engine cannot be handed as JSON carries it: a
 *  non-finite one (1e309 parses as Infinity), or an integer field's value beyond 2^53 − 1 (it would
 *  come back rounded, or as a BigInt nothing downstream can encode). Walks the engine's own schema,
 *  so a new integer field is covered without a list. Returns [field, problem] or null. */
export function unsafeNumber(
  v: unknown,
  schema: Schema | undefined,
  defs: Record<string, Schema>,
  field = "",
): [string, string] | null {
  const resolved: Schema[] = [];
  const add = (s: Schema | undefined, depth = 0) => {
    if (!s || depth > 8) return;
    resolved.push(s);
    if (s.$ref) add(defs[s.$ref.replace(/^#\/\$defs\//, "")], depth + 1);
    for (const x of [...(s.anyOf ?? []), ...(s.oneOf ?? []), ...(s.allOf ?? [])]) add(x, depth + 1);
  };
  add(schema);
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return [field, "is not a finite number"];
    const integer = resolved.some((s) => s.type === "integer" || (Array.isArray(s.type) && s.type.includes("integer")));
    if (integer && Number.isInteger(v) && !Number.isSafeInteger(v))
      return [field, `${v} is beyond 9007199254740991 (2^53 − 1), the largest integer a JSON number carries exactly`];
    return null;
  }
  if (Array.isArray(v)) {
    const items = resolved.find((s) => s.items)?.items;
    for (let i = 0; i < v.length; i++) {
      const bad = unsafeNumber(v[i], items, defs, `${field}[${i}]`);
      if (bad) return bad;
    }
  } else if (typeof v === "object" && v !== null) {
    for (const [k, x] of Object.entries(v)) {
      const bad = unsafeNumber(
        x,
        resolved.find((s) => s.properties?.[k])?.properties?.[k],
        defs,
        field ? `${field}.${k}` : k,
      );
      if (bad) return bad;
    }
  }
  return null;
}

let engineSchema: { schema: Schema; defs: Record<string, Schema> } | undefined;
function runConfigSchema() {
  if (!engineSchema) {
    const { $defs, ...schema } = configSchema() as Schema & { $defs?: Record<string, Schema> };
    engineSchema = { schema, defs: $defs ?? {} };
  }
  return engineSchema;
}

/** A query parameter that must be an integer in [min, max] (digits only: no sign, point or
 *  exponent), its default when absent, or a problem naming it. */
function queryInt(
  c: Context,
  name: string,
  min: number,
  max: number,
  fallback: number | undefined,
): { value: number | undefined } | Response {
  const raw = c.req.query(name);
  if (raw === undefined) return { value: fallback };
  const n = /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= min && n <= max))
    return problem(
      c,
      400,
      "Bad Request",
      `query parameter ${name}=${JSON.stringify(raw)}: expected an integer from ${min} to ${max}`,
      { field: name },
    );
  return { value: n };
}

function isJsonType(type: string | undefined): boolean {
  return type !== undefined && type.split(";")[0]!.trim().toLowerCase() === "application/json";
}

/** The request's JSON body, or the problem to answer: 400 when it is not JSON, 422 when it nests
 *  deeper than any run config does. */
async function jsonBody(c: Context): Promise<{ value: unknown } | Response> {
  const text = await c.req.text();
  if (jsonDepth(text) > MAX_JSON_DEPTH)
    return problem(
      c,
      422,
      "Unprocessable Content",
      `the body nests deeper than ${MAX_JSON_DEPTH} levels; a run config is a few levels deep`,
      { field: "" },
    );
  try {
    return { value: JSON.parse(text) };
  } catch {
    return problem(c, 400, "Bad Request", "the body must be JSON");
  }
}

export function createApp(o: AppOptions): Hono {
  const app = new Hono();
  const log = o.log ?? ((m: string) => console.error(m));
  const session = sessionValue(o.token);

  app.onError((err, c) => {
    log(`loralab serve: ${c.req.method} ${c.req.path}: ${err.stack ?? err.message}`);
    return problem(c, 500, "Internal Server Error", "the server failed on this request; the details are in its log");
  });
  app.notFound((c) => {
    const allow = routeMethods(c.req.path);
    if (allow.length)
      return problem(
        c,
        405,
        "Method Not Allowed",
        `${c.req.method} ${c.req.path}: this path takes ${allow.join(", ")}`,
        {},
        { Allow: allow.join(", ") },
      );
    return problem(c, 404, "Not Found", `no route ${c.req.method} ${c.req.path}`);
  });

  // DNS rebinding and cross-site requests: Host must be one we serve and Origin exactly ours
  app.use("*", async function hostAndOrigin(c, next) {
    let url: URL | undefined;
    try {
      url = new URL(c.req.url);
    } catch {}
    // Bun builds the request URL from the Host header; in-process requests carry it only in the URL
    const host = c.req.header("host") ?? url?.host;
    if (!url || !host)
      return problem(
        c,
        400,
        "Bad Request",
        "the request has no Host header (hint: HTTP/1.1 requires one; curl and browsers send it)",
      );
    if (!hostAllowed(host, o.allowedHosts))
      return problem(
        c,
        403,
        "Forbidden",
        `Host ${JSON.stringify(host)} is not served here (hint: allowed: ${o.allowedHosts.join(", ")}; --allow-host adds one)`,
      );
    const origin = c.req.header("origin");
    if (!originAllowed(origin, { scheme: url.protocol, host }, o.allowOrigins))
      return problem(
        c,
        403,
        "Forbidden",
        `Origin ${JSON.stringify(origin)} may not call this server: only pages it serves itself (${url.protocol}//${host}) may (hint: --allow-origin ORIGIN adds one, exactly: scheme, host and port)`,
      );
    await next();
    c.header("X-Content-Type-Options", "nosniff");
    c.header("Referrer-Policy", "no-referrer");
    c.header("Cache-Control", "no-store");
  });
  app.use(
    "/api/*",
    bodyLimit({
      maxSize: o.maxBodyBytes,
      onError: (c) => problem(c, 413, "Content Too Large", `request bodies are limited to ${o.maxBodyBytes} bytes`),
    }),
  );
  // a browser sends text/plain, a form's types or no type at all without asking first (no CORS
  // preflight): a body this API reads is application/json, and a request with another type is refused
  app.use("/api/*", async function jsonBodiesOnly(c, next) {
    if (c.req.method === "GET" || c.req.method === "HEAD") return next();
    const type = c.req.header("content-type");
    const readsBody = c.req.method === "POST" && ["/api/runs", "/api/session", "/api/sweeps"].includes(c.req.path);
    if (isJsonType(type) || (type === undefined && !readsBody)) return next();
    return problem(
      c,
      415,
      "Unsupported Media Type",
      `${type === undefined ? "no Content-Type" : `Content-Type ${JSON.stringify(type)}`}: request bodies are JSON (hint: Content-Type: application/json)`,
      {},
      { "Accept-Post": "application/json" },
    );
  });

  // the dashboard (its data comes from the API, which checks the session)
  app.get("/", (c) => c.html(dashboardHtml(), 200, { "Content-Security-Policy": DASHBOARD_CSP }));
  app.get("/dashboard.js", (c) =>
    c.body(dashboardJs(), 200, {
      "Content-Type": "text/javascript; charset=utf-8",
      "Content-Security-Policy": DASHBOARD_CSP,
    }),
  );
  app.get("/vendor/:name", (c) => {
    const js = vendorScript(c.req.param("name"));
    if (js === null) return problem(c, 404, "Not Found", `no script ${c.req.param("name")} (hint: \`bun install\`)`);
    return c.body(js, 200, {
      "Content-Type": "text/javascript; charset=utf-8",
      "Content-Security-Policy": DASHBOARD_CSP,
    });
  });
  app.get("/favicon.ico", (c) => c.body(null, 204));
  app.get("/api/openapi.json", (c) => c.json(openapi()));

  app.post("/api/session", async (c) => {
    const parsed = await jsonBody(c);
    if (parsed instanceof Response) return parsed;
    const body = parsed.value as { token?: unknown } | null;
    if (typeof body !== "object" || body === null || typeof body.token !== "string" || !sameSecret(body.token, o.token))
      return problem(c, 401, "Unauthorized", "wrong token");
    setCookie(c, "loralab_session", session, {
      httpOnly: true,
      sameSite: "Strict",
      path: "/",
      secure: urlOf(c).protocol === "https:",
    });
    return c.body(null, 204);
  });

  app.use("/api/*", async (c, next) => {
    const auth = c.req.header("authorization");
    const bearer = auth?.startsWith("Bearer ") ? auth.slice(7) : undefined;
    const cookie = getCookie(c, "loralab_session");
    const ok =
      (bearer !== undefined && sameSecret(bearer, o.token)) || (cookie !== undefined && sameSecret(cookie, session));
    if (!ok)
      return problem(
        c,
        401,
        "Unauthorized",
        "a token is needed: `Authorization: Bearer <token>` (printed by `loralab serve`, kept in ~/.config/loralab/token) or the dashboard's login",
      );
    await next();
  });

  /** An event stream's subscription to runs' events: what they sent, not yet taken (`queue`), a
   *  wait for the next one (at most `ms`), and whether the client is still there. */
  const eventPump = (stream: { onAbort(fn: () => void): void }, ids: string[]) => {
    const queue: RunEvent[] = [];
    let wake: (() => void) | undefined;
    const offs = ids.map((id) =>
      o.runner.subscribe(id, (e) => {
        queue.push(e);
        wake?.();
      }),
    );
    const pump = {
      queue,
      open: true,
      async wait(ms: number) {
        if (queue.length || !pump.open) return;
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((res) => {
          wake = res;
          timer = setTimeout(res, ms);
        });
        clearTimeout(timer);
        wake = undefined;
      },
      close: () => {
        for (const off of offs) off();
      },
    };
    stream.onAbort(() => {
      pump.open = false;
      wake?.();
    });
    return pump;
  };

  const runOr404 = async (c: Context) => {
    const r = await o.store.getRun(c.req.param("id")!);
    return r ?? null;
  };
  const publicRun = (r: Awaited<ReturnType<Store["getRun"]>>) => r && { ...r, runDir: undefined };
  // a sweep cell's values of the grid's fields, read back from its resolved config (an object
  // value, as `method`, only in the keys the grid's values name: not the resolved defaults)
  const paramsOf = (config: unknown, grid: Record<string, unknown[]>) =>
    Object.fromEntries(
      Object.entries(grid).map(([k, vs]) => {
        const v = k.split(".").reduce<unknown>((v, seg) => (v as Record<string, unknown> | undefined)?.[seg], config);
        if (typeof v !== "object" || v === null || Array.isArray(v)) return [k, v];
        const keys = new Set(vs.flatMap((x) => (typeof x === "object" && x !== null ? Object.keys(x) : [])));
        return [k, Object.fromEntries(Object.entries(v).filter(([key]) => keys.has(key)))];
      }),
    );

  /** A submitted run config checked as the engine would open it, or the problem naming the
   *  field (prefixed with `at`, e.g. "base." in a sweep). */
  const checkConfig = (c: Context, body: Record<string, unknown>, at: string, where = ""): RunConfig | Response => {
    const { schema, defs } = runConfigSchema();
    const bad = unsafeNumber(body, schema, defs);
    if (bad)
      return problem(c, 422, "Unprocessable Content", `${where}config ${at}${bad[0]}: ${bad[1]}`, {
        field: at + bad[0],
      });
    // every path as the engine would open it (~/, relative, symlinks), checked, and then handed to
    // the engine in that form: what was checked is what is opened
    // a tracking server is the server's own ($MLFLOW_TRACKING_URI), never a client's: requests
    // (with the run's files) to a host a client names are not this server's to send
    const uri = (body as { tracking?: { mlflow_uri?: unknown } }).tracking?.mlflow_uri;
    if (uri !== undefined && uri !== "")
      return problem(
        c,
        422,
        "Unprocessable Content",
        `${where}config ${at}tracking.mlflow_uri: the server logs to its own MLflow server (hint: start \`loralab serve\` with MLFLOW_TRACKING_URI set, and leave the field out)`,
        { field: `${at}tracking.mlflow_uri` },
      );
    const confined = confineConfig(body, o.roots);
    if ("field" in confined)
      return problem(
        c,
        422,
        "Unprocessable Content",
        `${where}config ${at}${confined.field}: ${confined.path} is outside the directories this server may read (hint: allowed roots: ${o.roots.join(", ")}; --root adds one)`,
        { field: at + confined.field },
      );
    return confined.config as RunConfig;
  };

  app.post("/api/runs", async (c) => {
    const parsed = await jsonBody(c);
    if (parsed instanceof Response) return parsed;
    const body = parsed.value;
    if (typeof body !== "object" || body === null || Array.isArray(body))
      return problem(c, 422, "Unprocessable Content", "a run config is a JSON object", { field: "" });
    const checked = checkConfig(c, body as Record<string, unknown>, "");
    if (checked instanceof Response) return checked;
    try {
      const r = await o.runner.submit(checked);
      return c.json(publicRun(r), 201);
    } catch (e) {
      if (e instanceof ConfigError) return problem(c, 422, "Unprocessable Content", e.message, { field: e.field });
      throw e;
    }
  });

  app.get("/api/runs", async (c) => {
    const limit = queryInt(c, "limit", 1, LIST_LIMIT, 200);
    if (limit instanceof Response) return limit;
    return c.json((await o.store.listRuns({ limit: limit.value })).map(publicRun));
  });
  app.get("/api/templates/tiny", (c) => c.json(o.template ?? {}));

  // the endpoint clients poll: its serialized body is reused for RUN_TTL_MS (a row read and a
  // JSON encoding of the whole config per poll cost the training run measurable CPU)
  const runBodies = new Map<string, { at: number; body: string }>();
  app.get("/api/runs/:id", async (c) => {
    const id = c.req.param("id");
    const hit = runBodies.get(id);
    if (hit && performance.now() - hit.at < RUN_TTL_MS)
      return c.body(hit.body, 200, { "Content-Type": "application/json" });
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${id}`);
    const body = JSON.stringify(publicRun(r));
    if (runBodies.size > 10_000) runBodies.clear();
    runBodies.set(id, { at: performance.now(), body });
    return c.body(body, 200, { "Content-Type": "application/json" });
  });

  app.get("/api/runs/:id/metrics", async (c) => {
    if (!(await runOr404(c))) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    const after = queryInt(c, "after", 0, Number.MAX_SAFE_INTEGER, undefined);
    if (after instanceof Response) return after;
    return c.json(await o.store.metrics(c.req.param("id"), { name: c.req.query("name"), afterStep: after.value }));
  });

  app.get("/api/runs/:id/results", async (c) => {
    if (!(await runOr404(c))) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    const id = c.req.param("id");
    return c.json({ eval: await o.store.evalResults(id), spectra: await o.store.spectra(id) });
  });

  app.post("/api/runs/:id/cancel", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    if (TERMINAL.has(r.status) || !(await o.runner.cancel(r.id)))
      return problem(c, 409, "Conflict", `run ${r.id} is already ${r.status}`);
    return c.json({ id: r.id, status: "cancelling" }, 202);
  });

  app.post("/api/runs/:id/ingest", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    if (o.runner.isActive(r.id) || !TERMINAL.has(r.status))
      return problem(c, 409, "Conflict", `run ${r.id} is ${r.status}: its directory is read when it ends`);
    if (!existsSync(join(r.runDir, "run.json")))
      return problem(
        c,
        409,
        "Conflict",
        `run ${r.id} has no run directory to read (no run.json) (hint: it failed before the engine wrote one, or its directory was moved)`,
      );
    await o.runner.ingest(r);
    return c.json({ eval: await o.store.evalResults(r.id), spectra: await o.store.spectra(r.id) });
  });

  // a finished run's jobs: scored on its own eval tasks, or its ΔW's spectrum; both in the
  // background, their progress and results on the run's SSE stream
  const finished = async (c: Context, what: string, readsData: boolean) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    if (!TERMINAL.has(r.status) || !existsSync(join(r.runDir, "config.json")))
      return problem(
        c,
        409,
        "Conflict",
        `run ${r.id} is ${r.status}: it is ${what} once it has ended with a run directory`,
      );
    // what a job reads (the base, the eval data) under the roots, as a submitted config's must
    // be: an imported run's config was never checked
    const cfg = r.config as { model?: Record<string, unknown>; train?: { eval_data?: unknown } };
    const reads = { model: cfg.model ?? {}, train: { eval_data: readsData ? (cfg.train?.eval_data ?? {}) : {} } };
    const confined = confineConfig(reads, o.roots);
    if ("field" in confined)
      return problem(
        c,
        409,
        "Conflict",
        `run ${r.id}'s ${confined.field} is outside the directories this server may read: it is not ${what} here (hint: allowed roots: ${o.roots.join(", ")}; --root adds one)`,
        { field: confined.field },
      );
    return r;
  };
  app.post("/api/runs/:id/evaluate", async (c) => {
    const r = await finished(c, "evaluated", true);
    if (r instanceof Response) return r;
    const parsed = c.req.header("content-type") ? await jsonBody(c) : { value: {} };
    if (parsed instanceof Response) return parsed;
    const body = (parsed.value ?? {}) as { tasks?: unknown; limit?: unknown };
    if (typeof body !== "object" || Array.isArray(body))
      return problem(c, 422, "Unprocessable Content", "the body is {tasks?, limit?}", { field: "" });
    for (const k of Object.keys(body))
      if (k !== "tasks" && k !== "limit")
        return problem(c, 422, "Unprocessable Content", `${k}: unknown field (the body is {tasks?, limit?})`, {
          field: k,
        });
    const run = r.config as { train?: { eval_tasks?: string[]; eval_limit?: number } };
    const own = run.train?.eval_tasks ?? [];
    // a field given is checked as given (null is not "absent")
    const tasks = "tasks" in body ? body.tasks : own;
    if (!Array.isArray(tasks) || !tasks.length || tasks.some((t) => !TASKS.includes(t as TaskName)))
      return problem(
        c,
        422,
        "Unprocessable Content",
        `tasks: a list of ${TASKS.join(", ")}${own.length ? "" : " (hint: this run has no train.eval_tasks to default to)"}`,
        { field: "tasks" },
      );
    // data is the run's own (train.eval_data, confined when it was submitted) or the cache's
    const limit = "limit" in body ? body.limit : (run.train?.eval_limit ?? 0);
    if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 0 || limit > 100_000)
      return problem(c, 422, "Unprocessable Content", "limit: documents per task, an integer 0 to 100000 (0: all)", {
        field: "limit",
      });
    if (!o.runner.evaluate(r, { tasks: tasks as TaskName[], limit }))
      return problem(c, 409, "Conflict", `run ${r.id} already has a job running`);
    return c.json({ id: r.id, job: "evaluate", tasks, limit }, 202);
  });
  app.post("/api/runs/:id/analyze", async (c) => {
    const r = await finished(c, "analysed", false);
    if (r instanceof Response) return r;
    if (!o.runner.analyze(r)) return problem(c, 409, "Conflict", `run ${r.id} already has a job running`);
    return c.json({ id: r.id, job: "analyze" }, 202);
  });

  // sweeps: a run per combination of a grid over a base config, each scored while it trains
  app.post("/api/sweeps", async (c) => {
    const parsed = await jsonBody(c);
    if (parsed instanceof Response) return parsed;
    const req = parseSweep(parsed.value);
    if ("field" in req)
      return problem(c, 422, "Unprocessable Content", `${req.field}: ${req.message}`, { field: req.field });
    const base = checkConfig(c, req.base, "base.");
    if (base instanceof Response) return base;
    if (!scoresWhileTraining(base))
      return problem(c, 422, "Unprocessable Content", `base: ${SCORES_WHILE_TRAINING}`, {
        field: "base.train.eval_tasks",
      });
    // every cell checked (paths confined, scored while it trains, the engine's resolution) before
    // any is queued, and what they store bounded: a cell's config is the base's size or so, times 64
    const cells: RunConfig[] = [];
    let bytes = 0;
    for (const [i, cell] of expand(req).entries()) {
      const where = `grid cell ${i + 1} (${JSON.stringify(cell.params).slice(0, 200)}): `;
      bytes += JSON.stringify(cell.config).length;
      if (bytes > MAX_SWEEP_BYTES)
        return problem(
          c,
          413,
          "Content Too Large",
          `the sweep's ${i + 1} configs so far come to more than ${MAX_SWEEP_BYTES} bytes (hint: fewer combinations, or a smaller base)`,
        );
      const checked = checkConfig(c, cell.config, "", where);
      if (checked instanceof Response) return checked;
      if (!scoresWhileTraining(checked))
        return problem(c, 422, "Unprocessable Content", `${where}${SCORES_WHILE_TRAINING}`, {
          field: "train.eval_tasks",
        });
      try {
        resolveConfig({ ...checked, run_id: "sweep-check", out_dir: o.runner.runsDir });
      } catch (e) {
        if (e instanceof ConfigError)
          return problem(c, 422, "Unprocessable Content", `${where}${e.message}`, { field: e.field });
        throw e;
      }
      cells.push(checked);
    }
    const id = `s${newRunId().slice(1)}`;
    const runs: string[] = [];
    for (const cell of cells) runs.push((await o.runner.submit(cell, undefined, id)).id);
    // the sweep exists once all its runs do: its stream, opened from then on, hears every one
    await o.store.createSweep({ id, name: req.name, config: { base: req.base, grid: req.grid } });
    return c.json({ id, name: req.name, runs }, 201);
  });
  app.get("/api/sweeps", async (c) => c.json(await o.store.listSweeps()));
  const sweepBody = async (id: string) => {
    const s = await o.store.getSweep(id);
    if (!s) return null;
    const runs = (await o.store.listRuns({ sweepId: id })).reverse();
    const evals = new Map(await Promise.all(runs.map(async (r) => [r.id, await o.store.evalResults(r.id)] as const)));
    const grid = (s.config as { grid?: Record<string, unknown[]> }).grid ?? {};
    return {
      ...s,
      runs: runs.map((r) => ({
        ...r,
        runDir: undefined,
        config: undefined,
        params: paramsOf(r.config, grid),
      })),
      ...summarize(runs, evals),
    };
  };
  app.get("/api/sweeps/:id", async (c) => {
    const body = await sweepBody(c.req.param("id")!);
    return body ? c.json(body) : problem(c, 404, "Not Found", `no sweep ${c.req.param("id")}`);
  });
  // the sweep as it changes: its whole summary again whenever one of its runs is scored or changes status
  app.get("/api/sweeps/:id/events", async (c) => {
    const id = c.req.param("id")!;
    if (!(await o.store.getSweep(id))) return problem(c, 404, "Not Found", `no sweep ${id}`);
    const ids = (await o.store.listRuns({ sweepId: id })).map((r) => r.id);
    return streamSSE(c, async (stream) => {
      // subscribed before the first read: nothing that happens after it is missed
      const pump = eventPump(stream, ids);
      try {
        const first = await sweepBody(id);
        if (!first) return;
        let body: NonNullable<typeof first> = first;
        await stream.writeSSE({ event: "sweep", data: JSON.stringify(body) });
        let wrote = performance.now();
        while (pump.open && body.runs.some((r) => !TERMINAL.has(r.status))) {
          await pump.wait(10_000);
          if (!pump.open) break;
          const heard = pump.queue.splice(0);
          // a score or a status: the summary again; nothing for 10 s: read again anyway
          const changed = heard.some((e) => e.type === "eval" || e.type === "status");
          if (changed || !heard.length) {
            const next: typeof body = (await sweepBody(id)) ?? body;
            if (changed || JSON.stringify(next) !== JSON.stringify(body)) {
              body = next;
              await stream.writeSSE({ event: "sweep", data: JSON.stringify(body) });
              wrote = performance.now();
            }
          }
          // progress alone writes nothing: a ping when nothing was written for 10 s
          if (performance.now() - wrote >= 10_000) {
            await stream.writeSSE({ event: "ping", data: "{}" });
            wrote = performance.now();
          }
        }
        if (pump.open) await stream.writeSSE({ event: "end", data: "{}" });
      } finally {
        pump.close();
      }
    });
  });

  app.get("/api/runs/:id/events", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    return streamSSE(c, async (stream) => {
      const pump = eventPump(stream, [r.id]);
      const queue = pump.queue;
      try {
        // what a late subscriber missed: the current status, every logged metric by name (loss,
        // lr, grad_norm, tokens_per_s, val_loss; `loss` also alone, as before) and the scores
        const series: Record<string, [number, number][]> = {};
        for (const m of await o.store.metrics(r.id)) {
          series[m.name] ??= [];
          series[m.name]!.push([m.step, m.value]);
        }
        await stream.writeSSE({
          event: "snapshot",
          data: JSON.stringify({
            status: (await o.store.getRun(r.id))?.status,
            loss: series.loss ?? [],
            metrics: series,
            eval: await o.store.evalResults(r.id),
            job: o.runner.jobState(r.id),
          }),
        });
        let status: string = (await o.store.getRun(r.id))?.status ?? r.status;
        // open while the run trains, and while a job (evaluate, analyze) runs on it
        // (and until what was heard meanwhile is sent: a job may end between the snapshot and here)
        while (pump.open && (!TERMINAL.has(status) || o.runner.isActive(r.id) || queue.length)) {
          await pump.wait(10_000);
          if (!queue.length) {
            await stream.writeSSE({ event: "ping", data: "{}" }); // keeps proxies and idle timeouts away
            status = (await o.store.getRun(r.id))?.status ?? status;
            continue;
          }
          for (const e of queue.splice(0)) {
            await stream.writeSSE({ event: e.type, data: JSON.stringify(e) });
            if (e.type === "status") status = e.status;
          }
        }
        if (pump.open) {
          const res = await o.store.evalResults(r.id);
          if (res.length) await stream.writeSSE({ event: "eval", data: JSON.stringify(res) });
          await stream.writeSSE({ event: "end", data: JSON.stringify({ status }) });
        }
      } finally {
        pump.close();
      }
    });
  });

  app.get("/api/runs/:id/artifacts", async (c) => {
    if (!(await runOr404(c))) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    return c.json(await o.store.artifacts(c.req.param("id")));
  });

  app.get("/api/runs/:id/artifacts/*", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    // the raw (still percent-encoded) path after /artifacts/, decoded exactly once
    const rawPath = urlOf(c).pathname;
    const prefix = `/api/runs/${encodeURIComponent(r.id)}/artifacts/`;
    const raw = rawPath.startsWith(prefix) ? rawPath.slice(prefix.length) : "";
    const file = artifactFile(r.runDir, raw);
    if (!file) return problem(c, 404, "Not Found", `no file ${JSON.stringify(raw)} in run ${r.id}`);
    const type = TYPES[extname(file)] ?? "application/octet-stream";
    return c.body(readFileSync(file), 200, {
      "Content-Type": type,
      // reports may be opened in the browser; nothing in them may run
      "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox",
      ...(type === "application/octet-stream"
        ? { "Content-Disposition": `attachment; filename="${file.split("/").pop()}"` }
        : {}),
    });
  });

  return app;
}
