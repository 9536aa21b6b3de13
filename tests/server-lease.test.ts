// One server per run store (issue 16 item 7): two servers on one store both resumed the same
// run into the same directory. The server that runs takes the store's lease; a second is refused
// with the holder named and a hint, readers still read, and the lease dies with its holder
// (SQLite: a flock the kernel drops on SIGKILL; Postgres: a session advisory lock).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { createServer, openStore } from "loralab";
import { StoreBusy } from "@loralab/db";
import { freshPostgresUrl } from "./pg.ts";
import { root, tempDir } from "./helpers.ts";

describe("the store's lease", () => {
  test("SQLite: a second server on the store is refused, naming the first; readers still read; released on close", async () => {
    const out = tempDir("lease");
    const db = join(out, "store.db");
    const opts = {
      store: { path: db },
      runsDir: join(out, "runs"),
      roots: [root, out],
      token: "t",
      importRuns: false,
      log: () => {},
    };
    const first = await createServer(opts);
    try {
      const second = createServer(opts);
      await expect(second).rejects.toBeInstanceOf(StoreBusy);
      await expect(createServer(opts)).rejects.toThrow(
        new RegExp(
          `run store ${db} is in use by another loralab server \\(loralab serve, pid ${process.pid} on .*\\) \\(hint: stop that server first, or give this one its own store`,
        ),
      );
      // a reader (loralab import, a report, a test's watcher) needs no lease
      const reader = await openStore({ path: db });
      expect(await reader.listRuns()).toEqual([]);
      await reader.close();
      // a server that does not run (no runner, no recovery) needs none either
      const viewer = await createServer({ ...opts, run: false });
      await viewer.close();
    } finally {
      await first.close();
    }
    const again = await createServer(opts);
    await again.close();
  });

  test("SQLite: the lease dies with its process (SIGKILL), and the next server starts", async () => {
    const out = tempDir("lease-kill");
    const db = join(out, "store.db");
    const script = `import { createServer } from "loralab";
      const s = await createServer({ store: { path: ${JSON.stringify(db)} }, runsDir: ${JSON.stringify(join(out, "runs"))}, token: "t", importRuns: false });
      console.log("ready"); await new Promise(() => {});`;
    const child = Bun.spawn([process.execPath, "-e", script], { cwd: root, stdout: "pipe", stderr: "inherit" });
    try {
      const reader = child.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value).trim()).toBe("ready");
      const opts = { store: { path: db }, runsDir: join(out, "runs"), token: "t", importRuns: false, log: () => {} };
      await expect(createServer(opts)).rejects.toThrow(`pid ${child.pid} on`);
      child.kill(9);
      await child.exited;
      const next = await createServer(opts);
      await next.close();
    } finally {
      child.kill(9);
    }
  });

  test("Postgres: the same, with a session advisory lock", async () => {
    const url = await freshPostgresUrl("lease");
    const out = tempDir("lease-pg");
    const opts = { store: { url }, runsDir: join(out, "runs"), token: "t", importRuns: false, log: () => {} };
    const first = await createServer(opts);
    try {
      await expect(createServer(opts)).rejects.toThrow(
        new RegExp(
          `run store postgres://…@.* is in use by another loralab server \\(loralab serve, pid ${process.pid} on `,
        ),
      );
      const viewer = await createServer({ ...opts, run: false });
      expect(await viewer.store.listRuns()).toEqual([]);
      await viewer.close();
    } finally {
      await first.close();
    }
    const again = await createServer(opts);
    await again.close();
  }, 120_000);
});
