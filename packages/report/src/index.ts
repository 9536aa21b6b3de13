// @loralab/report: plots as standalone SVG (no dependencies, open in any browser).
export { lineChart, panels, colorRamp, type Series, type Chart } from "./svg.ts";
