// The browser build of the analysis maths (crates/wasm over crates/maths): the same module the
// report inlines gives the core's numbers in Bun, and in headless Chromium the report's
// threshold slider, group toggles and hover work on it.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import * as native from "@loralab/native";
import { loadWasm, type WasmMaths } from "@loralab/report";
import { interactiveData, writeReport, type Point } from "@loralab/study";
import { analyze, train } from "loralab";
import { launchChromium, tempDir, tinyConfig } from "./helpers.ts";

let wasm: WasmMaths;
let browser: Browser | undefined;

beforeAll(async () => {
  wasm = await loadWasm(); // built by the test command first (bun run build:wasm)
}, 900_000);

afterAll(async () => {
  await browser?.close();
});

/** A seeded uniform stream (xorshift), so the random cases are the same every run. */
function uniform(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

test("pass@k and the Pareto frontier: the wasm module equals the addon (one Rust source)", () => {
  for (const n of [1, 5, 10, 50, 200])
    for (let c = 0; c <= n; c += Math.max(1, n >> 3))
      for (const k of [1, 2, 5, 10, 100].filter((k) => k <= n))
        expect(wasm.passAtK(n, c, k)).toBe(native.passAtK(n, c, k));
  expect(() => wasm.passAtK(5, 1, 6)).toThrow(/needs at least 6 samples/);
  const r = uniform(7);
  for (let trial = 0; trial < 20; trial++) {
    const n = 1 + Math.floor(r() * 60);
    const x = Array.from({ length: n }, () => Math.round(r() * 20) / 20); // ties on purpose
    const y = Array.from({ length: n }, () => Math.round(r() * 20) / 20);
    expect([...wasm.paretoFrontier(Float64Array.from(x), Float64Array.from(y))]).toEqual(native.paretoFrontier(x, y));
  }
});

test("spectral statistics of a real LoRA run: the wasm module reproduces the core's analysis", async () => {
  const out = tempDir("wasm-spectrum");
  const run = await train(
    tinyConfig(out, {
      run_id: "w",
      method: { kind: "lora", rank: 4 },
      optim: { lr: 1e-2 },
      train: { steps: 4, checkpoint_every: 0 },
    }),
  );
  const a = await analyze(
    { base: join(run.run_dir, "base"), adapter: run.output },
    { thresholds: [0.5, 0.9, 0.99], keep: 100_000 },
  );
  expect(a.matrices.length).toBeGreaterThan(0);
  for (const m of a.matrices) {
    const s = Float64Array.from(m.delta.singular_values);
    const total = m.delta.frobenius ** 2;
    for (const t of ["0.5", "0.9", "0.99"]) expect(wasm.rankAt(s, Number(t), total)).toBe(m.delta.rank_at[t]!);
    expect(wasm.effectiveRank(s)).toBeCloseTo(m.delta.effective_rank, 12);
    expect(wasm.stableRank(s)).toBeCloseTo(m.delta.stable_rank, 12);
    const ev = wasm.explainedVariance(s, total);
    expect(ev[ev.length - 1]!).toBeCloseTo(1, 12);
    expect([...ev]).toEqual(native.explainedVariance([...s], total));
  }
  // and the small SVD: equal to the addon's (same code), which a Rust test holds to faer's
  const r = uniform(3);
  const A = Float64Array.from({ length: 12 * 7 }, () => r() - 0.5);
  expect([...wasm.singularValues(A, 12, 7)]).toEqual(native.smallSingularValues([...A], 12, 7));
  expect(() => wasm.singularValues(A, 5, 5)).toThrow(/84 numbers for a 5×5 matrix/);
});

/** Points with stored ΔW spectra: full FT with a flat spectrum, LoRA with a rank-4 one. */
function syntheticPoints(): { base: Point; points: Point[] } {
  const r = uniform(11);
  const spectrum = (kind: string, layer: number) => {
    const n = kind === "full" ? 64 : 4;
    const sigma = Array.from(
      { length: n },
      (_, i) => (kind === "full" ? 1 / (1 + 0.05 * i) : 2 / (1 + i)) * (1 + 0.1 * r()) + 0.001 * layer,
    ).sort((a, b) => b - a);
    return sigma;
  };
  const metric = (v: number) => ({ value: v, stderr: 0.01 });
  const point = (
    key: string,
    method: string,
    rank: number | null,
    lr: number,
    learning: number,
    forgetting: number,
  ): Point => {
    const rank90By = ["q_proj", "v_proj"].flatMap((module) =>
      [0, 1].map((layer) => {
        const sigma = spectrum(method, layer);
        const totalSq = sigma.reduce((a, s) => a + s * s, 0);
        return { module, layer, rank: native.rankAt(sigma, 0.9, totalSq)!, maxRank: 64, sigma, totalSq };
      }),
    );
    return {
      key,
      group: method === "full" ? "full FT" : `LoRA r=${rank}`,
      method,
      rank,
      targets: "all",
      lr,
      seed: 0,
      duration: 2,
      tokens: 0,
      learning: metric(learning),
      forgetting: metric(forgetting),
      perplexity: 10,
      rank90: rank90By.reduce((a, x) => a + x.rank, 0) / rank90By.length,
      rank90By,
    };
  };
  const base: Point = {
    key: "base",
    group: "base",
    method: "base",
    rank: null,
    targets: "",
    lr: 0,
    seed: 0,
    duration: 0,
    tokens: 0,
    learning: metric(0.1),
    forgetting: metric(0.6),
    perplexity: 9,
    rank90: null,
    rank90By: [],
  };
  return {
    base,
    points: [
      point("full-1e-5", "full", null, 1e-5, 0.5, 0.3),
      point("full-5e-5", "full", null, 5e-5, 0.6, 0.2),
      point("lora-1e-4", "lora", 4, 1e-4, 0.4, 0.55),
      point("lora-5e-4", "lora", 4, 5e-4, 0.45, 0.5),
    ],
  };
}

test("the report in Chromium: the slider recomputes ranks, toggles recompute the frontier, hover shows the config", async () => {
  const { base, points } = syntheticPoints();
  const dir = tempDir("wasm-report");
  const { html } = await writeReport(dir, {
    title: "wasm report",
    base,
    points,
    durationLabel: "epochs",
    notes: [],
    gates: [],
  });
  const data = interactiveData(base, points, "epochs");
  // what the page must show, computed in Bun by the addon: mean rank per (group, module) at t
  const expected = (t: number, group: string, module: string) => {
    const ms = data.spectra.filter((s) => s.group === group && (module === "all" || s.module === module));
    return (ms.reduce((a, s) => a + native.rankAt(s.sigma, t, s.totalSq)!, 0) / ms.length).toFixed(1);
  };

  browser = await launchChromium();
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`file://${html}`);
  await page.waitForSelector("body[data-interactive=ready]", { timeout: 15_000 });
  const cells = () =>
    page.$$eval("#ranks td[data-group]", (tds) =>
      tds.map(
        (td) => [(td as HTMLElement).dataset.group!, (td as HTMLElement).dataset.module!, td.textContent!] as const,
      ),
    );

  const at90 = await cells();
  expect(at90.length).toBe(2 * 3);
  for (const [g, m, text] of at90) expect(text).toBe(expected(0.9, g, m));
  // move the slider with the keyboard: Home → its minimum, 0.5
  await page.focus("#threshold");
  await page.keyboard.press("Home");
  expect(await page.textContent("#threshold-value")).toBe("50 %");
  const at50 = await cells();
  for (const [g, m, text] of at50) expect(text).toBe(expected(0.5, g, m));
  expect(at50.map((c) => c[2])).not.toEqual(at90.map((c) => c[2]));
  expect(Number(at50.find(([g, m]) => g === "full FT" && m === "all")![2])).toBeLessThan(
    Number(at90.find(([g, m]) => g === "full FT" && m === "all")![2]),
  );

  // the frontier of everything shown, then with LoRA toggled off
  const frontier = async () => (await page.getAttribute("#frontier", "data-indices"))!.split(",").map(Number);
  const xs = data.points.map((p) => p.learning),
    ys = data.points.map((p) => p.forgetting);
  expect(await frontier()).toEqual(native.paretoFrontier(xs, ys));
  await page.click('#toggles input[data-group="LoRA r=4"]');
  const shown = data.points.map((p, i) => [p, i] as const).filter(([p]) => p.group !== "LoRA r=4");
  expect(await frontier()).toEqual(
    native
      .paretoFrontier(
        shown.map(([p]) => p.learning),
        shown.map(([p]) => p.forgetting),
      )
      .map((k) => shown[k]![1]),
  );
  expect(
    await page.$$eval('#pareto .point[data-group="LoRA r=4"]', (ms) =>
      ms.every((m) => (m as SVGElement).style.display === "none"),
    ),
  ).toBe(true);

  // hover a full-FT point: its run's config
  await page.hover('#pareto .point[data-group="full FT"]');
  const tip = await page.textContent("#tooltip");
  expect(await page.isVisible("#tooltip")).toBe(true);
  expect(tip).toContain("full-1e-5");
  expect(tip).toContain("1.0e-5");
  expect(errors).toEqual([]);
}, 120_000);
