// One pool per device (issue 16 item 8): cuda:N runs never started under the server, whose
// pools were cpu and cuda only. A fake sidecar (written here: it says ready, holds each train
// request until told to finish, and records which device it ran) stands in for the CUDA worker.
import { describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createServer, devicePool } from "@loralab/server";
import { root, tempDir, tinyConfig } from "./helpers.ts";

const FAKE = `#!/usr/bin/env bash
echo '{"v":2,"event":"ready","protocol":2,"version":"fake","pid":'$$',"devices":["cpu","cuda"]}'
while IFS= read -r line; do
  id=$(sed -E 's/^\\{"v":2,"id":([0-9]+).*/\\1/' <<< "$line")
  case "$line" in
    *'"op":"shutdown"'*) echo '{"v":2,"id":'$id',"event":"result","data":{"shutdown":true}}'; exit 0 ;;
    *'"op":"train"'*)
      dev=$(sed -E 's/.*"device":"([^"]*)".*/\\1/' <<< "$line")
      touch "$FAKE_DIR/started-$dev-$$"
      while [ ! -e "$FAKE_DIR/finish" ]; do sleep 0.05; done
      echo '{"v":2,"id":'$id',"event":"result","data":{"status":"completed"}}' ;;
  esac
done
`;

test("devicePool: cuda is cuda:0, cuda:01 is cuda:1, cpu is cpu", () => {
  expect(["cpu", "cuda", "cuda:0", "cuda:1", "cuda:01", "cuda:12"].map(devicePool)).toEqual([
    "cpu",
    "cuda:0",
    "cuda:0",
    "cuda:1",
    "cuda:1",
    "cuda:12",
  ]);
});

describe("the runner's pools", () => {
  test("a cuda:N run starts on its own GPU's pool; runs on one GPU wait for each other; cuda and cuda:0 are one GPU", async () => {
    const out = tempDir("devices");
    const fakeDir = join(out, "fake");
    const fake = join(out, "fake-sidecar.sh");
    writeFileSync(fake, FAKE);
    chmodSync(fake, 0o755);
    mkdirSync(fakeDir);
    const saved = { path: process.env.LORALAB_SIDECAR, dir: process.env.FAKE_DIR };
    process.env.LORALAB_SIDECAR = fake;
    process.env.FAKE_DIR = fakeDir;
    const srv = await createServer({
      store: { path: join(out, "store.db") },
      runsDir: join(out, "runs"),
      roots: [root, out],
      token: "t",
      importRuns: false,
      log: () => {},
    });
    try {
      const submit = async (device: string) => {
        const cfg = tinyConfig(out, { train: { device } });
        delete cfg.out_dir;
        await Bun.sleep(5); // distinct creation times: the queue's order is theirs
        return (await srv.runner.submit(cfg)).id;
      };
      const ids = {
        gpu1: await submit("cuda:1"),
        gpu0: await submit("cuda:0"),
        gpu1b: await submit("cuda:1"),
        bare: await submit("cuda"),
      };
      const status = async () =>
        Object.fromEntries(
          await Promise.all(Object.entries(ids).map(async ([k, id]) => [k, (await srv.store.getRun(id))!.status])),
        );
      const t0 = Date.now();
      while (readdirSync(fakeDir).filter((f) => f.startsWith("started-")).length < 2 && Date.now() - t0 < 20_000)
        await Bun.sleep(50);
      await Bun.sleep(500); // time for a wrong third claim to show
      // one run per GPU at a time (concurrency 1 each): cuda:1's first and cuda:0's run; the
      // second cuda:1 run and the bare `cuda` run (GPU 0) wait
      expect(await status()).toEqual({ gpu1: "running", gpu0: "running", gpu1b: "queued", bare: "queued" });
      expect(
        readdirSync(fakeDir)
          .map((f) => f.replace(/-\d+$/, ""))
          .sort(),
      ).toEqual(["started-cuda:0", "started-cuda:1"]);
      writeFileSync(join(fakeDir, "finish"), "");
      while (Object.values(await status()).some((s) => s !== "completed") && Date.now() - t0 < 60_000)
        await Bun.sleep(50);
      expect(await status()).toEqual({ gpu1: "completed", gpu0: "completed", gpu1b: "completed", bare: "completed" });
    } finally {
      writeFileSync(join(fakeDir, "finish"), "");
      await srv.close();
      for (const [k, v] of [
        ["LORALAB_SIDECAR", saved.path],
        ["FAKE_DIR", saved.dir],
      ] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  }, 90_000);
});
