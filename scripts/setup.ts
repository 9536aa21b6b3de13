// Makes a fresh checkout ready, and does nothing when it already is: installs the
// packages, and builds the Rust addon (napi-rs, release profile) when any Rust source
// is newer than it. Run first by `bun run train`, `bun run test` and `bun run bench`.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { hostTriple, preferRustup } from "../packages/cli/src/cargo.ts";

const root = new URL("..", import.meta.url).pathname;
const addon = join(root, "crates/node/loralab.linux-x64-gnu.node");

function run(cmd: string[], cwd = root): void {
  const t0 = performance.now();
  const p = Bun.spawnSync(cmd, { cwd, stdout: "inherit", stderr: "inherit", env: process.env });
  if (p.exitCode !== 0) {
    console.error(`setup: \`${cmd.join(" ")}\` failed (exit ${p.exitCode})`);
    process.exit(p.exitCode ?? 1);
  }
  console.error(`setup: ${cmd.slice(0, 3).join(" ")} took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p));
    else if (e.name.endsWith(".rs") || e.name === "Cargo.toml") t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

// --- packages
const lock = join(root, "bun.lock");
const stamp = join(root, "node_modules/.loralab-installed");
if (!existsSync(stamp) || statSync(stamp).mtimeMs < statSync(lock).mtimeMs) {
  run([process.execPath, "install", "--frozen-lockfile"]);
  await Bun.write(stamp, new Date().toISOString());
}

// --- the addon
preferRustup();
const cargo = Bun.spawnSync(["cargo", "--version"], { stdout: "pipe", stderr: "pipe", env: process.env });
if (cargo.exitCode !== 0) {
  console.error("setup: cargo not found (hint: install Rust with rustup; the engine is a Rust crate)");
  process.exit(1);
}
const sources = Math.max(
  newest(join(root, "crates")),
  statSync(join(root, "Cargo.toml")).mtimeMs,
  statSync(join(root, "Cargo.lock")).mtimeMs,
);
if (!existsSync(addon) || statSync(addon).mtimeMs < sources) {
  console.error("setup: building the engine (first build compiles candle: a few minutes on 2 cores)");
  run([join(root, "node_modules/.bin/napi"), "build", "--platform", "--release", "--cwd", "crates/node"]);
}

// --- the sidecar (CPU build; the CUDA build is scripts/build-cuda-sidecar.sh): the worker process
// CUDA runs go through, and what the supervision tests run.
const sidecar = join(root, "target", hostTriple(), "release", "loralab-sidecar");
if (!existsSync(sidecar) || statSync(sidecar).mtimeMs < Math.max(sources, newest(join(root, "sidecar")))) {
  // with the addon's package beside it, so features unify as in the addon build and candle is
  // not compiled a second time (alone, the sidecar's graph turns syn's `full` off)
  run(["cargo", "build", "--release", "--target", hostTriple(), "-p", "loralab-node", "-p", "loralab-sidecar"]);
}
