// Runs the server starts execute in a worker process each (issue 16 item 2): a run whose worker
// dies takes only itself, is retried from its checkpoint within a budget the store records, and
// is then failed with the reason, never re-queued into a crash loop; a cancel stops a run in
// every phase, also before its first step.
import { expect, test } from "bun:test";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "@loralab/db";
import { createServer } from "@loralab/server";
import { root, tempDir, tinyConfig } from "./helpers.ts";

// a worker that says ready, then on a train request either dies (SIGKILL, as the OOM killer
// does) or sits in its prepare phase without a step
const FAKE = `#!/usr/bin/env bash
echo '{"v":2,"event":"ready","protocol":2,"version":"fake","pid":'$$',"devices":["cpu","cuda"]}'
while IFS= read -r line; do
  id=$(sed -E 's/^\\{"v":2,"id":([0-9]+).*/\\1/' <<< "$line")
  case "$line" in
    *'"op":"shutdown"'*) echo '{"v":2,"id":'$id',"event":"result","data":{"shutdown":true}}'; exit 0 ;;
    *'"op":"train"'*) echo "$$" >> "$FAKE_DIR/trains"; [ "$FAKE_MODE" = prepare ] && sleep 600; kill -9 $$ ;;
  esac
done
`;

async function withFake<T>(mode: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = tempDir("worker");
  const fake = join(dir, "fake-sidecar.sh");
  writeFileSync(fake, FAKE);
  chmodSync(fake, 0o755);
  const saved = { path: process.env.LORALAB_SIDECAR, dir: process.env.FAKE_DIR, mode: process.env.FAKE_MODE };
  Object.assign(process.env, { LORALAB_SIDECAR: fake, FAKE_DIR: dir, FAKE_MODE: mode });
  try {
    return await fn(dir);
  } finally {
    for (const [k, v] of [
      ["LORALAB_SIDECAR", saved.path],
      ["FAKE_DIR", saved.dir],
      ["FAKE_MODE", saved.mode],
    ] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms = 30_000): Promise<T> {
  const t0 = Date.now();
  let v = await f();
  while (!ok(v) && Date.now() - t0 < ms) {
    await Bun.sleep(50);
    v = await f();
  }
  return v;
}

test("a run whose worker is killed is retried once, then failed with the reason; the server stays up; a restart does not re-queue it", async () => {
  await withFake("die", async (dir) => {
    const opts = {
      store: { path: join(dir, "store.db") },
      runsDir: join(dir, "runs"),
      roots: [root, dir],
      token: "t",
      importRuns: false,
      log: () => {},
    };
    let srv = await createServer(opts);
    const cfg = tinyConfig(dir);
    delete cfg.out_dir;
    const { id } = await srv.runner.submit(cfg);
    try {
      const row = await until(
        () => srv.store.getRun(id),
        (r) => r?.status === "failed",
      );
      expect(row?.status).toBe("failed");
      expect(row?.attempts).toBe(2);
      expect(row?.error).toContain("the worker process died in 2 of 2 attempts, the retry budget");
      expect(row?.error).toContain("hint: ");
      expect((await Bun.file(join(dir, "trains")).text()).trim().split("\n").length).toBe(2); // two workers, each killed
      const res = await srv.fetch(
        new Request("http://localhost/api/runs", { headers: { authorization: "Bearer t", host: "localhost" } }),
      );
      expect(res.status).toBe(200); // the server did not go down with its runs
    } finally {
      await srv.close();
    }
    // a server that died while such a run "ran" would find it running: past its budget, it fails
    const store = await openStore(opts.store);
    await store.updateRun(id, { status: "running" });
    await store.close();
    srv = await createServer(opts);
    try {
      expect(srv.resumed).toEqual([]);
      expect((await srv.store.getRun(id))?.status).toBe("failed");
    } finally {
      await srv.close();
    }
  });
}, 90_000);

test("a cancel stops a run still preparing (before its first step)", async () => {
  await withFake("prepare", async (dir) => {
    const srv = await createServer({
      store: { path: join(dir, "store.db") },
      runsDir: join(dir, "runs"),
      roots: [root, dir],
      token: "t",
      importRuns: false,
      log: () => {},
    });
    try {
      const cfg = tinyConfig(dir);
      delete cfg.out_dir;
      const { id } = await srv.runner.submit(cfg);
      await until(
        async () => Bun.file(join(dir, "trains")).exists(),
        (x) => x,
      ); // the worker took it
      expect((await srv.store.getRun(id))?.status).toBe("running");
      const t0 = Date.now();
      expect(await srv.runner.cancel(id)).toBe(true);
      const row = await until(
        () => srv.store.getRun(id),
        (r) => r?.status !== "running",
        10_000,
      );
      expect(row?.status).toBe("cancelled");
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      await srv.close();
    }
  });
}, 60_000);
