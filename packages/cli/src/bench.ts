// `loralab bench train [1|2]`: builds and runs the engine's training benchmark
// (crates/core/examples/bench_train.rs), which prints full FT vs LoRA side by side. Benchmarks
// live apart from tests: they measure, they do not pass or fail.
import { join } from "node:path";
import { cargoArgs, hostTriple } from "./cargo.ts";

const root = new URL("../../..", import.meta.url).pathname;

export async function runBench(args: string[]): Promise<number> {
  const [what, ...rest] = args;
  if (what !== "train") {
    console.error("usage: loralab bench train [1|2]   (1: activation-dominated shape, 2: parameter-dominated; default both)");
    return 2;
  }
  // the same package set as the addon and test builds, so cargo reuses their compiled candle
  const build = Bun.spawnSync(cargoArgs("build", ["--example", "bench_train"]), { cwd: root, stdout: "inherit", stderr: "inherit" });
  if (build.exitCode !== 0) return build.exitCode ?? 1;
  const run = Bun.spawnSync([join(root, "target", hostTriple(), "release/examples/bench_train"), ...rest], { cwd: root, stdout: "inherit", stderr: "inherit" });
  return run.exitCode ?? 1;
}
