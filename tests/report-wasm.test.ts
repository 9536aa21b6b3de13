// The browser build of the analysis maths (crates/wasm over crates/maths) and the addon's, each
// held to values that come from elsewhere: numpy (tests/reference/maths_ref.py), closed forms
// and hand-read cases; and in headless Chromium the report's threshold slider, group toggles and
// hover show the ranks and frontier worked out by hand below.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { maths } from "@loralab/engine";
import { loadWasm, type WasmMaths } from "@loralab/report";
import { BASE_FIELDS, interactiveData, writeReport, type Point } from "@loralab/study";
import { analyze, train } from "loralab";
import { launchChromium, root, tempDir, tinyConfig } from "./helpers.ts";

let wasm: WasmMaths;
let browser: Browser | undefined;

beforeAll(async () => {
  wasm = await loadWasm(); // built by the test command first (bun run build:wasm)
}, 900_000);

afterAll(async () => {
  await browser?.close();
});

/** numpy's values (tests/reference/maths_ref.py writes them; its docstring says how to rerun it). */
const ref = JSON.parse(readFileSync(join(root, "tests/reference/maths_ref.json"), "utf8")) as {
  pass_at_k: [number, number, number, number][];
  matrix: { seed: number; m: number; n: number; first: number[]; singular_values: number[] };
  spectrum: {
    sigma: number[];
    total_sq: number;
    explained_variance: number[];
    rank_at: Record<string, number>;
    effective_rank: number;
    stable_rank: number;
  };
};

/** One build of crates/maths, called with plain arrays. */
interface Maths {
  passAtK(n: number, c: number, k: number): number;
  paretoFrontier(x: number[], y: number[]): number[];
  rankAt(sigma: number[], threshold: number, totalSq: number): number | undefined;
  explainedVariance(sigma: number[], totalSq: number): number[];
  effectiveRank(sigma: number[]): number;
  stableRank(sigma: number[]): number;
  singularValues(a: number[], m: number, n: number): number[];
}

/** Both builds: each case below is asserted for the WebAssembly module and for the addon. */
function builds(): [string, Maths][] {
  const f64 = (a: number[]) => Float64Array.from(a);
  return [
    [
      "wasm",
      {
        passAtK: (n, c, k) => wasm.passAtK(n, c, k),
        paretoFrontier: (x, y) => [...wasm.paretoFrontier(f64(x), f64(y))],
        rankAt: (s, t, total) => wasm.rankAt(f64(s), t, total),
        explainedVariance: (s, total) => [...wasm.explainedVariance(f64(s), total)],
        effectiveRank: (s) => wasm.effectiveRank(f64(s)),
        stableRank: (s) => wasm.stableRank(f64(s)),
        singularValues: (a, m, n) => [...wasm.singularValues(f64(a), m, n)],
      },
    ],
    [
      "addon",
      {
        passAtK: (n, c, k) => maths.passAtK(n, c, k),
        paretoFrontier: (x, y) => maths.paretoFrontier(x, y),
        rankAt: (s, t, total) => maths.rankAt(s, t, total) ?? undefined,
        explainedVariance: (s, total) => maths.explainedVariance(s, total),
        effectiveRank: (s) => maths.effectiveRank(s),
        stableRank: (s) => maths.stableRank(s),
        singularValues: (a, m, n) => maths.singularValues(a, m, n),
      },
    ],
  ];
}

/** A seeded uniform stream (xorshift), so the random cases are the same every run
 *  (maths_ref.py repeats it bit for bit to give numpy the same matrix). */
