// `loralab bench train [1|2]`, `loralab bench data` and `loralab bench eval`: build and run the
// engine's benchmarks (crates/core/examples/bench_train.rs: full FT vs LoRA side by side;
// bench_data.rs: prepare throughput and memory; bench_eval.rs: inference on SmolLM2). Benchmarks live apart from tests: they measure, they do not pass or fail.
import { join } from "node:path";
import { cargoArgs, hostTriple, preferRustup } from "./cargo.ts";

const root = new URL("../../..", import.meta.url).pathname;

export const BENCH_USAGE =
  "usage: loralab bench train [1|2]   full FT vs LoRA (1: activation-dominated shape, 2: parameter-dominated; default both)\n" +
  "       loralab bench data        prepare throughput and memory on 50 and 200 MB of JSONL\n" +
  "       loralab bench eval [N] [M] SmolLM2 inference: log-likelihood tokens/s, KV cache vs re-forward (N new tokens, M at batch 8), decode latency by position\n" +
  "       loralab bench server [S]   the API under 200 req/s + 20 SSE clients for S seconds (60) while a run trains\n" +
  "       loralab bench svd [quick] [rounds=N]  singular values, f64 and f32, vs LAPACK's gesdd through numpy and scipy (1024², 2048², 4096×1024; interleaved rounds, medians), then a synthetic 32-layer model pair end to end\n" +
  "       loralab bench vs-torch [quick] [rounds=N]  training tokens/s and peak RSS against PyTorch + PEFT on bench train's two shapes, full FT and LoRA (interleaved rounds, medians)\n" +
  "       loralab bench import [--n N] the import time of `loralab` against `loralab/core`, fresh processes alternated\n" +
  "       loralab bench sweep       a 6-cell sweep on the pg-boss queue with 1, 2, 3 workers; queue work per cell; recovery after a SIGKILL";

export async function runBench(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(BENCH_USAGE);
    return 0;
  }
  const [what, ...rest] = args;
  if (what === "import") {
    const p = Bun.spawnSync([process.execPath, join(root, "scripts/bench-import.ts"), ...rest], {
      stdout: "inherit",
      stderr: "inherit",
    });
    return p.exitCode ?? 1;
  }
  if (what === "sweep") {
    // awaited, not spawnSync: the bench's workers report through pipes this process must not block
    const p = Bun.spawn([process.execPath, join(root, "scripts/bench-sweep.ts"), ...rest], {
      stdout: "inherit",
      stderr: "inherit",
    });
    return await p.exited;
  }
  if (what === "server") {
    const { benchServer } = await import("./bench-server.ts");
    return benchServer(rest);
  }
  const examples: Record<string, string> = {
    train: "bench_train",
    data: "bench_data",
    eval: "bench_eval",
    svd: "bench_svd",
    "vs-torch": "bench_train",
  };
  const example = examples[what ?? ""];
  if (!example) {
    console.error(BENCH_USAGE);
    return 2;
  }
  if (what === "eval") {
    const { fetchModel } = await import("../../../scripts/fetch.ts");
    await fetchModel("smollm2");
  }
  // the same package set and compiler as the addon and test builds, so cargo reuses their compiled candle
  preferRustup();
  const build = Bun.spawnSync(cargoArgs("build", ["--example", example]), {
    cwd: root,
    env: process.env,
    stdout: "inherit",
    stderr: "inherit",
  });
  if (build.exitCode !== 0) return build.exitCode ?? 1;
  const bin = join(root, "target", hostTriple(), "release/examples", example);
  if (what === "svd") return benchSvd(bin, rest);
  if (what === "vs-torch") return benchVsTorch(bin, rest);
  const run = Bun.spawnSync([bin, ...rest], { cwd: root, stdout: "inherit", stderr: "inherit" });
  return run.exitCode ?? 1;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** loralab (faer) against LAPACK's gesdd through numpy and scipy, in f64 (what the analysis
 *  computes in) and f32: every timing its own process, the tools' order rotated round by round,
 *  the same thread count; medians of the rounds, each round's value printed. */
