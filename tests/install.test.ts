// loralab installed into another Bun app from its packed tarball (scripts/pack.ts): `bun add`
// in a fresh directory outside the workspace, then a script there trains in-process and in the
// packed sidecar, keeps the run in a store and serves it. Nothing may reach back into the repo.
import { expect, test } from "bun:test";
import { cpSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { root, tempDir } from "./helpers.ts";

function run(cmd: string[], cwd: string, env: Record<string, string | undefined> = process.env) {
  const p = Bun.spawnSync(cmd, { cwd, env, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

const CONSUMER = `
import { createServer, openStore, sidecarPath, train } from "loralab";
import { train as trainCore } from "loralab/core";

const tiny = (f: string) => \`\${import.meta.dir}/tiny/\${f}\`;
const config = (run_id: string, kind: "full" | "lora") => ({
  name: run_id, run_id, out_dir: "runs", seed: 3,
  model: { config: tiny("config.json"), tokenizer: tiny("tokenizer.json") },
  data: { train: tiny("code.jsonl"), text_field: "content", seq_len: 32, cache_dir: "cache" },
  method: { kind, rank: 4 },
  train: { steps: 3, micro_batch: 4, checkpoint_every: 0 },
});
const lora = await train(config("lora", "lora"));
// the worker process that device routing starts, found inside the installed package
const full = await trainCore(config("full", "full"), { sidecar: true });
const store = await openStore({ path: "app.db" });
await store.ingestRunDir(lora.run_dir);
const server = await createServer({ store, runsDir: "runs", token: "app-token", run: false });
const res = await server.fetch(new Request("http://localhost/api/runs/lora", { headers: { Authorization: "Bearer app-token" } }));
console.log(JSON.stringify({ lora, full, sidecar: sidecarPath("cpu"), api: [res.status, (await res.json()).status] }));
await server.close();
`;

test("bun add the packed tarball in a separate app; train from 'loralab' and 'loralab/core' there", async () => {
  const dir = tempDir("install");
  // --- pack
  const t0 = performance.now();
  const pack = run([process.execPath, join(root, "scripts/pack.ts"), "--out", join(dir, "dist")], root);
  expect(pack.err).toBe("");
  expect(pack.code).toBe(0);
  const tarball = join(
    dir,
    "dist",
    `loralab-${(await Bun.file(join(root, "packages/loralab/package.json")).json()).version}.tgz`,
  );
  expect(existsSync(tarball)).toBe(true);
  const packSeconds = (performance.now() - t0) / 1000;

  // --- a fresh app: its own package.json, the tiny model and data copied in
  const app = join(dir, "app");
  mkdirSync(join(app, "tiny"), { recursive: true });
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  for (const f of ["config.json", "tokenizer.json", "code.jsonl"])
    cpSync(join(root, "datasets/tiny", f), join(app, "tiny", f));
  // third-party packages from bun's cache (the workspace's install filled it), else the registry;
  // loralab's own packages are in the tarball and never asked for
  const add = run([process.execPath, "add", "--prefer-offline", tarball], app);
  expect([add.code, add.err]).toEqual([0, expect.any(String)]);
  const manifest = await Bun.file(join(app, "node_modules/loralab/package.json")).json();
  expect(JSON.stringify(manifest)).not.toContain("workspace:");
  expect(Object.keys(manifest.dependencies).filter((d) => d.startsWith("@loralab/"))).toEqual([]);
  expect(Bun.resolveSync("loralab", app).startsWith(app)).toBe(true);

  // --- the app's own script, run from its directory
  writeFileSync(join(app, "main.ts"), CONSUMER);
  const env: Record<string, string | undefined> = { ...process.env };
  delete env.LORALAB_SIDECAR; // the packed worker, not one named from outside
  const t1 = performance.now();
  const r = run([process.execPath, "main.ts"], app, env);
  if (r.code !== 0) throw new Error(`the consumer app failed (exit ${r.code}):\n${r.err}`);
  const out = JSON.parse(r.out.trim().split("\n").pop()!);
  expect(out.lora.status).toBe("completed");
  expect(out.lora.steps).toBe(3);
  expect(resolve(app, out.lora.run_dir)).toBe(join(app, "runs", "lora"));
  expect(existsSync(resolve(app, out.lora.output, "adapter_model.safetensors"))).toBe(true);
  expect(existsSync(resolve(app, out.lora.output, "adapter_config.json"))).toBe(true);
  expect(out.full.status).toBe("completed");
  expect(existsSync(resolve(app, out.full.output, "model.safetensors"))).toBe(true);
  expect(out.sidecar.startsWith(join(app, "node_modules"))).toBe(true);
  expect(out.api).toEqual([200, "completed"]);
  console.error(
    `install: pack ${packSeconds.toFixed(1)} s, consumer run ${((performance.now() - t1) / 1000).toFixed(1)} s`,
  );
}, 300_000);
