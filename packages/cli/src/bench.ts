// `loralab bench train [1|2]`, `loralab bench data` and `loralab bench eval`: build and run the
// engine's benchmarks (crates/core/examples/bench_train.rs: full FT vs LoRA side by side;
// bench_data.rs: prepare throughput and memory; bench_eval.rs: inference on SmolLM2). Benchmarks live apart from tests: they measure, they do not pass or fail.
import { join } from "node:path";
import { cargoArgs, hostTriple } from "./cargo.ts";

const root = new URL("../../..", import.meta.url).pathname;

export async function runBench(args: string[]): Promise<number> {
  const [what, ...rest] = args;
  const examples: Record<string, string> = { train: "bench_train", data: "bench_data", eval: "bench_eval" };
  const example = examples[what ?? ""];
  if (!example) {
    console.error(
      "usage: loralab bench train [1|2]   full FT vs LoRA (1: activation-dominated shape, 2: parameter-dominated; default both)\n" +
        "       loralab bench data        prepare throughput and memory on 50 and 200 MB of JSONL\n" +
        "       loralab bench eval [N] [M] SmolLM2 inference: log-likelihood tokens/s, KV cache vs re-forward (N new tokens, M at batch 8), decode latency by position",
    );
    return 2;
  }
  if (what === "eval") {
    const { fetchModel } = await import("../../../scripts/fetch.ts");
    await fetchModel("smollm2");
  }
  // the same package set as the addon and test builds, so cargo reuses their compiled candle
  const build = Bun.spawnSync(cargoArgs("build", ["--example", example]), { cwd: root, stdout: "inherit", stderr: "inherit" });
  if (build.exitCode !== 0) return build.exitCode ?? 1;
  const run = Bun.spawnSync([join(root, "target", hostTriple(), "release/examples", example), ...rest], { cwd: root, stdout: "inherit", stderr: "inherit" });
  return run.exitCode ?? 1;
}