function benchSvd(bin: string, args: string[]): number {
  const quick = args.includes("quick");
  const rounds = Math.max(3, Number(args.find((a) => /^rounds=\d+$/.test(a))?.slice(7) ?? 3));
  const threads = Number(process.env.LORALAB_THREADS ?? navigator.hardwareConcurrency);
  const python = process.env.LORALAB_PYTHON || "python3";
  const shapes: [number, number][] = quick
    ? [[512, 512]]
    : [
        [1024, 1024],
        [2048, 2048],
        [4096, 1024],
      ];
  // LAPACK at its best: some machines set these, which slow a current OpenBLAS; unset for the peers only
  const pyEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && k !== "OPENBLAS_CORETYPE" && k !== "OPENBLAS_L2_SIZE") pyEnv[k] = v;
  const unset = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"].filter((k) => process.env[k] !== undefined);
  const tools = ["loralab", "numpy", "scipy"] as const;
  type Tool = (typeof tools)[number];
  const once = (tool: Tool, m: number, n: number, dtype: string) => {
    const argv =
      tool === "loralab"
        ? [bin, "matrix", String(m), String(n), String(threads), dtype]
        : [python, join(root, "scripts/bench_svd.py"), tool, String(m), String(n), String(threads), dtype];
    const p = Bun.spawnSync(argv, { cwd: root, stderr: "pipe", env: tool === "loralab" ? process.env : pyEnv });
    if (p.exitCode !== 0) {
      console.error(p.stderr.toString().slice(-1500));
      return null;
    }
    return JSON.parse(p.stdout.toString()) as { seconds: number; version?: string; blas?: unknown };
  };
  const times = new Map<string, number[]>();
  let versions = "";
  for (let r = 0; r < rounds; r++)
    for (const [m, n] of shapes)
      for (const dtype of ["f64", "f32"]) {
        // A/B interleaved: each round starts with the next tool
        for (let k = 0; k < tools.length; k++) {
          const tool = tools[(k + r) % tools.length]!;
          const got = once(tool, m, n, dtype);
          if (!got) {
            console.error(
              `bench svd: ${tool} failed (hint: the peers run with $LORALAB_PYTHON, a python with numpy, scipy and threadpoolctl: \`bun run bench svd\` makes the project's cache venv for it)`,
            );
            return 1;
          }
          const key = `${m}×${n} ${dtype} ${tool}`;
          times.set(key, [...(times.get(key) ?? []), got.seconds]);
          if (tool !== "loralab" && r === 0 && m === shapes[0]![0] && dtype === "f64")
            versions += `${tool} ${got.version}${tool === "numpy" ? `, BLAS: ${JSON.stringify(got.blas)}` : ""}\n`;
        }
      }
  console.log(
    `singular values only (no vectors) of a random N(0,1) matrix, ${threads} threads each side${unset.length ? ` (unset for the peers: ${unset.join(", ")})` : ""}; ${rounds} rounds, the tools' order rotated each round, every timing its own process; medians, and peer s / loralab s (above 1: loralab is faster)`,
  );
  console.log(
    `${"shape".padEnd(11)}${"dtype".padEnd(6)}${"loralab s".padStart(10)}${"numpy s".padStart(10)}${"scipy s".padStart(10)}${"numpy/ll".padStart(10)}${"scipy/ll".padStart(10)}   rounds: loralab | numpy | scipy`,
  );
  for (const [m, n] of shapes)
    for (const dtype of ["f64", "f32"]) {
      const t = (tool: Tool) => times.get(`${m}×${n} ${dtype} ${tool}`)!;
      const [ll, np, sp] = tools.map((x) => median(t(x)));
      const each = tools
        .map((x) =>
          t(x)
            .map((v) => v.toFixed(3))
            .join(" "),
        )
        .join(" | ");
      console.log(
        `${`${m}×${n}`.padEnd(11)}${dtype.padEnd(6)}${ll!.toFixed(3).padStart(10)}${np!.toFixed(3).padStart(10)}${sp!.toFixed(3).padStart(10)}${`${(np! / ll!).toFixed(2)}×`.padStart(10)}${`${(sp! / ll!).toFixed(2)}×`.padStart(10)}   ${each}`,
      );
    }
  process.stdout.write(versions);
  const [layers, d, f] = quick ? [4, 256, 688] : [32, 1024, 2752];
  const dir = require("node:fs").mkdtempSync(join(require("node:os").tmpdir(), "loralab-bench-svd-"));
  try {
    console.log(
      `\nend to end: a synthetic ${layers}-layer pair, hidden ${d}, intermediate ${f} (the 7B shape 4096/11008 scaled by 1/4: a 7B pair is 52 GB of f32 and hours of SVD on 2 cores)`,
    );
    const p = Bun.spawnSync([bin, "pair", String(layers), String(d), String(f), dir], {
      cwd: root,
      stdout: "inherit",
      stderr: "inherit",
    });
    return p.exitCode ?? 1;
  } finally {
    require("node:fs").rmSync(dir, { recursive: true, force: true });
  }
}

/** loralab's training step against PyTorch + PEFT's on bench_train's shapes: every measurement
 *  its own process (peak RSS from the OS), the two sides' order swapped each round; medians of
 *  the rounds, each round's value printed. */
