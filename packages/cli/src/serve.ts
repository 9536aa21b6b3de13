// `loralab serve`: the run store, the runner and the HTTP API + dashboard on one port.
import { join, resolve } from "node:path";
import { ConfigError } from "@loralab/engine";
import { cliArgs } from "./args.ts";
import { createServer } from "@loralab/server";

export const SERVE_USAGE = `usage: loralab serve [--port 8080] [--host 127.0.0.1] [--db loralab.db] [--runs-dir runs] [--root DIR ...] [--allow-host NAME ...] [--allow-origin ORIGIN ...] [--concurrency 1]
  the store is Postgres when DATABASE_URL is set, else the SQLite file --db; one server per store;
  a token is always required: LORALAB_TOKEN, else one generated once and kept in ~/.config/loralab/token;
  submitted configs may only name files under --root (default: the working directory);
  browsers may call the API only from the server's own pages, and from each --allow-origin exactly (http://localhost:5173)`;

export async function cmdServe(args: string[]): Promise<number> {
  const a = cliArgs(
    "serve",
    args,
    {
      port: { type: "string" },
      host: { type: "string" },
      db: { type: "string" },
      "runs-dir": { type: "string" },
      root: { type: "string", multiple: true },
      "allow-host": { type: "string", multiple: true },
      "allow-origin": { type: "string", multiple: true },
      concurrency: { type: "string" },
    },
    SERVE_USAGE,
    0,
  ).values;
  if (a.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  const port = Number(a.port ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new ConfigError(`--port ${a.port}: expected 0-65535`, "port");
  const repo = resolve(new URL("../../..", import.meta.url).pathname);
  const tiny = join(repo, "datasets/tiny");
  const s = await createServer({
    store: process.env.DATABASE_URL ? { url: process.env.DATABASE_URL } : { path: a.db ?? "loralab.db" },
    runsDir: a["runs-dir"] ?? "runs",
    roots: a.root ?? [process.cwd()],
    allowHosts: a["allow-host"],
    allowOrigins: a["allow-origin"],
    concurrency: { cpu: Number(a.concurrency ?? 1) },
    template: {
      name: "tiny-lora",
      model: { config: join(tiny, "config.json"), tokenizer: join(tiny, "tokenizer.json") },
      data: { train: join(tiny, "code.jsonl"), text_field: "content", seq_len: 64 },
      method: { kind: "lora", rank: 8 },
      train: { steps: 40, micro_batch: 8, checkpoint_every: 10 },
    },
  });
  const url = s.listen(port, a.host ?? "127.0.0.1");
  console.log(`loralab serve: ${url} (store: ${s.store.kind} ${s.store.where}, runs: ${s.runner.runsDir})`);
  if (s.token.generated) console.log(`token (shown once; kept in ${s.token.file}): ${s.token.token}`);
  else console.log(`token: ${s.token.file ? `in ${s.token.file}` : "from LORALAB_TOKEN"}`);
  if (s.resumed.length) console.log(`resuming interrupted runs: ${s.resumed.join(", ")}`);
  await new Promise<void>((done) => {
    const stop = async () => {
      console.log("\nstopping: running runs checkpoint and stop...");
      await s.close();
      done();
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  return 0;
}