function uniform(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

// ------------------------------------------------------------------ the definitions, written out
// Slow, obvious references in the test's own code: no line is shared with crates/maths.

/** The learning–forgetting frontier by its definition, O(n²): the finite points that no other
 *  point matches in both coordinates and beats in one (higher is better for both); of equal
 *  points the first; ordered by learning ascending. */
function frontierByDefinition(x: number[], y: number[]): number[] {
  const idx = x.map((_, i) => i).filter((i) => Number.isFinite(x[i]) && Number.isFinite(y[i]));
  const beaten = (i: number) =>
    idx.some((j) => x[j]! >= x[i]! && y[j]! >= y[i]! && (x[j]! > x[i]! || y[j]! > y[i]! || j < i));
  return idx.filter((i) => !beaten(i)).sort((a, b) => x[a]! - x[b]!);
}

/** Smallest k whose first k σ² reach `t` of `total` (relative tolerance 1e-12, so 0.9 of a sum
 *  that is exactly 0.9 counts); undefined when the given values never do. */
function rankAtByDefinition(sigma: number[], t: number, total: number): number | undefined {
  let acc = 0;
  for (const [i, s] of sigma.entries()) {
    acc += s * s;
    if (acc >= t * total * (1 - 1e-12)) return i + 1;
  }
  return undefined;
}

/** exp of the Shannon entropy of σ/Σσ (Roy & Vetterli 2007). */
function effectiveRankByDefinition(sigma: number[]): number {
  const sum = sigma.reduce((a, s) => a + s, 0);
  return Math.exp(-sigma.filter((s) => s > 0).reduce((a, s) => a + (s / sum) * Math.log(s / sum), 0));
}

/** Σσ² / σ₁² (Rudelson & Vershynin's stable rank). */
function stableRankByDefinition(sigma: number[]): number {
  return sigma.reduce((a, s) => a + s * s, 0) / sigma[0]! ** 2;
}

// ------------------------------------------------------------------ pass@k, frontier

test("pass@k and the Pareto frontier: both builds give the closed forms, numpy's values and the hand-read frontier", () => {
  for (const [build, m] of builds()) {
    // closed forms, 1 − C(n−c, k)/C(n, k): pass@1 = c/n; 1 − C(7,2)/C(10,2) = 1 − 21/45 = 8/15;
    // 1 − C(3,3)/C(5,3) = 1 − 1/10; 1 − C(3,2)/C(4,2) = 1 − 3/6; no correct sample: 0; n − c < k: 1
    expect([build, m.passAtK(10, 3, 1)]).toEqual([build, expect.closeTo(0.3, 14)]);
    expect([build, m.passAtK(10, 3, 2)]).toEqual([build, expect.closeTo(8 / 15, 14)]);
    expect([build, m.passAtK(5, 2, 3)]).toEqual([build, expect.closeTo(0.9, 14)]);
    expect([build, m.passAtK(4, 1, 2)]).toEqual([build, expect.closeTo(0.5, 14)]);
    expect([build, m.passAtK(50, 0, 10), m.passAtK(5, 4, 2)]).toEqual([build, 0, 1]);
    // Chen et al.'s numpy estimator over a grid of n, c, k (maths_ref.py): the cases that differ
    const off = ref.pass_at_k.filter(([n, c, k, want]) => !(Math.abs(m.passAtK(n, c, k) - want) <= 1e-12));
    expect([build, ref.pass_at_k.length, off]).toEqual([build, 145, []]);
    expect(() => m.passAtK(5, 1, 6)).toThrow(/needs at least 6 samples/);

    // read off by hand (higher is better on both axes): #2 has #1's learning and less
    // forgetting score, #3 #1's score and less learning, #5 #4's score and less learning;
    // #6 repeats #4 (the first is kept), #8 is below #0, #7 is NaN (ignored)
    const x = [0.2, 0.4, 0.4, 0.3, 0.6, 0.5, 0.6, Number.NaN, 0.1];
    const y = [0.8, 0.7, 0.6, 0.7, 0.3, 0.3, 0.3, 0.9, 0.8];
    expect([build, m.paretoFrontier(x, y)]).toEqual([build, [0, 1, 4]]);
    expect([build, m.paretoFrontier([], [])]).toEqual([build, []]);
    // seeded random clouds with ties on purpose, against the O(n²) definition
    const r = uniform(7);
    for (let trial = 0; trial < 20; trial++) {
      const n = 1 + Math.floor(r() * 60);
      const xs = Array.from({ length: n }, () => Math.round(r() * 20) / 20);
      const ys = Array.from({ length: n }, () => Math.round(r() * 20) / 20);
      expect([build, trial, m.paretoFrontier(xs, ys)]).toEqual([build, trial, frontierByDefinition(xs, ys)]);
    }
  }
});

// ------------------------------------------------------------------ spectra

/** The f32 tensors of a safetensors file, by name (header: u64 length, JSON; then the data). */
function readF32Tensors(file: string): Map<string, { shape: number[]; data: number[] }> {
  const buf = readFileSync(file);
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString("utf8")) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out = new Map<string, { shape: number[]; data: number[] }>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    expect([name, t.dtype]).toEqual([name, "F32"]);
    const [a, b] = t.data_offsets;
    const bytes = buf.subarray(8 + len + a, 8 + len + b);
    const f = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    out.set(name, { shape: t.shape, data: [...f] });
  }
  return out;
}

