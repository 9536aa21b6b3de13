// @loralab/server: `loralab serve` and `createServer` — the run store, the runner and the HTTP
// app together, on Bun.serve.
import { openStore, type Store, type StoreLease, type StoreOptions } from "@loralab/db";
import type { Hono } from "hono";
import { ConfigError, type RunConfig } from "@loralab/engine";
import { createApp } from "./app.ts";
import { scanRunsDir, type ImportOutcome } from "./import.ts";
import { Runner } from "./runner.ts";
import { enginePath, loadToken, normalOrigin, realPath, type Token } from "./security.ts";

export { createApp, problem } from "./app.ts";
export {
  importRunDir,
  importRuns,
  readRunJson,
  scanRunsDir,
  type ImportOptions,
  type ImportOutcome,
} from "./import.ts";
export { openapi } from "./openapi.ts";
export { devicePool, newRunId, Runner, type RunEvent } from "./runner.ts";
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
  /** Browser origins besides the server's own (the scheme, host and port a request came in on)
   *  that may call the API, exactly: `http://localhost:5173`. */
  allowOrigins?: string[];
  /** The token (default: LORALAB_TOKEN, else kept in ~/.config/loralab/token). */
  token?: string;
  maxBodyBytes?: number;
  concurrency?: Record<string, number>;
  /** The config the dashboard offers. */
  template?: RunConfig;
  /** Start the runner (default true). A server that runs takes the store's lease first: a second
   *  one on the same store is refused (StoreBusy) rather than resuming the same runs. */
  run?: boolean;
  /** Read the run directories under runsDir that the store does not know (runs trained by
   *  `loralab train` or the library) into it at start (default true). */
  importRuns?: boolean;
  /** Where the server's messages go (default stderr). */
  log?: (msg: string) => void;
}

export interface LoralabServer {
  app: Hono;
  store: Store;
  runner: Runner;
  token: Token;
  /** Runs the interrupted-run recovery found and re-queued. */
  resumed: string[];
  /** What the start-up scan of runsDir did with each run directory the store did not know. */
  imported: ImportOutcome[];
  fetch: (req: Request) => Response | Promise<Response>;
  /** Serve on a port (0: any free one); resolves with the URL. */
  listen(port?: number, hostname?: string): string;
  close(): Promise<void>;
}

export async function createServer(o: ServerOptions = {}): Promise<LoralabServer> {
  const allowOrigins = (o.allowOrigins ?? []).map((a) => {
    const origin = normalOrigin(a);
    if (!origin)
      throw new ConfigError(
        `--allow-origin ${a}: not an origin (hint: scheme, host and port only, as a browser sends it: http://localhost:5173)`,
        "allow-origin",
      );
    return origin;
  });
  const opened = !(o.store && "listRuns" in o.store);
  const store = o.store && "listRuns" in o.store ? o.store : await openStore(o.store as StoreOptions | undefined);
  const log = o.log ?? ((m: string) => console.error(m));
  const runner = new Runner(store, { runsDir: o.runsDir ?? "runs", concurrency: o.concurrency });
  // one server works a store's queue: a second would resume the same runs into the same directories
  let lease: StoreLease | undefined;
  if (o.run !== false) {
    try {
      lease = await store.lease("loralab serve", (why) => {
        log(
          `loralab serve: lost the run store's lease: ${why}; this server takes no more runs (hint: restart it once the other one stops)`,
        );
        void runner.stop();
      });
    } catch (e) {
      if (opened) await store.close();
      throw e;
    }
  }
  const token: Token = o.token ? { token: o.token, file: "", generated: false } : loadToken();
  const app = createApp({
    store,
    runner,
    token: token.token,
    // normalised as submitted paths are checked (~/, relative, symlinks), so the two compare as strings
    roots: (o.roots ?? [process.cwd()]).map((r) => realPath(enginePath(r))),
    allowedHosts: ["localhost", "127.0.0.1", "[::1]", ...(o.allowHosts ?? [])],
    allowOrigins,
    maxBodyBytes: o.maxBodyBytes ?? 1 << 20,
    template: o.template,
    log: o.log,
  });
  // before the runner starts: the scan only adds finished runs, which the runner never touches
  const imported =
    o.importRuns === false ? [] : await scanRunsDir(store, runner.runsDir, { isActive: (id) => runner.isActive(id) });
  const added = imported.flatMap((r) => (r.action === "imported" ? [r.id] : []));
  if (added.length)
    log(
      `loralab serve: imported ${added.length} run${added.length === 1 ? "" : "s"} from ${runner.runsDir}: ${added.join(", ")}`,
    );
  for (const r of imported)
    if (r.action === "skipped" || r.action === "failed") log(`loralab serve: not imported: ${r.dir}: ${r.reason}`);
  const resumed = o.run === false ? [] : (await runner.start()).resumed;
  let server: ReturnType<typeof Bun.serve> | undefined;
  return {
    app,
    store,
    runner,
    token,
    resumed,
    imported,
    fetch: app.fetch,
    listen(port = 8080, hostname = "127.0.0.1") {
      // SSE streams stay open for a run's whole life: the stream pings every 10 s
      server = Bun.serve({ port, hostname, fetch: app.fetch, idleTimeout: 60 });
      return `http://${hostname}:${server.port}`;
    },
    async close() {
      await server?.stop(true);
      await runner.stop(true);
      await runner.settled();
      await lease?.release();
      await store.close();
    },
  };
}
