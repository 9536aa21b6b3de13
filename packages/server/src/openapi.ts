// The API's one description: each route's method, path, summary and schemas. The OpenAPI
// document at /api/openapi.json is generated from it, and the request body of POST /api/runs
// is the engine's own config schema (the same one resolveConfig validates against).
import { configSchema } from "loralab/core";

const Problem = {
  type: "object",
  description: "RFC 9457 problem details; `field` names the offending config field on 422",
  required: ["type", "title", "status", "detail"],
  properties: { type: { type: "string" }, title: { type: "string" }, status: { type: "integer" }, detail: { type: "string" }, field: { type: "string" } },
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

const Metric = { type: "object", required: ["step", "name", "value"], properties: { step: { type: "integer" }, name: { type: "string" }, value: { type: "number" } } };

interface Route {
  method: "get" | "post";
  path: string;
  summary: string;
  request?: unknown;
  responses: Record<number, { description: string; schema?: unknown; contentType?: string }>;
  public?: boolean;
}

export const ROUTES: Route[] = [
  { method: "post", path: "/api/session", summary: "Exchange the token for an HttpOnly SameSite=Strict session cookie (the dashboard's login)", public: true, request: { type: "object", required: ["token"], properties: { token: { type: "string" } } }, responses: { 204: { description: "cookie set" }, 401: { description: "wrong token", schema: Problem } } },
  { method: "post", path: "/api/runs", summary: "Queue a training run", request: "RunConfig", responses: { 201: { description: "queued", schema: RunSchema }, 413: { description: "body too large", schema: Problem }, 422: { description: "invalid config, or a path outside the allowed roots", schema: Problem } } },
  { method: "get", path: "/api/runs", summary: "List runs, newest first", responses: { 200: { description: "runs", schema: { type: "array", items: RunSchema } } } },
  { method: "get", path: "/api/runs/{id}", summary: "One run", responses: { 200: { description: "the run", schema: RunSchema }, 404: { description: "no such run", schema: Problem } } },
  { method: "get", path: "/api/runs/{id}/metrics", summary: "Logged metrics (?name=loss&after=STEP)", responses: { 200: { description: "metric rows", schema: { type: "array", items: Metric } } } },
  { method: "get", path: "/api/runs/{id}/results", summary: "Evaluation results and spectrum summaries", responses: { 200: { description: "results", schema: { type: "object" } } } },
  { method: "post", path: "/api/runs/{id}/ingest", summary: "Read results written after the run (loralab eval/analyze --run) into the store; subscribers get an eval event", responses: { 200: { description: "results", schema: { type: "object" } }, 409: { description: "still running", schema: Problem } } },
  { method: "get", path: "/api/runs/{id}/events", summary: "Server-Sent Events: status, progress, checkpoint, eval; ends when the run does", responses: { 200: { description: "an event stream", contentType: "text/event-stream" } } },
  { method: "post", path: "/api/runs/{id}/cancel", summary: "Cancel a queued or running run", responses: { 202: { description: "cancelling" }, 409: { description: "already finished", schema: Problem } } },
  { method: "get", path: "/api/runs/{id}/artifacts", summary: "Files of the run directory", responses: { 200: { description: "artifact list", schema: { type: "array" } } } },
  { method: "get", path: "/api/runs/{id}/artifacts/{path}", summary: "One file of the run directory (adapter, model, report)", responses: { 200: { description: "the file", contentType: "application/octet-stream" }, 404: { description: "no such file in this run", schema: Problem } } },
  { method: "get", path: "/api/openapi.json", summary: "This document", public: true, responses: { 200: { description: "OpenAPI 3.1" } } },
];

export function openapi(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of ROUTES) {
    const op: Record<string, unknown> = {
      summary: r.summary,
      security: r.public ? [] : [{ bearer: [] }, { cookie: [] }],
      responses: Object.fromEntries(
        Object.entries({ ...r.responses, ...(r.public ? {} : { 401: { description: "no or wrong token", schema: Problem } }) } as Route["responses"]).map(([code, x]) => [
          code,
          { description: x.description, ...(x.schema ? { content: { [code === "200" || code === "201" ? "application/json" : "application/problem+json"]: { schema: x.schema } } } : x.contentType ? { content: { [x.contentType]: {} } } : {}) },
        ]),
      ),
    };
    if (r.request) op.requestBody = { required: true, content: { "application/json": { schema: r.request === "RunConfig" ? { $ref: "#/components/schemas/RunConfig" } : r.request } } };
    if (r.path.includes("{")) op.parameters = [...r.path.matchAll(/\{(\w+)\}/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: { type: "string" } }));
    (paths[r.path] ??= {})[r.method] = op;
  }
  const { $defs, ...config } = configSchema() as { $defs?: Record<string, unknown> };
  const doc = {
    openapi: "3.1.0",
    info: { title: "loralab", version: "0.1.0", description: "Start, watch and keep LoRA vs full fine-tuning runs." },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" }, cookie: { type: "apiKey", in: "cookie", name: "loralab_session" } },
      schemas: { RunConfig: config, Run: RunSchema, Problem, Metric, ...($defs ?? {}) },
    },
    paths,
  };
  // the engine's schema refers to its own $defs: in OpenAPI they live under components
  return JSON.parse(JSON.stringify(doc).replaceAll('"#/$defs/', '"#/components/schemas/'));
}
