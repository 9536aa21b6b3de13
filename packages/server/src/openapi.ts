// The API's one description: each route's method, path, summary, parameters, every status it
// answers with, and schemas. The OpenAPI document at /api/openapi.json is generated from it (and
// held to the server by the schemathesis fuzz, tests/fuzz-http.test.ts); the request body of
// POST /api/runs is the engine's own config schema (the one resolveConfig validates against)
// with the range and shape rules resolve() enforces written into it.
import { configSchema } from "@loralab/engine";
import { TASKS } from "@loralab/eval";

/** Most runs GET /api/runs returns at once. */
export const LIST_LIMIT = 1000;
/** Deepest nesting of a JSON body the server reads (a run config is 3 deep; its lists one more). */
export const MAX_JSON_DEPTH = 32;

const Problem = {
  type: "object",
  description: "RFC 9457 problem details; `field` names the offending config field on 422",
  required: ["type", "title", "status", "detail"],
  properties: {
    type: { type: "string" },
    title: { type: "string" },
    status: { type: "integer" },
    detail: { type: "string" },
    field: { type: "string" },
  },
};

export const RunSchema = {
  type: "object",
  required: ["id", "name", "status", "method", "device", "createdAt"],
  properties: {
    id: { type: "string" },
    name: { type: "string" },
    status: { type: "string", enum: ["queued", "running", "completed", "cancelled", "failed", "interrupted"] },
    method: { type: "string", enum: ["full", "lora"] },
    device: { type: "string" },
    config: { type: "object", description: "the resolved run config" },
    error: { type: ["string", "null"] },
    attempts: { type: "integer" },
    createdAt: { type: "string", format: "date-time" },
    startedAt: { type: ["string", "null"] },
    finishedAt: { type: ["string", "null"] },
  },
};

const Metric = {
  type: "object",
  required: ["step", "name", "value"],
  properties: { step: { type: "integer" }, name: { type: "string" }, value: { type: "number" } },
};
const Artifact = {
  type: "object",
  required: ["path", "kind", "bytes"],
  properties: { path: { type: "string" }, kind: { type: "string" }, bytes: { type: "integer", minimum: 0 } },
};
const Results = {
  type: "object",
  required: ["eval", "spectra"],
  properties: {
    eval: { type: "array", items: { type: "object" } },
    spectra: { type: "array", items: { type: "object" } },
  },
};

interface Route {
  method: "get" | "post";
  path: string;
  summary: string;
  request?: unknown;
  query?: { name: string; description: string; schema: unknown }[];
  responses: Record<number, { description: string; schema?: unknown; contentType?: string }>;
  public?: boolean;
}

const problem = (description: string) => ({ description, schema: { $ref: "#/components/schemas/Problem" } });
const noRun = { 404: problem("no such run") };
const badQuery = { 400: problem("a query parameter is not an integer in its range") };
/** What every route with a JSON body can answer besides its own. */
const bodyErrors = {
  400: problem("the body is not JSON"),
  413: problem("body too large"),
  415: problem("the body is not application/json"),
};
const MAX_INT = Number.MAX_SAFE_INTEGER;

