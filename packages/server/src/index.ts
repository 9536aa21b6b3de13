// @loralab/server: `loralab serve` and `createServer` — the run store, the runner and the HTTP
// app together, on Bun.serve.
import { resolve } from "node:path";
import { openStore, type Store, type StoreOptions } from "@loralab/db";
import type { Hono } from "hono";
import type { RunConfig } from "loralab/core";
import { createApp } from "./app.ts";
import { Runner } from "./runner.ts";
import { loadToken, type Token } from "./security.ts";

export { createApp, problem } from "./app.ts";
export { openapi } from "./openapi.ts";
export { newRunId, Runner, type RunEvent } from "./runner.ts";
export * from "./security.ts";

export interface ServerOptions {
  /** An open store, or how to open one (default: $DATABASE_URL, else ./loralab.db). */
  store?: Store | StoreOptions;
  /** Run directories (default ./runs). */
  runsDir?: string;
  /** Directories a submitted config may name files under (default: the working directory). */
  roots?: string[];
  /** Extra Host names to answer to besides localhost, 127.0.0.1 and [::1]. */
  allowHosts?: string[];
  /** The token (default: LORALAB_TOKEN, else kept in ~/.config/loralab/token). */
  token?: string;
  maxBodyBytes?: number;
  concurrency?: Record<string, number>;
  /** The config the dashboard offers. */
  template?: RunConfig;
  /** Start the runner (default true). */
  run?: boolean;
}

export interface LoralabServer {
  app: Hono;
  store: Store;
  runner: Runner;
  token: Token;
  /** Runs the interrupted-run recovery found and re-queued. */
  resumed: string[];
  fetch: (req: Request) => Response | Promise<Response>;
  /** Serve on a port (0: any free one); resolves with the URL. */
  listen(port?: number, hostname?: string): string;
  close(): Promise<void>;
}

export async function createServer(o: ServerOptions = {}): Promise<LoralabServer> {
  const store = o.store && "listRuns" in o.store ? o.store : await openStore(o.store as StoreOptions | undefined);
  const runner = new Runner(store, { runsDir: o.runsDir ?? "runs", concurrency: o.concurrency });
  const token: Token = o.token ? { token: o.token, file: "", generated: false } : loadToken();
  const app = createApp({
    store,
    runner,
    token: token.token,
    roots: (o.roots ?? [process.cwd()]).map((r) => resolve(r)),
    allowedHosts: ["localhost", "127.0.0.1", "[::1]", ...(o.allowHosts ?? [])],
    maxBodyBytes: o.maxBodyBytes ?? 1 << 20,
    template: o.template,
  });
  const resumed = o.run === false ? [] : (await runner.start()).resumed;
  let server: ReturnType<typeof Bun.serve> | undefined;
  return {
    app,
    store,
    runner,
    token,
    resumed,
    fetch: app.fetch,
    listen(port = 8080, hostname = "127.0.0.1") {
      // SSE streams stay open for a run's whole life: the stream pings every 10 s
      server = Bun.serve({ port, hostname, fetch: app.fetch, idleTimeout: 60 });
      return `http://${hostname}:${server.port}`;
    },
    async close() {
      await server?.stop(true);
      await runner.stop(true);
      await store.close();
    },
  };
}
