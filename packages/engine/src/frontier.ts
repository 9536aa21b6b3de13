// The learning–forgetting frontier and the gap between two of them: the maths the study's
// findings (packages/study) and the server's live sweep page share.
import { maths } from "./engine.ts";

/** Upper frontier of (x, y) points — those no other point beats in both — by x ascending: the
 *  maths the report shares with its WebAssembly build (loralab-maths pareto_frontier). */
export function frontier<P extends { x: number; y: number }>(ps: P[]): P[] {
  return maths
    .paretoFrontier(
      ps.map((p) => p.x),
      ps.map((p) => p.y),
    )
    .map((i) => ps[i]!);
}

/** The frontier as a function: linear between its points, up to its last x; below its first x
 *  it is the first point's y (a point that learned more while retaining as much is achievable). */
export function interpolate(f: { x: number; y: number }[], x: number): number {
  if (!f.length || x > f[f.length - 1]!.x + 1e-12) return NaN;
  if (x <= f[0]!.x) return f[0]!.y;
  for (let i = 1; i < f.length; i++)
    if (x <= f[i]!.x) {
      const a = f[i - 1]!;
      const b = f[i]!;
      return b.x === a.x ? Math.max(a.y, b.y) : a.y + ((b.y - a.y) * (x - a.x)) / (b.x - a.x);
    }
  return f[f.length - 1]!.y;
}

/** Mean vertical gap between two interpolated frontiers, a − b, over the learning range both
 *  reach (from `start` to the smaller of their largest x): the area between them divided by the
 *  range. NaN when the common range is shorter than `minRange`. */
export function frontierGap(
  a: { x: number; y: number }[],
  b: { x: number; y: number }[],
  start: number,
  minRange: number,
): { mean: number; area: number; range: [number, number] } {
  const end = Math.min(a.at(-1)?.x ?? -Infinity, b.at(-1)?.x ?? -Infinity);
  if (!(end - start >= minRange)) return { mean: NaN, area: NaN, range: [start, end] };
  // piecewise linear on the union of breakpoints: the trapezoid rule there is exact
  const xs = [...new Set([start, end, ...a.map((p) => p.x), ...b.map((p) => p.x)])]
    .filter((x) => x >= start && x <= end)
    .sort((p, q) => p - q);
  let area = 0;
  for (let i = 1; i < xs.length; i++) {
    const g0 = interpolate(a, xs[i - 1]!) - interpolate(b, xs[i - 1]!);
    const g1 = interpolate(a, xs[i]!) - interpolate(b, xs[i]!);
    area += ((g0 + g1) / 2) * (xs[i]! - xs[i - 1]!);
  }
  return { mean: area / (end - start), area, range: [start, end] };
}
