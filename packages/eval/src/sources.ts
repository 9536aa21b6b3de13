// The benchmarks by name: the Hub datasets, configs and splits lm-eval-harness 0.4.x scores
// (its task YAMLs' dataset_path / dataset_name / test_split / fewshot_split), fetched as parquet
// into the Hugging Face cache and checked by record count. A dataset that ships a loading script
// (hellaswag, winogrande) is read from the Hub's own parquet conversion, the
// `refs/convert/parquet` branch (https://huggingface.co/docs/dataset-viewer/parquet).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { datasetFiles, readRecords } from "@loralab/data";
import { type HubSettings, hubSettings, resolveRef } from "@loralab/hub";

export interface BenchmarkSource {
  repo: string;
  /** A branch, or a commit sha to pin one (the sha fetched is recorded with every result). */
  revision: string;
  /** The dataset config's folder in the repo. */
  config: string;
  /** Splits to fetch: the scored one first. */
  splits: string[];
  /** Records in the scored split (lm-eval's document count). */
  count: number;
}

export type BenchmarkName = "humaneval" | "gsm8k" | "hellaswag" | "winogrande" | "arc_challenge";

export const BENCHMARKS: Record<BenchmarkName, BenchmarkSource> = {
  // lm-eval gsm8k.yaml: dataset_path gsm8k (now openai/gsm8k), dataset_name main; test, shots from train
  gsm8k: { repo: "openai/gsm8k", revision: "main", config: "main", splits: ["test", "train"], count: 1319 },
  // hellaswag.yaml: dataset_path hellaswag (Rowan/hellaswag), validation; shots from train
  hellaswag: {
    repo: "Rowan/hellaswag",
    revision: "refs/convert/parquet",
    config: "default",
    splits: ["validation", "train"],
    count: 10042,
  },
  // winogrande.yaml: dataset_path winogrande (allenai/winogrande), dataset_name winogrande_xl, validation
  winogrande: {
    repo: "allenai/winogrande",
    revision: "refs/convert/parquet",
    config: "winogrande_xl",
    splits: ["validation", "train"],
    count: 1267,
  },
  // arc_challenge.yaml: dataset_path allenai/ai2_arc, dataset_name ARC-Challenge, test; shots from train
  arc_challenge: {
    repo: "allenai/ai2_arc",
    revision: "main",
    config: "ARC-Challenge",
    splits: ["test", "train"],
    count: 1172,
  },
  // humaneval.yaml: dataset_path openai/openai_humaneval, test
  humaneval: {
    repo: "openai/openai_humaneval",
    revision: "main",
    config: "openai_humaneval",
    splits: ["test"],
    count: 164,
  },
};

export class BenchmarkError extends Error {
  override name = "BenchmarkError";
}

function named(path: string, split: string): boolean {
  return new RegExp(`(^|[/_.-])${split}([/_.-]|$)`).test(path);
}

/** Fetch a benchmark's parquet files into the Hub cache (once; offline from the cache) and check
 *  its scored split's record count. Returns the config folder (what `--data` takes) and the
 *  pinned source, `repo@sha/config`. */
export async function fetchBenchmark(
  task: BenchmarkName,
  opts: {
    settings?: HubSettings;
    cache?: string;
    onProgress?: (file: string, done: number, total: number) => void;
  } = {},
): Promise<{ path: string; pinned: string }> {
  const src = BENCHMARKS[task];
  if (!src) throw new BenchmarkError(`unknown benchmark \`${task}\` (hint: ${Object.keys(BENCHMARKS).join(", ")})`);
  const settings = opts.settings ?? hubSettings();
  const r = await resolveRef(
    { type: "dataset", repo: src.repo, revision: src.revision, path: src.config },
    {
      settings,
      include: (p) => /\.parquet$/.test(p) && src.splits.some((s) => named(p.slice(src.config.length), s)),
      onProgress: opts.onProgress,
    },
  );
  const pinned = `${src.repo}@${r.sha}/${src.config}`;
  // counted once per commit (the files of a commit never change)
  const mark = opts.cache ? join(opts.cache, "benchmarks", "verified", `${r.sha}-${task}`) : "";
  if (mark && existsSync(mark) && readFileSync(mark, "utf8") === String(src.count)) return { path: r.path, pinned };
  let n = 0;
  const files = datasetFiles(r.path, src.splits[0]);
  if (!files.length)
    throw new BenchmarkError(
      `${pinned}: no ${src.splits[0]} split in the cache (hint: run \`loralab fetch ${task}\` with the network)`,
    );
  for (const f of files) for await (const _ of readRecords(f)) n++;
  if (n !== src.count)
    throw new BenchmarkError(
      `${pinned}: the ${src.splits[0]} split has ${n} records, lm-eval's ${task} has ${src.count} (hint: a different revision of the dataset; pin the one lm-eval uses, or pass --data ${task}=PATH knowing the scores will not compare)`,
    );
  if (mark) {
    mkdirSync(join(mark, ".."), { recursive: true });
    writeFileSync(mark, String(src.count));
  }
  return { path: r.path, pinned };
}
