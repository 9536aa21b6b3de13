// `loralab import RUN_DIR...`: runs trained outside the server (`loralab train`, the library)
// into the store `loralab serve` uses, with their eval results and spectra, so the API and the
// dashboard show them. Called by main.ts; the rules are @loralab/server's importRuns.
import { existsSync } from "node:fs";
import { openStore } from "@loralab/db";
import { importRuns } from "@loralab/server";
import { ConfigError } from "@loralab/engine";
import { cliArgs } from "./args.ts";

export const IMPORT_USAGE = `usage: loralab import RUN_DIR... [--db loralab.db]
  reads run directories (run.json, metrics.jsonl, eval.json from \`loralab eval --run\`, spectrum/ from
  \`loralab analyze --run\`) into the run store \`loralab serve\` uses; a directory of run directories
  (runs/) imports each. Importing again refreshes a run (new eval or spectrum results), never
  duplicating a row; a run still training, or one a server's runner has, is left alone.
  the store is Postgres when DATABASE_URL is set, else the SQLite file --db (as for serve)`;

export async function cmdImport(args: string[]): Promise<number> {
  const { values: a, positionals: dirs } = cliArgs("import", args, { db: { type: "string" } }, IMPORT_USAGE);
  if (a.help) {
    console.log(IMPORT_USAGE);
    return 0;
  }
  if (!dirs.length) throw new ConfigError(`import: give one or more run directories\n${IMPORT_USAGE}`, "");
  // a mistyped path is said before any store is opened (or created)
  const missing = dirs.filter((d) => !existsSync(d));
  for (const d of missing) console.error(`failed: ${d}: no such directory (hint: check the path)`);
  if (missing.length === dirs.length) return 1;
  const store = await openStore(
    process.env.DATABASE_URL ? { url: process.env.DATABASE_URL } : { path: a.db ?? "loralab.db" },
  );
  let failed = missing.length;
  try {
    for (const dir of dirs.filter((d) => existsSync(d)))
      for (const r of await importRuns(store, dir)) {
        if (r.action === "failed") {
          failed++;
          console.error(`failed: ${r.reason}`);
        } else if (r.action === "skipped") console.log(`skipped ${r.id} (${r.dir}): ${r.reason}`);
        else {
          const [run, loss, evals, spectra] = await Promise.all([
            store.getRun(r.id),
            store.metrics(r.id, { name: "loss" }),
            store.evalResults(r.id),
            store.spectra(r.id),
          ]);
          console.log(
            `${r.action} ${r.id} ← ${r.dir} (${run?.status}; ${loss.length} logged steps, ${evals.length} eval results, ${spectra.length} spectrum rows)`,
          );
        }
      }
  } finally {
    await store.close();
  }
  console.log(`store: ${store.kind} ${store.where}`);
  return failed ? 1 : 0;
}
