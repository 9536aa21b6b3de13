// `loralab fetch NAME...`: benchmarks by name (the Hub datasets lm-eval scores, record counts
// checked) and models or files by Hub id, into the Hugging Face cache; prints where each went.
import { ConfigError } from "@loralab/engine";
import { BENCHMARKS, type BenchmarkName, cacheDir, fetchBenchmark } from "@loralab/eval";
import { HubError, parseHubRef, resolveData, resolveModel } from "@loralab/hub";
import { cliArgs } from "./args.ts";

export const FETCH_USAGE = `usage: loralab fetch NAME...
  NAME: a benchmark (${Object.keys(BENCHMARKS).join(", ")}, or all), a model id (org/name[@revision]),
        or a file or folder (hf://[datasets/]org/name[@revision]/path)
  into the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), shared with
  transformers and huggingface_hub; HF_TOKEN for gated repos, HF_ENDPOINT for a mirror, HF_HUB_OFFLINE=1 to
  check the cache alone. Prints each one's path and the commit it resolved to. \`loralab eval\` fetches the
  benchmarks it needs by itself.`;

export async function cmdFetch(args: string[]): Promise<number> {
  const { values, positionals } = cliArgs("fetch", args, {}, FETCH_USAGE);
  if (values.help) {
    console.log(FETCH_USAGE);
    return 0;
  }
  if (!positionals.length) throw new ConfigError(`loralab fetch: name something to fetch\n${FETCH_USAGE}`, "");
  const names = positionals.flatMap((n) => (n === "all" ? Object.keys(BENCHMARKS) : [n]));
  for (const name of names) {
    try {
      const r = Object.hasOwn(BENCHMARKS, name)
        ? await fetchBenchmark(name as BenchmarkName, { cache: cacheDir() })
        : name.startsWith("hf://datasets/")
          ? await resolveData(name)
          : parseHubRef(name)
            ? await resolveModel(name)
            : null;
      if (!r)
        throw new ConfigError(
          `loralab fetch: \`${name}\` is neither a benchmark (${Object.keys(BENCHMARKS).join(", ")}) nor a Hub id (org/name)`,
          "",
        );
      console.log(`${name}: ${r.path}  (${r.pinned})`);
    } catch (e) {
      if (e instanceof HubError) throw new Error(`fetch ${name}: ${e.message}`);
      throw e;
    }
  }
  return 0;
}