/** Row-major p×q times q×s. */
function matmul(a: number[], b: number[], p: number, q: number, s: number): number[] {
  return Array.from({ length: p * s }, (_, ij) => {
    const [i, j] = [Math.floor(ij / s), ij % s];
    let dot = 0;
    for (let k = 0; k < q; k++) dot += a[i * q + k]! * b[k * s + j]!;
    return dot;
  });
}

test("spectral statistics: both builds give numpy's values, and a real LoRA run's ΔW spectrum is its factors'", async () => {
  // numpy on a spectrum with a zero tail (maths_ref.py)
  const sp = ref.spectrum;
  for (const [build, m] of builds()) {
    for (const [t, k] of Object.entries(sp.rank_at))
      expect([build, t, m.rankAt(sp.sigma, Number(t), sp.total_sq)]).toEqual([build, t, k]);
    // the stored top 2 explain 13/14.3125 = 0.908 < 0.95: never reached; a zero matrix has rank 0
    expect([build, m.rankAt(sp.sigma.slice(0, 2), 0.95, sp.total_sq), m.rankAt([0], 0.9, 0)]).toEqual([
      build,
      undefined,
      0,
    ]);
    expect([build, m.explainedVariance(sp.sigma, sp.total_sq)]).toEqual([
      build,
      sp.explained_variance.map((v) => expect.closeTo(v, 14)),
    ]);
    expect([build, m.effectiveRank(sp.sigma)]).toEqual([build, expect.closeTo(sp.effective_rank, 13)]);
    // stable rank, a closed form too: 14.3125 / 3² = 1.59027…
    expect([build, m.stableRank(sp.sigma)]).toEqual([build, expect.closeTo(sp.stable_rank, 14)]);
    expect([build, m.stableRank(sp.sigma)]).toEqual([build, expect.closeTo(14.3125 / 9, 14)]);
    expect([build, m.effectiveRank([1, 1, 1, 1]), m.effectiveRank([0, 0])]).toEqual([build, expect.closeTo(4, 13), 0]);
  }

  // a real run: tiny Llama (4 layers), LoRA r = 4 on all seven projections, alpha = 2r
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
  const modules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"].concat(
    ["gate_proj", "up_proj", "down_proj"].map((p) => `mlp.${p}`),
  );
  const names = [0, 1, 2, 3].flatMap((l) => modules.map((p) => `model.layers.${l}.${p}.weight`));
  expect(a.matrices.map((m) => m.name).sort()).toEqual(names.sort()); // 4 layers × 7 = 28
  const cfg = JSON.parse(readFileSync(join(run.output, "adapter_config.json"), "utf8"));
  expect([cfg.r, cfg.lora_alpha]).toEqual([4, 8]);
  const scale = cfg.lora_alpha / cfg.r; // 2
  const factors = readF32Tensors(join(run.output, "adapter_model.safetensors"));
  for (const m of a.matrices) {
    const s = m.delta.singular_values;
    // ΔW = scale·B·A has rank ≤ r = 4: every value past the 4th is 0
    expect([m.name, s.slice(4).filter((v) => v > 1e-9 * s[0]!)]).toEqual([m.name, []]);
    // and its nonzero σ² are the eigenvalues of G = scale²·(BᵀB)(AAᵀ) (4×4; ΔWᵀΔW = scale²·AᵀBᵀBA,
    // trace is cyclic), so Σσ^(2j) = tr(Gʲ) for j = 1..4 — four power sums fix four values
    const key = `base_model.model.${m.name.replace(/\.weight$/, "")}`;
    const A = factors.get(`${key}.lora_A.weight`)!; // (r, in)
    const B = factors.get(`${key}.lora_B.weight`)!; // (out, r)
    const [r, nIn] = A.shape as [number, number];
    const nOut = B.shape[0]!;
    const transpose = (x: number[], p: number, q: number) =>
      Array.from({ length: p * q }, (_, i) => x[(i % p) * q + Math.floor(i / p)]!);
    const BtB = matmul(transpose(B.data, nOut, r), B.data, r, nOut, r);
    const AAt = matmul(A.data, transpose(A.data, r, nIn), r, nIn, r);
    const G = matmul(BtB, AAt, r, r, r).map((v) => v * scale ** 2);
    let Gj = G;
    for (let j = 1; j <= 4; j++) {
      const trace = Array.from({ length: r }, (_, i) => Gj[i * r + i]!).reduce((x, y) => x + y, 0);
      const powerSum = s.reduce((x, v) => x + v ** (2 * j), 0);
      expect([m.name, j, Math.abs(powerSum - trace) / trace]).toEqual([m.name, j, expect.closeTo(0, 9)]);
      Gj = matmul(Gj, G, r, r, r);
    }
    const total = m.delta.frobenius ** 2;
    expect([m.name, s.reduce((x, v) => x + v * v, 0) / total]).toEqual([m.name, expect.closeTo(1, 12)]);
    // the statistics of that spectrum: the core's and both builds', against their definitions
    const want = {
      rank_at: Object.fromEntries(
        ["0.5", "0.9", "0.99"].map((t) => [t, rankAtByDefinition(s, Number(t), total)]),
      ) as Record<string, number>,
      effective_rank: effectiveRankByDefinition(s),
      stable_rank: stableRankByDefinition(s),
    };
    expect([m.name, m.delta.rank_at]).toEqual([m.name, want.rank_at]);
    expect([m.name, m.delta.effective_rank, m.delta.stable_rank]).toEqual([
      m.name,
      expect.closeTo(want.effective_rank, 12),
      expect.closeTo(want.stable_rank, 12),
    ]);
    for (const [build, maths] of builds()) {
      for (const t of ["0.5", "0.9", "0.99"])
        expect([build, m.name, t, maths.rankAt(s, Number(t), total)]).toEqual([build, m.name, t, want.rank_at[t]]);
      expect([build, m.name, maths.effectiveRank(s), maths.stableRank(s)]).toEqual([
        build,
        m.name,
        expect.closeTo(want.effective_rank, 12),
        expect.closeTo(want.stable_rank, 12),
      ]);
      const cumulative = s.map((_, k) => expect.closeTo(s.slice(0, k + 1).reduce((x, v) => x + v * v, 0) / total, 12));
      expect([build, m.name, maths.explainedVariance(s, total)]).toEqual([build, m.name, cumulative]);
    }
  }

  // the small SVD: numpy (LAPACK) on the same seeded 12×7 matrix, and two closed forms
  const r = uniform(ref.matrix.seed);
  const A = Array.from({ length: ref.matrix.m * ref.matrix.n }, () => r() - 0.5);
  expect(A.slice(0, 3)).toEqual(ref.matrix.first); // the same stream as maths_ref.py's
  const perm = [2, 0, 0, 0, 0, -3, 0, 0, 0, 0, 1, 0]; // 4×3: a signed permutation of diag(2, 3, 1)
  const [u, v] = [
    [2, 3, 6],
    [1, 4, 8],
  ]; // u·vᵀ: rank 1, σ₁ = |u|·|v| = 7·9
  const outer = u.flatMap((ui) => v.map((vj) => ui * vj));
  for (const [build, m] of builds()) {
    expect([build, m.singularValues(A, ref.matrix.m, ref.matrix.n)]).toEqual([
      build,
      ref.matrix.singular_values.map((x) => expect.closeTo(x, 13)),
    ]);
    expect([build, m.singularValues(perm, 4, 3)]).toEqual([build, [3, 2, 1]]);
    expect([build, m.singularValues(outer, 3, 3)]).toEqual([
      build,
      [expect.closeTo(63, 12), expect.closeTo(0, 12), expect.closeTo(0, 12)],
    ]);
    expect(() => m.singularValues(A, 5, 5)).toThrow(/84 numbers for a 5×5 matrix/);
  }
});

