// `bun run shots`: the dashboard's screenshots for the README, made by the Chromium tests that
// check what they show (tests/dashboard-compare.test.ts: two runs overlaid, a run scored live,
// a sweep's frontier), written to docs/shots/ (or the directory given).
import { readdirSync } from "node:fs";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dir, "..");
const dir = resolve(process.argv[2] ?? join(root, "docs/shots"));
const t = Bun.spawnSync(["bun", "test", "tests/dashboard-compare.test.ts"], {
  cwd: root,
  env: { ...process.env, LORALAB_SHOTS_DIR: dir },
  stdout: "inherit",
  stderr: "inherit",
});
if (t.exitCode !== 0) {
  console.error("shots: the dashboard tests failed, so their screenshots are not to be trusted");
  process.exit(t.exitCode ?? 1);
}
for (const f of readdirSync(dir)
  .filter((f) => f.endsWith(".png"))
  .sort())
  console.log(`shots: ${join(dir, f)}`);