export const ROUTES: Route[] = [
  {
    method: "post",
    path: "/api/session",
    summary: "Exchange the token for an HttpOnly SameSite=Strict session cookie (the dashboard's login)",
    public: true,
    request: { type: "object", required: ["token"], properties: { token: { type: "string" } } },
    responses: { 204: { description: "cookie set" }, ...bodyErrors, 401: problem("wrong token") },
  },
  {
    method: "post",
    path: "/api/runs",
    summary:
      "Queue a training run. out_dir and run_id are the server's to set. Beyond this schema the engine checks what a schema cannot say (files exist, under the allowed roots; model.path or model.config given; one training budget) and answers 422 naming the field",
    request: "RunConfig",
    responses: {
      201: { description: "queued", schema: RunSchema },
      ...bodyErrors,
      422: problem("invalid config, or a path outside the allowed roots"),
    },
  },
  {
    method: "get",
    path: "/api/runs",
    summary: "List runs, newest first",
    query: [
      {
        name: "limit",
        description: "at most this many",
        schema: { type: "integer", minimum: 1, maximum: LIST_LIMIT, default: 200 },
      },
    ],
    responses: { 200: { description: "runs", schema: { type: "array", items: RunSchema } }, ...badQuery },
  },
  {
    method: "get",
    path: "/api/templates/tiny",
    summary: "The config the dashboard offers to start (empty when the server has none)",
    responses: { 200: { description: "a run config", schema: { type: "object" } } },
  },
  {
    method: "get",
    path: "/api/runs/{id}",
    summary: "One run",
    responses: { 200: { description: "the run", schema: RunSchema }, ...noRun },
  },
  {
    method: "get",
    path: "/api/runs/{id}/metrics",
    summary: "Logged metrics",
    query: [
      {
        name: "name",
        description: "only this metric (loss, lr, grad_norm, tokens_per_s, tokens)",
        schema: { type: "string" },
      },
      {
        name: "after",
        description: "only steps after this one",
        schema: { type: "integer", minimum: 0, maximum: MAX_INT },
      },
    ],
    responses: { 200: { description: "metric rows", schema: { type: "array", items: Metric } }, ...badQuery, ...noRun },
  },
  {
    method: "get",
    path: "/api/runs/{id}/results",
    summary: "Evaluation results and spectrum summaries",
    responses: { 200: { description: "results", schema: Results }, ...noRun },
  },
  {
    method: "post",
    path: "/api/runs/{id}/ingest",
    summary:
      "Read results written after the run (loralab eval/analyze --run) into the store; subscribers get an eval event",
    responses: {
      200: { description: "results", schema: Results },
      ...noRun,
      409: problem("still running, or no run directory to read"),
      415: problem("a body that is not application/json"),
    },
  },
  {
    method: "post",
    path: "/api/runs/{id}/evaluate",
    summary:
      'Score a finished run\'s final model (else its last checkpoint) on its train.eval_tasks (or `tasks`) with its own train.eval_data, on the CPU, queued behind other jobs: `job` and `eval` events on its stream, rows under checkpoint "job:final" (or "job:<checkpoint>"), replacing the previous evaluation\'s',
    request: {
      type: "object",
      additionalProperties: false,
      properties: {
        tasks: { type: "array", minItems: 1, items: { type: "string", enum: TASKS } },
        limit: { type: "integer", minimum: 0, maximum: 100000, description: "documents per task (0: all)" },
      },
    },
    responses: {
      202: { description: "started", schema: { type: "object", required: ["id", "job"] } },
      ...bodyErrors,
      ...noRun,
      409: problem("not finished, a job already on it, or its base or eval data outside the allowed roots"),
      422: problem("unknown task or bad limit"),
    },
  },
  {
    method: "post",
    path: "/api/runs/{id}/analyze",
    summary:
      "The spectrum of ΔW at each checkpoint of a finished run, in the background: `job` and `spectra` events on its stream",
    responses: {
      202: { description: "started", schema: { type: "object", required: ["id", "job"] } },
      ...noRun,
      409: problem("not finished, a job already on it, or its base outside the allowed roots"),
      415: problem("a body that is not application/json"),
    },
  },
  {
    method: "post",
    path: "/api/sweeps",
    summary:
      "Queue a sweep: a run per combination of `grid` (dotted config paths to lists of values, at most 64 combinations) over `base`, which must score while it trains (train.eval_tasks)",
    request: {
      type: "object",
      required: ["name", "base", "grid"],
      additionalProperties: false,
      properties: {
        name: { type: "string", pattern: "^[\\w.-]{1,100}$" },
        base: { $ref: "#/components/schemas/RunConfig" },
        grid: {
          type: "object",
          minProperties: 1,
          additionalProperties: { type: "array", minItems: 1, maxItems: 16 },
        },
      },
    },
    responses: {
      201: {
        description: "queued: the sweep's id and its runs' ids",
        schema: {
          type: "object",
          required: ["id", "name", "runs"],
          properties: {
            id: { type: "string" },
            name: { type: "string" },
            runs: { type: "array", items: { type: "string" } },
          },
        },
      },
      ...bodyErrors,
      413: problem("the body, or the sweep's run configs together, too large"),
      422: problem("an invalid sweep or cell config (`field` names it)"),
    },
  },
  {
    method: "get",
    path: "/api/sweeps",
    summary: "List sweeps, newest first",
    responses: { 200: { description: "sweeps", schema: { type: "array", items: { type: "object" } } } },
  },
  {
    method: "get",
    path: "/api/sweeps/{id}",
    summary:
      "A sweep: its runs, every scored checkpoint as a learning–forgetting point, each method's Pareto frontier and the provisional findings",
    responses: {
      200: { description: "the sweep", schema: { type: "object", required: ["id", "runs", "points", "frontiers"] } },
      404: problem("no such sweep"),
    },
  },
  {
    method: "get",
    path: "/api/sweeps/{id}/events",
    summary:
      "Server-Sent Events: the sweep's summary, again whenever one of its runs is scored or changes status; ends when all its runs have ended",
    responses: {
      200: { description: "an event stream", contentType: "text/event-stream" },
      404: problem("no such sweep"),
    },
  },
  {
    method: "get",
    path: "/api/runs/{id}/events",
    summary:
      "Server-Sent Events: snapshot (every metric so far, the scores), status, progress, validation, checkpoint, eval, job, spectra; ends when the run does",
    responses: { 200: { description: "an event stream", contentType: "text/event-stream" }, ...noRun },
  },
  {
    method: "post",
    path: "/api/runs/{id}/cancel",
    summary: "Cancel a queued or running run",
    responses: {
      202: {
        description: "cancelling",
        schema: {
          type: "object",
          required: ["id", "status"],
          properties: { id: { type: "string" }, status: { const: "cancelling" } },
        },
      },
      ...noRun,
      409: problem("already finished"),
      415: problem("a body that is not application/json"),
    },
  },
  {
    method: "get",
    path: "/api/runs/{id}/artifacts",
    summary: "Files of the run directory",
    responses: { 200: { description: "artifact list", schema: { type: "array", items: Artifact } }, ...noRun },
  },
  {
    method: "get",
    path: "/api/runs/{id}/artifacts/{path}",
    summary: "One file of the run directory (adapter, model, report)",
    responses: {
      200: { description: "the file", contentType: "*/*" },
      404: problem("no such run, or no such file in it"),
    },
  },
  {
    method: "get",
    path: "/api/openapi.json",
    summary: "This document",
    public: true,
    responses: { 200: { description: "OpenAPI 3.1", schema: { type: "object" } } },
  },
];

