// @loralab/report: plots as standalone SVG (no dependencies, open in any browser).
export { lineChart, panels, colorRamp, type Series, type Chart } from "./svg.ts";
export { loadWasm, WASM_HINT, wasmDir, wasmFiles, wasmInline, type WasmMaths } from "./wasm.ts";
export {
  groupColors,
  interactiveHtml,
  INTERACTIVE_CSS,
  PALETTE,
  type InteractiveData,
  type InteractivePoint,
  type InteractiveSpectrum,
  type RunFields,
} from "./interactive.ts";
