// The HTTP API and dashboard (Hono). Every /api route but the login and the OpenAPI document
// needs the token: `Authorization: Bearer <token>` or the session cookie the login sets
// (HttpOnly, SameSite=Strict: EventSource cannot send a header, and a token never goes in a
// URL). Host and Origin are checked on every request, bodies are size-limited, and errors are
// problem details, never a stack trace.
import { readFileSync } from "node:fs";
import { extname } from "node:path";
import type { Store } from "@loralab/db";
import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { getCookie, setCookie } from "hono/cookie";
import { streamSSE } from "hono/streaming";
import { ConfigError, type RunConfig } from "loralab/core";
import { DASHBOARD_CSP, dashboardHtml, dashboardJs } from "./dashboard.ts";
import { openapi } from "./openapi.ts";
import type { RunEvent, Runner } from "./runner.ts";
import { artifactFile, hostAllowed, originAllowed, pathOutsideRoots, sameSecret, sessionValue } from "./security.ts";

export interface AppOptions {
  store: Store;
  runner: Runner;
  token: string;
  /** Directories a submitted config may name files under. */
  roots: string[];
  /** Host names (optionally host:port) the server answers to. */
  allowedHosts: string[];
  /** Largest request body, bytes. */
  maxBodyBytes: number;
  /** A config the dashboard offers to start (the tiny laboratory). */
  template?: RunConfig;
  log?: (msg: string) => void;
}

