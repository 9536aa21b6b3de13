// Shared by the sweep tests and `bun run bench sweep`: a tiny sweep spec, and a `loralab worker`
// process whose stdout lines are collected as they come.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { cellRunId, cells, type SweepSpec } from "@loralab/study";
import { root, tinyConfig } from "./helpers.ts";

/** A user's sweep spec as YAML: full FT and LoRA r=4 on `model`, GSM8K and the forgetting tasks on the fixtures. */
export function userSweepYaml(name: string, model: string, out: string, durations = "[1]"): string {
  const fx = join(root, "tests/fixtures/eval");
  return `name: ${name}
regime: ift
methods: [full, lora]
ranks: [4]
durations: ${durations}
records_per_epoch: 8
lr: { full: [1.0e-3], lora: [3.0e-3] }
base:
  model: { path: ${model} }
  data: { train: ${join(root, "datasets/tiny/code.jsonl")}, text_field: content, seq_len: 32, cache_dir: ${join(out, "cache")} }
  optim: { name: adamw }
  train: { micro_batch: 4 }
eval:
  learning: gsm8k
  limit: 2
  gsm8k: { shots: 0, max_new_tokens: 8 }
  data: { gsm8k: ${fx}/gsm8k, hellaswag: ${fx}/hellaswag, winogrande: ${fx}/winogrande, arc_challenge: ${fx}/arc_challenge }
`;
}

/** A tiny IFT sweep: full FT and LoRA r=4 on the tiny model, 16 records an epoch. */
export function tinySweep(name: string, out: string, over: Partial<SweepSpec> = {}): SweepSpec {
  const base = tinyConfig(out);
  delete base.out_dir;
  delete base.run_id;
  base.train = { micro_batch: 4, checkpoint_every: 0 };
  return {
    name,
    regime: "ift",
    base,
    methods: ["full", "lora"],
    lr: { full: [1e-3], lora: [3e-3] },
    ranks: [4],
    durations: [1, 2],
    records_per_epoch: 16,
    ...over,
  };
}

/** Six cells of 48 steps (24 an epoch, a checkpoint at each): the queue tests' and bench's sweep. */
export const SIX_CELLS: Partial<SweepSpec> = {
  lr: { full: [1e-3, 2e-3, 3e-3], lora: [3e-3, 4e-3, 5e-3] },
  records_per_epoch: 96,
};

export interface WorkerProcess {
  p: ReturnType<typeof Bun.spawn>;
  /** Its stdout so far, line by line (a pipe: lines may lag the work). */
  lines: string[];
  /** Its stderr so far (read, so a full pipe never blocks it). */
  stderr: string[];
}

/** `loralab worker --db URL --cpu 1` in its own process. */
export function spawnWorker(url: string): WorkerProcess {
  const p = Bun.spawn([process.execPath, "packages/cli/src/main.ts", "worker", "--db", url, "--cpu", "1"], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
  });
  const lines: string[] = [];
  const stderr: string[] = [];
  const read = async (from: ReadableStream<Uint8Array>, into: string[]) => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of from) {
      buf += dec.decode(chunk);
      const parts = buf.split("\n");
      buf = parts.pop()!;
      into.push(...parts);
    }
  };
  read(p.stdout as ReadableStream<Uint8Array>, lines);
  read(p.stderr as ReadableStream<Uint8Array>, stderr);
  return { p, lines, stderr };
}

/** The pid holding an flock on `file`, from /proc/locks. */
function lockHolder(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  const ino = statSync(file).ino;
  for (const line of readFileSync("/proc/locks", "utf8").split("\n")) {
    const f = line.trim().split(/\s+/); // "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF"
    if (f[1] === "FLOCK" && f[5]?.endsWith(`:${ino}`)) return Number(f[4]);
  }
  return undefined;
}

/** A cell mid-run (checkpoint `first` written, `last` not) and the worker training it: the
 *  parent of the sidecar that holds the run directory's lock (/proc/locks), not the workers'
 *  stdout, which lags. */
export function midRunVictim(
  spec: SweepSpec,
  runs: string,
  ws: WorkerProcess[],
  first: string,
  last: string,
): readonly [WorkerProcess, string] | undefined {
  for (const c of cells(spec)) {
    const id = cellRunId(spec, c);
    const ck = join(runs, id, "checkpoints");
    if (!existsSync(join(ck, first, "trainer_state.json")) || existsSync(join(ck, last))) continue;
    const sidecar = lockHolder(join(runs, id, ".lock"));
    const status =
      sidecar && existsSync(`/proc/${sidecar}/status`) ? readFileSync(`/proc/${sidecar}/status`, "utf8") : "";
    const parent = Number(/PPid:\s+(\d+)/.exec(status)?.[1]);
    const w = ws.find((x) => x.p.pid === parent);
    if (w) return [w, id] as const;
  }
  return undefined;
}
