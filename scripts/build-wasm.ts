// `bun run build:wasm`: the report's WebAssembly maths (scripts/build-wasm.sh), built when the
// module is missing or older than its Rust sources (`--force`: always). The test command runs
// it; a report never does (packages/report/src/wasm.ts only loads the module).
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const out = join(root, "packages/report/wasm");
const SOURCES = [
  "crates/maths/src",
  "crates/maths/Cargo.toml",
  "crates/wasm/src",
  "crates/wasm/Cargo.toml",
  "scripts/build-wasm.sh",
];

function newest(path: string): number {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  return Math.max(0, ...readdirSync(path).map((n) => newest(join(path, n))));
}

/** Whether the built module is missing or older than its sources. */
export function wasmStale(): boolean {
  const bin = join(out, "loralab_wasm_bg.wasm");
  const js = join(out, "loralab_wasm.js");
  if (!existsSync(bin) || !existsSync(js)) return true;
  return statSync(bin).mtimeMs < Math.max(...SOURCES.map((p) => newest(join(root, p))));
}

/** Build the module when stale (or always, with force); throws when the build fails. */
export function buildWasm(force = false): boolean {
  if (!force && !wasmStale()) return false;
  const t0 = performance.now();
  const p = Bun.spawnSync(["bash", join(root, "scripts/build-wasm.sh")], {
    cwd: root,
    stdout: "inherit",
    stderr: "inherit",
  });
  if (p.exitCode !== 0)
    throw new Error(
      `scripts/build-wasm.sh failed (exit ${p.exitCode}) (hint: run it by hand to see why; the README lists what it needs)`,
    );
  console.error(`build:wasm: built the WebAssembly maths in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return true;
}

if (import.meta.main) {
  try {
    if (!buildWasm(process.argv.includes("--force"))) console.error("build:wasm: packages/report/wasm is up to date");
  } catch (e) {
    console.error(`build:wasm: ${(e as Error).message}`);
    process.exit(1);
  }
}
