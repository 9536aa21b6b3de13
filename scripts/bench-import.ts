// Import time of the umbrella `loralab` against its training core alone, each in a fresh Bun
// process, alternated so drift on a busy machine hits both alike. `bun run bench import`;
// a benchmark, not a test. `bun scripts/bench-import.ts [--n 15] [--root DIR]`: DIR is the
// checkout to import from (another worktree, to compare before and after a change).
import { resolve } from "node:path";

const argv = process.argv.slice(2);
function flag(name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}
const n = Number(flag("--n") ?? 15);
const root = resolve(flag("--root") ?? new URL("..", import.meta.url).pathname);
// "" is a bare `bun -e 0`: the start-up cost both carry, shown so the imports' own cost reads off
const subjects = ["loralab", "loralab/core", ""] as const;

/** Wall time of one fresh `bun -e 'await import(spec)'`, in ms. */
function importOnce(spec: string): number {
  const t0 = performance.now();
  const code = spec === "" ? "0" : `await import(${JSON.stringify(spec)})`;
  const p = Bun.spawnSync([process.execPath, "-e", code], {
    cwd: root,
    stdout: "ignore",
    stderr: "pipe",
  });
  const ms = performance.now() - t0;
  if (p.exitCode !== 0) {
    throw new Error(
      `import(${spec}) in ${root} exited ${p.exitCode}: ${p.stderr.toString().trim()}\n  hint: run \`bun run setup\` there first (the addon must be built)`,
    );
  }
  return ms;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// one discarded round warms the filesystem cache and Bun's transpiler cache alike for both
for (const spec of subjects) importOnce(spec);
const times: Record<string, number[]> = Object.fromEntries(subjects.map((s) => [s, []]));
for (let i = 0; i < n; i++) for (const spec of subjects) times[spec]!.push(importOnce(spec));

const [umbrella, core, bare] = subjects.map((s) => median(times[s]!)) as [number, number, number];
console.log(`import time, median of ${n} fresh processes each, in ${root}:`);
console.log(`  loralab       ${umbrella.toFixed(1)} ms`);
console.log(`  loralab/core  ${core.toFixed(1)} ms`);
console.log(`  (bare bun -e) ${bare.toFixed(1)} ms`);
console.log(
  `  ratio         ${(umbrella / core).toFixed(2)}x wall, ${((umbrella - bare) / (core - bare)).toFixed(2)}x less start-up`,
);
