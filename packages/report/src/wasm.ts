// The analysis maths as WebAssembly (crates/wasm over crates/maths: the code the engine and the
// addon run), for the interactive report. Built by an explicit step, `bun run build:wasm`
// (scripts/build-wasm.ts; the test command runs it), never from here: a report only loads the
// module and inlines it into report.html, so the page needs no server. Without the module the
// report keeps its static figures and says, once, how to enable the interactive part.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const root = new URL("../../..", import.meta.url).pathname;
/** Where the module lives (`LORALAB_WASM_DIR` overrides, e.g. for a packed library). */
export function wasmDir(): string {
  return process.env.LORALAB_WASM_DIR || join(root, "packages/report/wasm");
}

/** The one line a report prints when the module is missing. */
export const WASM_HINT =
  "report: the interactive section is off: the WebAssembly maths is not built (hint: `bun run build:wasm`; it needs Rust's wasm32 target, see the README)";

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

/** The module's two files, or null when it has not been built. */
export function wasmFiles(): { js: string; wasm: string } | null {
  const js = join(wasmDir(), "loralab_wasm.js");
  const wasm = join(wasmDir(), "loralab_wasm_bg.wasm");
  return existsSync(js) && existsSync(wasm) ? { js, wasm } : null;
}

let loaded: Promise<WasmMaths> | undefined;

/** The module, instantiated in this process; throws with the hint when it is not built. */
export function loadWasm(): Promise<WasmMaths> {
  loaded ??= (async () => {
    const f = wasmFiles();
    if (!f) throw new Error(WASM_HINT);
    const mod = await import(f.js);
    mod.initSync({ module: readFileSync(f.wasm) });
    return mod as WasmMaths;
  })();
  return loaded;
}

let hinted = false;

/** The module as the body of an inline `<script type="module">`: wasm-bindgen's glue, the
 *  bytes in base64, instantiated synchronously. Null (and the hint on stderr, once per process)
 *  when the module is not built. */
export function wasmInline(): string | null {
  const f = wasmFiles();
  if (!f) {
    if (!hinted) console.error(WASM_HINT);
    hinted = true;
    return null;
  }
  const glue = readFileSync(f.js, "utf8").replace(/^\/\/# sourceMappingURL=.*$/m, "");
  const b64 = readFileSync(f.wasm).toString("base64");
  return `${glue}\ninitSync({ module: Uint8Array.from(atob("${b64}"), (c) => c.charCodeAt(0)) });\n`;
}