/** The methods a path is served with (for 405's Allow), from ROUTES and the dashboard's pages. */
export function routeMethods(path: string): string[] {
  const page = ["/", "/dashboard.js", "/favicon.ico"].includes(path) || /^\/vendor\/[^/]+$/.test(path) ? ["GET"] : [];
  const api = ROUTES.filter((r) =>
    new RegExp(`^${r.path.replace(/\{path\}/, ".+").replace(/\{\w+\}/g, "[^/]+")}$`).test(path),
  ).map((r) => r.method.toUpperCase());
  const methods = [...new Set([...page, ...api])];
  return methods.includes("GET") ? [...methods, "HEAD"] : methods;
}

/** The engine's config schema with what resolve() checks and a schema can say: ranges, the
 *  name's shape, the device's spelling, and integers no larger than a JSON number carries
 *  exactly (the server refuses larger ones). Refusing anything this schema refuses is what the
 *  fuzz's negative cases hold the server to. */
export function requestSchema(engine: Record<string, unknown>): Record<string, unknown> {
  const doc = JSON.parse(JSON.stringify(engine)) as Record<string, unknown>;
  const defs = (doc.$defs ?? {}) as Record<string, { properties?: Record<string, Record<string, unknown>> }>;
  // every integer: at most 2^53 − 1
  const walk = (x: unknown) => {
    if (Array.isArray(x)) x.forEach(walk);
    else if (x && typeof x === "object") {
      const o = x as Record<string, unknown>;
      if (o.type === "integer" || (Array.isArray(o.type) && o.type.includes("integer")))
        o.maximum = Math.min(Number(o.maximum ?? MAX_INT), MAX_INT);
      Object.values(o).forEach(walk);
    }
  };
  walk(doc);
  const top = doc.properties as Record<string, Record<string, unknown>>;
  const field = (section: string, key: string): Record<string, unknown> | undefined => {
    const ref = (top[section]?.$ref as string | undefined)?.replace(/^#\/\$defs\//, "");
    return ref ? defs[ref]?.properties?.[key] : undefined;
  };
  const tighten = (section: string, key: string, rule: Record<string, unknown>) => {
    const f = field(section, key);
    if (f) Object.assign(f, rule);
  };
  if (top.name) Object.assign(top.name, { minLength: 1, pattern: "^[^/]+$" });
  const unit = { minimum: 0, exclusiveMaximum: 1 };
  const frac = { minimum: 0, maximum: 1 };
  const positiveOrNull = { type: ["number", "null"], exclusiveMinimum: 0 };
  tighten("data", "seq_len", { minimum: 2 });
  tighten("method", "dropout", unit);
  tighten("method", "alpha", positiveOrNull);
  tighten("optim", "lr", positiveOrNull);
  tighten("optim", "eps", { exclusiveMinimum: 0 });
  tighten("optim", "weight_decay", { minimum: 0 });
  tighten("optim", "grad_clip", { minimum: 0 });
  const betas = field("optim", "betas");
  if (betas?.items && typeof betas.items === "object") Object.assign(betas.items, unit);
  for (const k of ["warmup_frac", "final_frac", "cooldown_frac"]) tighten("schedule", k, frac);
  for (const k of ["micro_batch", "grad_accum", "log_every"]) tighten("train", k, { minimum: 1 });
  tighten("train", "attention_dropout", unit);
  tighten("train", "device", { pattern: "^(cpu|cuda|cuda:[0-9]+)$" });
  return doc;
}

let built: Record<string, unknown> | undefined;

/** The document (built once: the routes and the engine's schema are fixed for a process). */
export function openapi(): Record<string, unknown> {
  built ??= buildOpenapi();
  return built;
}

function buildOpenapi(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const always = { 403: problem("the Host or Origin is not this server's") };
  for (const r of ROUTES) {
    const responses = {
      ...r.responses,
      ...always,
      ...(r.public ? {} : { 401: problem("no or wrong token") }),
    } as Route["responses"];
    const op: Record<string, unknown> = {
      summary: r.summary,
      security: r.public ? [] : [{ bearer: [] }, { cookie: [] }],
      responses: Object.fromEntries(
        Object.entries(responses).map(([code, x]) => [
          code,
          {
            description: x.description,
            ...(x.schema
              ? {
                  content: {
                    [code.startsWith("2") ? "application/json" : "application/problem+json"]: { schema: x.schema },
                  },
                }
              : x.contentType
                ? { content: { [x.contentType]: {} } }
                : {}),
          },
        ]),
      ),
    };
    if (r.request)
      op.requestBody = {
        required: true,
        content: {
          "application/json": {
            schema: r.request === "RunConfig" ? { $ref: "#/components/schemas/RunConfig" } : r.request,
          },
        },
      };
    const params = [
      ...[...r.path.matchAll(/\{(\w+)\}/g)].map((m) => ({
        name: m[1],
        in: "path",
        required: true,
        schema: { type: "string" },
      })),
      ...(r.query ?? []).map((q) => ({
        name: q.name,
        in: "query",
        required: false,
        description: q.description,
        schema: q.schema,
      })),
    ];
    if (params.length) op.parameters = params;
    paths[r.path] ??= {};
    paths[r.path]![r.method] = op;
  }
  const { $defs, ...config } = requestSchema(configSchema()) as { $defs?: Record<string, unknown> };
  const doc = {
    openapi: "3.1.0",
    info: { title: "loralab", version: "0.1.0", description: "Start, watch and keep LoRA vs full fine-tuning runs." },
    components: {
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer" },
        cookie: { type: "apiKey", in: "cookie", name: "loralab_session" },
      },
      schemas: { RunConfig: config, Run: RunSchema, Problem, Metric, Artifact, ...($defs ?? {}) },
    },
    paths,
  };
  // the engine's schema refers to its own $defs: in OpenAPI they live under components
  return JSON.parse(JSON.stringify(doc).replaceAll('"#/$defs/', '"#/components/schemas/'));
}