// ------------------------------------------------------------------ the report in Chromium

/** Stored ΔW spectra with ranks read off by hand. Full FT (64 values, v × n means n copies of v):
 *    q_proj L0: 1 × 64          Σσ² = 64   0.5 → 32 (32 = 32, the tolerance);   0.9 → 58 (57.6)
 *    q_proj L1: 2 × 16, 1 × 48  Σσ² = 112  0.5 → 14 (4·14 = 56);  0.9 → 53 (64 + 37 ≥ 100.8)
 *    v_proj L0: 4 × 8, 1 × 56   Σσ² = 184  0.5 → 6 (16·6 ≥ 92);   0.9 → 46 (128 + 38 ≥ 165.6)
 *    v_proj L1: 2 × 4, 1 × 60   Σσ² = 76   0.5 → 26 (16 + 22 ≥ 38); 0.9 → 57 (16 + 53 ≥ 68.4)
 *  LoRA r=4 (4 values):
 *    q_proj L0: 3, 2, 1, 1      Σσ² = 15   0.5 → 1 (9 ≥ 7.5);   0.9 → 3 (14 ≥ 13.5)
 *    q_proj L1: 1, 1, 1, 1      Σσ² = 4    0.5 → 2 (2 = 2);     0.9 → 4 (4 ≥ 3.6)
 *    v_proj L0: 2, 2, 2, 1      Σσ² = 13   0.5 → 2 (8 ≥ 6.5);   0.9 → 3 (12 ≥ 11.7)
 *    v_proj L1: 4, 2, 1, 1      Σσ² = 22   0.5 → 1 (16 ≥ 11);   0.9 → 2 (20 ≥ 19.8)
 *  Both points of a group share them, so a cell is the mean over its layers (and modules). */
