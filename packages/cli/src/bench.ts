// `loralab bench train [1|2]` and `loralab bench data`: build and run the engine's benchmarks
// (crates/core/examples/bench_train.rs: full FT vs LoRA side by side; bench_data.rs: prepare
// throughput and memory). Benchmarks live apart from tests: they measure, they do not pass or fail.
import { join } from "node:path";
import { cargoArgs, hostTriple } from "./cargo.ts";

const root = new URL("../../..", import.meta.url).pathname;

export async function runBench(args: string[]): Promise<number> {
  const [what, ...rest] = args;
  if (what !== "train" && what !== "data") {
    console.error("usage: loralab bench train [1|2]   full FT vs LoRA (1: activation-dominated shape, 2: parameter-dominated; default both)\n       loralab bench data        prepare throughput and memory on 50 and 200 MB of JSONL");
    return 2;
  }
  const example = what === "train" ? "bench_train" : "bench_data";
  // the same package set as the addon and test builds, so cargo reuses their compiled candle
  const build = Bun.spawnSync(cargoArgs("build", ["--example", example]), { cwd: root, stdout: "inherit", stderr: "inherit" });
  if (build.exitCode !== 0) return build.exitCode ?? 1;
  const run = Bun.spawnSync([join(root, "target", hostTriple(), "release/examples", example), ...rest], { cwd: root, stdout: "inherit", stderr: "inherit" });
  return run.exitCode ?? 1;
}
