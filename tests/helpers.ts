// Shared helpers for the Bun tests: a temporary run folder and a tiny run config.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RunConfig } from "loralab";
import { chromium, type Browser } from "playwright-core";
import { madePyenv, pyenvDir } from "../scripts/pyenv.ts";

export const root = new URL("..", import.meta.url).pathname;

export function tempDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `loralab-${label}-`));
}

/** A run on the bundled tiny data that takes about a second on 2 cores. */
export function tinyConfig(out: string, over: RunConfig = {}): RunConfig {
  const tiny = join(root, "datasets/tiny");
  const base: RunConfig = {
    name: "t",
    out_dir: out,
    seed: 3,
    model: { config: join(tiny, "config.json"), tokenizer: join(tiny, "tokenizer.json") },
    data: { train: join(tiny, "code.jsonl"), text_field: "content", seq_len: 32, cache_dir: join(out, "cache") },
    optim: { name: "adamw", lr: 1e-3 },
    train: { steps: 6, micro_batch: 4, checkpoint_every: 2 },
  };
  return {
    ...base,
    ...over,
    model: { ...base.model, ...over.model },
    data: { ...base.data, ...over.data },
    method: { ...base.method, ...over.method },
    optim: { ...base.optim, ...over.optim },
    train: { ...base.train, ...over.train },
  };
}

export async function metricLosses(runDir: string): Promise<[number, number][]> {
  const text = await Bun.file(join(runDir, "metrics.jsonl")).text();
  return text
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { step: number; loss: number })
    .map((m) => [m.step, m.loss]);
}

let tiny: Promise<string> | undefined;

/** A tiny trained model directory (HF layout with its tokenizer): one full-FT step, made once per test file. */
export function tinyModel(): Promise<string> {
  tiny ??= (async () => {
    const { train } = await import("loralab");
    const out = tempDir("tiny-model");
    const s = await train(
      tinyConfig(out, { run_id: "m", method: { kind: "full" }, train: { steps: 1, checkpoint_every: 0 } }),
    );
    return s.output;
  })();
  return tiny;
}

/** Headless Chromium: Debian's `chromium` (installed with apt-get when missing), driven by playwright-core. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync("/usr/bin/chromium")) {
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    let r = spawnSync("apt-get", ["install", "-y", "-q", "chromium"], { env, encoding: "utf8" });
    if (r.status !== 0) {
      spawnSync("apt-get", ["update", "-q"], { env });
      r = spawnSync("apt-get", ["install", "-y", "-q", "chromium"], { env, encoding: "utf8" });
    }
    if (!existsSync("/usr/bin/chromium"))
      throw new Error(`the browser tests need Debian's chromium: apt-get install chromium failed: ${r.stderr}`);
  }
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

/** The test venv's python (torch, transformers, peft: scripts/pyenv.ts). `bun run test` makes it and
 *  names it in LORALAB_TEST_PYTHON; a bare `bun test` uses the one made for the current lock. Throws
 *  when there is none, so a test that needs it fails rather than skips. */
export function testPython(): string {
  const named = process.env.LORALAB_TEST_PYTHON;
  const python = named ? (existsSync(named) ? named : undefined) : madePyenv();
  if (!python)
    throw new Error(
      `no test venv at ${named ?? pyenvDir()} (hint: \`bun scripts/pyenv.ts\` makes it, once; \`bun run test\` does that first)`,
    );
  return python;
}