const TERMINAL = new Set(["completed", "cancelled", "failed"]);
const RUN_TTL_MS = 100;
const TYPES: Record<string, string> = { ".json": "application/json", ".jsonl": "application/x-ndjson", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8", ".md": "text/markdown; charset=utf-8" };

export function problem(c: Context, status: number, title: string, detail: string, extra: Record<string, unknown> = {}) {
  return c.body(JSON.stringify({ type: "about:blank", title, status, detail, ...extra }), status as 400, { "Content-Type": "application/problem+json" });
}

export function createApp(o: AppOptions): Hono {
  const app = new Hono();
  const log = o.log ?? ((m: string) => console.error(m));
  const session = sessionValue(o.token);

  app.onError((err, c) => {
    log(`loralab serve: ${c.req.method} ${c.req.path}: ${err.stack ?? err.message}`);
    return problem(c, 500, "Internal Server Error", "the server failed on this request; the details are in its log");
  });
  app.notFound((c) => problem(c, 404, "Not Found", `no route ${c.req.method} ${c.req.path}`));

  // DNS rebinding and cross-site requests: Host and Origin must be ours
  app.use("*", async (c, next) => {
    // Bun builds the request URL from the Host header; in-process requests carry it only in the URL
    const host = c.req.header("host") ?? new URL(c.req.url).host;
    if (!hostAllowed(host, o.allowedHosts)) return problem(c, 403, "Forbidden", `Host ${JSON.stringify(host)} is not served here (hint: allowed: ${o.allowedHosts.join(", ")}; --allow-host adds one)`);
    if (!originAllowed(c.req.header("origin"), o.allowedHosts)) return problem(c, 403, "Forbidden", `Origin ${JSON.stringify(c.req.header("origin"))} may not call this server`);
    await next();
    c.header("X-Content-Type-Options", "nosniff");
    c.header("Referrer-Policy", "no-referrer");
    c.header("Cache-Control", "no-store");
  });
  app.use("/api/*", bodyLimit({ maxSize: o.maxBodyBytes, onError: (c) => problem(c, 413, "Content Too Large", `request bodies are limited to ${o.maxBodyBytes} bytes`) }));

  // the dashboard (its data comes from the API, which checks the session)
  app.get("/", (c) => c.html(dashboardHtml(), 200, { "Content-Security-Policy": DASHBOARD_CSP }));
  app.get("/dashboard.js", (c) => c.body(dashboardJs(), 200, { "Content-Type": "text/javascript; charset=utf-8", "Content-Security-Policy": DASHBOARD_CSP }));
  app.get("/favicon.ico", (c) => c.body(null, 204));
  app.get("/api/openapi.json", (c) => c.json(openapi()));

  app.post("/api/session", async (c) => {
    const body = await c.req.json().catch(() => null);
    if (!body || typeof body.token !== "string" || !sameSecret(body.token, o.token)) return problem(c, 401, "Unauthorized", "wrong token");
    setCookie(c, "loralab_session", session, { httpOnly: true, sameSite: "Strict", path: "/", secure: new URL(c.req.url).protocol === "https:" });
    return c.body(null, 204);
  });

  app.use("/api/*", async (c, next) => {
    const auth = c.req.header("authorization");
    const bearer = auth?.startsWith("Bearer ") ? auth.slice(7) : undefined;
    const cookie = getCookie(c, "loralab_session");
    const ok = (bearer !== undefined && sameSecret(bearer, o.token)) || (cookie !== undefined && sameSecret(cookie, session));
    if (!ok) return problem(c, 401, "Unauthorized", "a token is needed: `Authorization: Bearer <token>` (printed by `loralab serve`, kept in ~/.config/loralab/token) or the dashboard's login");
    await next();
  });

  const runOr404 = async (c: Context) => {
    const r = await o.store.getRun(c.req.param("id")!);
    return r ?? null;
  };
  const publicRun = (r: Awaited<ReturnType<Store["getRun"]>>) => r && { ...r, runDir: undefined };

  app.post("/api/runs", async (c) => {
    let cfg: RunConfig;
    try {
      cfg = await c.req.json();
    } catch {
      return problem(c, 400, "Bad Request", "the body must be a JSON run config");
    }
    if (typeof cfg !== "object" || cfg === null || Array.isArray(cfg)) return problem(c, 422, "Unprocessable Content", "a run config is a JSON object", { field: "" });
    const outside = pathOutsideRoots(cfg as Record<string, unknown>, o.roots);
    if (outside) return problem(c, 422, "Unprocessable Content", `config ${outside[0]}: ${outside[1]} is outside the directories this server may read (hint: allowed roots: ${o.roots.join(", ")}; --root adds one)`, { field: outside[0] });
    try {
      const r = await o.runner.submit(cfg);
      return c.json(publicRun(r), 201);
    } catch (e) {
      if (e instanceof ConfigError) return problem(c, 422, "Unprocessable Content", e.message, { field: e.field });
      throw e;
    }
  });

  app.get("/api/runs", async (c) => c.json((await o.store.listRuns({ limit: Number(c.req.query("limit") ?? 200) })).map(publicRun)));
  app.get("/api/templates/tiny", (c) => c.json(o.template ?? {}));

  // the endpoint clients poll: its serialized body is reused for RUN_TTL_MS (a row read and a
  // JSON encoding of the whole config per poll cost the training run measurable CPU)
  const runBodies = new Map<string, { at: number; body: string }>();
  app.get("/api/runs/:id", async (c) => {
    const id = c.req.param("id");
    const hit = runBodies.get(id);
    if (hit && performance.now() - hit.at < RUN_TTL_MS) return c.body(hit.body, 200, { "Content-Type": "application/json" });
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${id}`);
    const body = JSON.stringify(publicRun(r));
    if (runBodies.size > 10_000) runBodies.clear();
    runBodies.set(id, { at: performance.now(), body });
    return c.body(body, 200, { "Content-Type": "application/json" });
  });

  app.get("/api/runs/:id/metrics", async (c) => {
    if (!(await runOr404(c))) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    const after = c.req.query("after");
    return c.json(await o.store.metrics(c.req.param("id"), { name: c.req.query("name"), afterStep: after === undefined ? undefined : Number(after) }));
  });

  app.get("/api/runs/:id/results", async (c) => {
    if (!(await runOr404(c))) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    const id = c.req.param("id");
    return c.json({ eval: await o.store.evalResults(id), spectra: await o.store.spectra(id) });
  });

  app.post("/api/runs/:id/cancel", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    if (TERMINAL.has(r.status) || !(await o.runner.cancel(r.id))) return problem(c, 409, "Conflict", `run ${r.id} is already ${r.status}`);
    return c.json({ id: r.id, status: "cancelling" }, 202);
  });

  app.post("/api/runs/:id/ingest", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    if (o.runner.isActive(r.id) || !TERMINAL.has(r.status)) return problem(c, 409, "Conflict", `run ${r.id} is ${r.status}: its directory is read when it ends`);
    await o.runner.ingest(r);
    return c.json({ eval: await o.store.evalResults(r.id), spectra: await o.store.spectra(r.id) });
  });

  app.get("/api/runs/:id/events", async (c) => {
    const r = await runOr404(c);
    if (!r) return problem(c, 404, "Not Found", `no run ${c.req.param("id")}`);
    return streamSSE(c, async (stream) => {
      const queue: RunEvent[] = [];
      let wake: (() => void) | undefined;
      const unsubscribe = o.runner.subscribe(r.id, (e) => {
        queue.push(e);
        wake?.();
      });
      let open = true;
      stream.onAbort(() => {
        open = false;
        wake?.();
      });
      try {
        // what a late subscriber missed: the current status and every logged loss
        const loss = await o.store.metrics(r.id, { name: "loss" });
        await stream.writeSSE({ event: "snapshot", data: JSON.stringify({ status: (await o.store.getRun(r.id))?.status, loss: loss.map((m) => [m.step, m.value]) }) });
        let status: string = (await o.store.getRun(r.id))?.status ?? r.status;
        while (open && !TERMINAL.has(status)) {
          if (!queue.length) await Promise.race([new Promise<void>((res) => (wake = res)), Bun.sleep(10_000)]);
          wake = undefined;
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
        if (open) {
          const res = await o.store.evalResults(r.id);
          if (res.length) await stream.writeSSE({ event: "eval", data: JSON.stringify(res) });
          await stream.writeSSE({ event: "end", data: JSON.stringify({ status }) });
        }
      } finally {
        unsubscribe();
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
    const rawPath = new URL(c.req.url).pathname;
    const prefix = `/api/runs/${encodeURIComponent(r.id)}/artifacts/`;
    const raw = rawPath.startsWith(prefix) ? rawPath.slice(prefix.length) : "";
    const file = artifactFile(r.runDir, raw);
    if (!file) return problem(c, 404, "Not Found", `no file ${JSON.stringify(raw)} in run ${r.id}`);
    const type = TYPES[extname(file)] ?? "application/octet-stream";
    return c.body(readFileSync(file), 200, {
      "Content-Type": type,
      // reports may be opened in the browser; nothing in them may run
      "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox",
      ...(type === "application/octet-stream" ? { "Content-Disposition": `attachment; filename="${file.split("/").pop()}"` } : {}),
    });
  });

  return app;
}
