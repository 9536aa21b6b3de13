// The analysis maths as WebAssembly (crates/wasm over crates/maths: the code the engine and the
// addon run), for the interactive report. Built by scripts/build-wasm.sh whenever the Rust is
// newer than the module; loaded in Bun (the tests compare it with the addon) and inlined into
// report.html, so the page needs no server.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

const root = new URL("../../..", import.meta.url).pathname;
const dir = join(root, "packages/report/wasm");
const JS = join(dir, "loralab_wasm.js");
const BIN = join(dir, "loralab_wasm_bg.wasm");

/** The maths the module exports (names as in crates/wasm/src/lib.rs). */
export interface WasmMaths {
  passAtK(n: number, c: number, k: number): number;
  paretoFrontier(x: Float64Array, y: Float64Array): Uint32Array;
  rankAt(sigma: Float64Array, threshold: number, totalSq?: number): number | undefined;
  explainedVariance(sigma: Float64Array, totalSq?: number): Float64Array;
  effectiveRank(sigma: Float64Array): number;
  stableRank(sigma: Float64Array): number;
  singularValues(a: Float64Array, m: number, n: number): Float64Array;
}

function newest(path: string): number {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  return Math.max(0, ...readdirSync(path).map((n) => newest(join(path, n))));
}

/** Build the module when it is missing or older than its sources; returns its two files. */
export function ensureWasm(): { js: string; wasm: string } {
  const sources = Math.max(...["crates/maths/src", "crates/maths/Cargo.toml", "crates/wasm/src", "crates/wasm/Cargo.toml", "scripts/build-wasm.sh"].map((p) => newest(join(root, p))));
  if (!existsSync(BIN) || !existsSync(JS) || statSync(BIN).mtimeMs < sources) {
    const t0 = performance.now();
    const p = Bun.spawnSync(["bash", join(root, "scripts/build-wasm.sh")], { cwd: root, stdout: "inherit", stderr: "inherit" });
    if (p.exitCode !== 0) throw new Error(`scripts/build-wasm.sh failed (exit ${p.exitCode}): the report's WebAssembly module could not be built (hint: run it by hand to see why)`);
    console.error(`report: built the WebAssembly maths in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return { js: JS, wasm: BIN };
}

let loaded: Promise<WasmMaths> | undefined;

/** The module, instantiated in this process. */
export function loadWasm(): Promise<WasmMaths> {
  loaded ??= (async () => {
    const { js, wasm } = ensureWasm();
    const mod = await import(js);
    mod.initSync({ module: readFileSync(wasm) });
    return mod as WasmMaths;
  })();
  return loaded;
}

/** The module as the body of an inline `<script type="module">`: wasm-bindgen's glue, the
 *  bytes in base64, instantiated synchronously; the page's own code follows it. */
export function wasmInline(): string {
  const { js, wasm } = ensureWasm();
  const glue = readFileSync(js, "utf8").replace(/^\/\/# sourceMappingURL=.*$/m, "");
  const b64 = readFileSync(wasm).toString("base64");
  return `${glue}\ninitSync({ module: Uint8Array.from(atob("${b64}"), (c) => c.charCodeAt(0)) });\n`;
}