const SPECTRA: Record<string, number[]> = {
  "full q_proj 0": Array(64).fill(1),
  "full q_proj 1": [...Array(16).fill(2), ...Array(48).fill(1)],
  "full v_proj 0": [...Array(8).fill(4), ...Array(56).fill(1)],
  "full v_proj 1": [...Array(4).fill(2), ...Array(60).fill(1)],
  "lora q_proj 0": [3, 2, 1, 1],
  "lora q_proj 1": [1, 1, 1, 1],
  "lora v_proj 0": [2, 2, 2, 1],
  "lora v_proj 1": [4, 2, 1, 1],
};
const RANK90: Record<string, number> = {
  "full q_proj 0": 58,
  "full q_proj 1": 53,
  "full v_proj 0": 46,
  "full v_proj 1": 57,
  "lora q_proj 0": 3,
  "lora q_proj 1": 4,
  "lora v_proj 0": 3,
  "lora v_proj 1": 2,
};
/** The rank table the page must show: (58 + 53)/2, (46 + 57)/2, (58 + 53 + 46 + 57)/4, … */
const TABLE: Record<string, Record<string, Record<string, string>>> = {
  "0.9": {
    "full FT": { q_proj: "55.5", v_proj: "51.5", all: "53.5" },
    "LoRA r=4": { q_proj: "3.5", v_proj: "2.5", all: "3.0" },
  },
  "0.5": {
    "full FT": { q_proj: "23.0", v_proj: "16.0", all: "19.5" },
    "LoRA r=4": { q_proj: "1.5", v_proj: "1.5", all: "1.5" },
  },
};

/** Points with stored ΔW spectra (SPECTRA), learning and forgetting chosen so that the frontier
 *  can be read off: lora-5e-4 (0.52, 0.5) beats full-1e-5 (0.5, 0.3) on both. */