function benchVsTorch(bin: string, args: string[]): number {
  const quick = args.includes("quick");
  const rounds = Math.max(3, Number(args.find((a) => /^rounds=\d+$/.test(a))?.slice(7) ?? 3));
  const threads = Number(process.env.LORALAB_THREADS ?? navigator.hardwareConcurrency);
  const python = process.env.LORALAB_PYTHON || "python3";
  const shapes = quick ? ["2"] : ["1", "2"];
  const label: Record<string, string> = {
    "1": "A (d512, 8 layers, seq 256, micro-batch 8)",
    "2": "B (d768, 12 layers, seq 128, micro-batch 1)",
  };
  const tokens: Record<string, number> = { "1": 8 * 256, "2": 128 };
  type Got = { tps: number; rss: number };
  let versions = "";
  const run = (tool: "loralab" | "torch", shape: string, method: string): Got | null => {
    const argv =
      tool === "loralab"
        ? [bin, shape, method]
        : [python, join(root, "scripts/bench_vs_torch.py"), shape, method, "6", String(threads)];
    const p = Bun.spawnSync(argv, { cwd: root, stderr: "pipe" });
    if (p.exitCode !== 0) {
      console.error(p.stderr.toString().slice(-1500));
      return null;
    }
    const out = p.stdout.toString();
    const rss = (p.resourceUsage?.maxRSS ?? 0) / 1048576;
    if (tool === "loralab") {
      const m = /([\d.]+) s\/step/.exec(out);
      return m ? { tps: tokens[shape]! / Number(m[1]), rss } : null;
    }
    const j = JSON.parse(out) as { tokens_per_s: number; torch: string; transformers: string; peft: string };
    versions ||= `torch ${j.torch}, transformers ${j.transformers}`;
    if (j.peft) versions = `${versions.replace(/, peft .*/, "")}, peft ${j.peft}`;
    return { tps: j.tokens_per_s, rss };
  };
  const got = new Map<string, Got[]>();
  for (let r = 0; r < rounds; r++)
    for (const shape of shapes)
      for (const method of ["full", "lora"]) {
        const order = r % 2 ? (["torch", "loralab"] as const) : (["loralab", "torch"] as const);
        for (const tool of order) {
          const g = run(tool, shape, method);
          if (!g) {
            console.error(
              `bench vs-torch: ${tool} failed (hint: PyTorch runs with $LORALAB_PYTHON, a python with torch, transformers and peft: \`bun run bench vs-torch\` makes the project's cache venv for it)`,
            );
            return 1;
          }
          const key = `${shape} ${method} ${tool}`;
          got.set(key, [...(got.get(key) ?? []), g]);
          console.error(
            `  round ${r + 1}: ${label[shape]} ${method} ${tool}: ${g.tps.toFixed(1)} tok/s, ${g.rss.toFixed(0)} MiB`,
          );
        }
      }
  console.log(
    `\ntraining step, AdamW f32, LoRA r=16 alpha=32 dropout 0.05 on all 7 linear modules; ${threads} threads each side; ${rounds} rounds, the sides' order swapped each round, every measurement its own process (6 timed steps after 1 warm-up, their median); medians of the rounds`,
  );
  console.log(
    `${"workload".padEnd(50)}${"loralab tok/s".padStart(14)}${"torch tok/s".padStart(12)}${"speed".padStart(8)}${"loralab MiB".padStart(13)}${"torch MiB".padStart(11)}${"RSS".padStart(7)}   rounds tok/s: loralab | torch`,
  );
  const med = (k: string, f: (g: Got) => number) => median(got.get(k)!.map(f));
  for (const shape of shapes)
    for (const method of ["full", "lora"]) {
      const [a, b] = [`${shape} ${method} loralab`, `${shape} ${method} torch`];
      const [ta, tb, ra, rb] = [med(a, (g) => g.tps), med(b, (g) => g.tps), med(a, (g) => g.rss), med(b, (g) => g.rss)];
      const each = [a, b]
        .map((k) =>
          got
            .get(k)!
            .map((g) => g.tps.toFixed(1))
            .join(" "),
        )
        .join(" | ");
      console.log(
        `${`${label[shape]} ${method}`.padEnd(50)}${ta.toFixed(1).padStart(14)}${tb.toFixed(1).padStart(12)}${`${(ta / tb).toFixed(2)}×`.padStart(8)}${ra.toFixed(0).padStart(13)}${rb.toFixed(0).padStart(11)}${`${(ra / rb).toFixed(2)}×`.padStart(7)}   ${each}`,
      );
    }
  for (const shape of shapes) {
    const speed = (tool: string) =>
      med(`${shape} lora ${tool}`, (g) => g.tps) / med(`${shape} full ${tool}`, (g) => g.tps);
    console.log(
      `LoRA / full FT tokens/s on ${label[shape]}: loralab ${speed("loralab").toFixed(2)}×, torch ${speed("torch").toFixed(2)}×`,
    );
  }
  console.log(
    `speed: loralab tok/s / torch's (above 1: loralab faster); RSS: loralab's peak / torch's (below 1: loralab leaner); ${versions}`,
  );
  return 0;
}
