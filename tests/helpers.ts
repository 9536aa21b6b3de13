// Shared helpers for the Bun tests: a temporary run folder and a tiny run config.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RunConfig } from "loralab";
import { chromium, type Browser, type Page } from "playwright-core";
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

/** A dashboard chart's rows as the page's Vega view holds them (what it plots; the dashboard
 *  exposes its views as window.loralab.charts). */
export function chartRows(page: Page, chart: string): Promise<Record<string, unknown>[]> {
  return page.evaluate(
    (c) =>
      (window as never as { loralab: { charts: Record<string, { data(n: string): unknown[] }> } }).loralab.charts[
        c
      ]?.data("table") ?? [],
    chart,
  ) as Promise<Record<string, unknown>[]>;
}

/** Until the chart plots at least `n` rows (at most `ms`). */
export async function chartHas(page: Page, chart: string, n: number, ms = 60_000): Promise<void> {
  const t0 = performance.now();
  while ((await chartRows(page, chart)).length < n) {
    if (performance.now() - t0 > ms) throw new Error(`chart ${chart}: fewer than ${n} rows after ${ms} ms`);
    await Bun.sleep(50);
  }
}

/** A new page on the dashboard at `url`, logged in with `token`; its page errors and console
 *  errors (but the login's expected 401) are collected in `errors`. */
export async function dashboardPage(
  browser: Browser,
  url: string,
  token: string,
  o: { viewport?: { width: number; height: number }; wrongFirst?: boolean } = {},
): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage(o.viewport ? { viewport: o.viewport } : {});
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("401")) errors.push(m.text());
  });
  await page.goto(url);
  await page.waitForSelector("#login:not(.hidden)");
  if (o.wrongFirst) {
    await page.fill("#token", "wrong");
    await page.click("#login button");
    await page.waitForFunction(() => document.querySelector("#login-error")?.textContent === "wrong token");
  }
  await page.fill("#token", token);
  await page.click("#login button");
  await page.waitForSelector("#app:not(.hidden)");
  return { page, errors };
}