function syntheticPoints(): { base: Point; points: Point[] } {
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
        const sigma = SPECTRA[`${method} ${module} ${layer}`]!;
        const totalSq = sigma.reduce((a, s) => a + s * s, 0);
        return { module, layer, rank: RANK90[`${method} ${module} ${layer}`]!, maxRank: 64, sigma, totalSq };
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
  const base: Point = { ...BASE_FIELDS, rank90By: [], learning: metric(0.1), forgetting: metric(0.6), perplexity: 9 };
  return {
    base,
    points: [
      point("full-1e-5", "full", null, 1e-5, 0.5, 0.3),
      point("full-5e-5", "full", null, 5e-5, 0.6, 0.2),
      point("lora-1e-4", "lora", 4, 1e-4, 0.4, 0.55),
      point("lora-5e-4", "lora", 4, 5e-4, 0.52, 0.5),
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
  expect(data.points.map((p) => p.key)).toEqual(["base", "full-1e-5", "full-5e-5", "lora-1e-4", "lora-5e-4"]);
  // one palette: the groups in order of appearance get Tableau 10's first two colours, in the
  // interactive data and in the static Pareto figure alike
  expect(data.colors).toEqual({ "full FT": "#1f77b4", "LoRA r=4": "#d62728" });
  const pareto = readFileSync(join(dir, "pareto.svg"), "utf8");
  expect([pareto.includes('fill="#1f77b4"'), pareto.includes('fill="#d62728"')]).toEqual([true, true]);
  // percent on the static axes, as in the table, and no field name in the LR figure's axis title
  expect(pareto).toContain("learning: target-task accuracy (%)");
  expect(pareto).toContain("source retention: source cloze acc_norm (%, higher = forgot less)");
  expect(readFileSync(join(dir, "lr.svg"), "utf8")).toContain("Y-axis titled 'learning: target-task accuracy (%)' for");

  browser = await launchChromium();
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`file://${html}`);
  await page.waitForSelector("body[data-interactive=ready]", { timeout: 15_000 });
  const table = async () => {
    const cells = await page.$$eval("#ranks td[data-group]", (tds) =>
      tds.map(
        (td) => [(td as HTMLElement).dataset.group!, (td as HTMLElement).dataset.module!, td.textContent!] as const,
      ),
    );
    const out: Record<string, Record<string, string>> = {};
    for (const [g, m, text] of cells) out[g] = { ...out[g], [m]: text };
    return [cells.length, out] as const;
  };

  expect(await table()).toEqual([6, TABLE["0.9"]!]);
  // move the slider with the keyboard: Home → its minimum, 0.5
  await page.focus("#threshold");
  await page.keyboard.press("Home");
  expect(await page.textContent("#threshold-value")).toBe("50 %");
  expect(await table()).toEqual([6, TABLE["0.5"]!]);

  // the frontier, read off data.points = [base (0.1, 0.6), full-1e-5 (0.5, 0.3), full-5e-5 (0.6, 0.2),
  // lora-1e-4 (0.4, 0.55), lora-5e-4 (0.52, 0.5)]: everything but full-1e-5 (beaten by lora-5e-4),
  // by learning ascending; with LoRA toggled off, full-1e-5 is back on it
  const frontier = async () => (await page.getAttribute("#frontier", "data-indices"))!.split(",").map(Number);
  expect(await frontier()).toEqual([0, 3, 4, 2]);
  expect(await page.textContent("#frontier")).toBe(
    "base → lora-1e-4 @ 2 epochs → lora-5e-4 @ 2 epochs → full-5e-5 @ 2 epochs",
  );
  // the page draws each group in its colour
  const fills = await page.$$eval("#pareto .point[data-group]", (ms) =>
    ms.map((m) => [(m as SVGElement).dataset.group, m.getAttribute("fill")]),
  );
  expect(new Set(fills.filter(([g]) => g !== "base").map(([g, f]) => `${g} ${f}`))).toEqual(
    new Set(["full FT #1f77b4", "LoRA r=4 #d62728"]),
  );
  await page.click('#toggles input[data-group="LoRA r=4"]');
  expect(await frontier()).toEqual([0, 1, 2]);
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
