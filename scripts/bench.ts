// `bun run bench WHAT ...`: the CLI's benchmarks (`loralab bench`), with what a comparison needs
// made first: the peers of `svd` (numpy, scipy, threadpoolctl) and `vs-torch` (torch, transformers, peft) run in the project's cache venv (the
// test lock's, scripts/pyenv.ts: made once per machine, minutes), named to the CLI as
// $LORALAB_PYTHON unless it is already set.
import { join, resolve } from "node:path";
import { ensurePyenv } from "./pyenv.ts";

const root = resolve(import.meta.dir, "..");
const args = process.argv.slice(2);
const env = { ...process.env };
if ((args[0] === "svd" || args[0] === "vs-torch") && !env.LORALAB_PYTHON) env.LORALAB_PYTHON = await ensurePyenv();
const p = Bun.spawnSync([process.execPath, join(root, "packages/cli/src/main.ts"), "bench", ...args], {
  cwd: root,
  env,
  stdout: "inherit",
  stderr: "inherit",
});
process.exit(p.exitCode ?? 1);
