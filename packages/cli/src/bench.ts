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
  "       loralab bench svd [quick]  singular values vs numpy (1024², 4096², 4096×11008 f32) and a synthetic 32-layer model pair end to end\n" +
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
  const run = Bun.spawnSync([bin, ...rest], { cwd: root, stdout: "inherit", stderr: "inherit" });
  return run.exitCode ?? 1;
}

/** loralab (faer) against numpy, alternating shape by shape in one run, same thread count. */
function benchSvd(bin: string, args: string[]): number {
  const quick = args.includes("quick");
  const threads = Number(process.env.LORALAB_THREADS ?? navigator.hardwareConcurrency);
  const shapes: [number, number][] = quick
    ? [[1024, 1024]]
    : [
        [1024, 1024],
        [4096, 4096],
        [4096, 11008],
      ];
  // numpy at its best: some machines set these, which slow a current OpenBLAS; unset for numpy only
  const npEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && k !== "OPENBLAS_CORETYPE" && k !== "OPENBLAS_L2_SIZE") npEnv[k] = v;
  const unset = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"].filter((k) => process.env[k] !== undefined);
  console.log(
    `singular values only, random f32, ${threads} threads each side${unset.length ? ` (unset for numpy: ${unset.join(", ")})` : ""}`,
  );
  console.log(`${"shape".padEnd(12)}${"loralab s".padStart(11)}${"numpy s".padStart(11)}${"ratio".padStart(8)}`);
  let blas = "";
  for (const [m, n] of shapes) {
    const ours = Bun.spawnSync([bin, "matrix", String(m), String(n), String(threads)], {
      cwd: root,
      stderr: "inherit",
    });
    const np = Bun.spawnSync(["python3", join(root, "scripts/bench_svd.py"), String(m), String(n), String(threads)], {
      cwd: root,
      stderr: "inherit",
      env: npEnv,
    });
    if (ours.exitCode !== 0 || np.exitCode !== 0) {
      console.error(
        "bench svd: a side failed (hint: numpy and threadpoolctl from pip: `pip install numpy threadpoolctl`)",
      );
      return 1;
    }
    const a = JSON.parse(ours.stdout.toString()) as { seconds: number; sigma_1: number };
    const b = JSON.parse(np.stdout.toString()) as { seconds: number; sigma_1: number; numpy: string; blas: unknown };
    blas = `numpy ${b.numpy}, threadpoolctl: ${JSON.stringify(b.blas)}`;
    console.log(
      `${`${m}×${n}`.padEnd(12)}${a.seconds.toFixed(3).padStart(11)}${b.seconds.toFixed(3).padStart(11)}${(a.seconds / b.seconds).toFixed(2).padStart(7)}×`,
    );
  }
  console.log(blas);
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
