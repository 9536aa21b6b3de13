// The comparing dashboard in headless Chromium: two runs overlaid, their plotted series read back
// from the page's Vega views and its SVG; a run started from the page with eval_every, its
// validation loss and scores seen growing, then evaluated and analysed from its buttons; a sweep
// page drawing the learning–forgetting plane, each method's frontier and the findings. Each
// scene's screenshot goes to the test's temp dir, and to $LORALAB_SHOTS_DIR when set
// (`bun run shots` writes the README's under docs/shots/).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Browser, Page } from "playwright-core";
import { createServer, type LoralabServer } from "loralab";
import { chartHas, chartRows, dashboardPage, launchChromium, root, tempDir, tinyConfig } from "./helpers.ts";

const TOKEN = "compare-test-token";
const tiny = join(root, "datasets/tiny");
const fx = join(root, "tests/fixtures/eval");
let srv: LoralabServer;
let browser: Browser;
let url: string;
let out: string;
let template: Record<string, unknown>;

beforeAll(async () => {
  out = tempDir("dashboard-compare");
  template = tinyConfig(out, {
    name: "compare",
    method: { kind: "lora", rank: 4 },
    data: { validation: join(tiny, "code_heldout.jsonl") },
    train: { steps: 12, checkpoint_every: 0, micro_batch: 4, eval_every: 3 },
  }) as Record<string, unknown>;
  delete template.out_dir;
  srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token: TOKEN,
    template: template as never,
  });
  url = srv.listen(0);
  browser = await launchChromium();
}, 300_000);

afterAll(async () => {
  await browser?.close();
  await srv?.close();
});

const api = (path: string, body?: unknown) =>
  fetch(url + path, {
    method: body === undefined ? "GET" : "POST",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

async function until(id: string): Promise<{ status: string }> {
  for (let i = 0; i < 1200; i++) {
    const r = await (await api(`/api/runs/${id}`)).json();
    if (["completed", "failed", "cancelled"].includes(r.status)) return r;
    await Bun.sleep(100);
  }
  throw new Error(`run ${id} did not end`);
}

const loggedIn = () => dashboardPage(browser, url, TOKEN, { viewport: { width: 1400, height: 1000 } });

async function shot(page: Page, name: string) {
  const file = join(out, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const dir = process.env.LORALAB_SHOTS_DIR;
  if (dir) {
    mkdirSync(resolve(dir), { recursive: true });
    copyFileSync(file, join(resolve(dir), `${name}.png`));
  }
  expect(existsSync(file)).toBe(true);
}

test("overlay two runs: each run's plotted loss is its stored series; axes, a line per run; the table sorts and filters", async () => {
  const a = await (await api("/api/runs", { ...template, name: "overlay-lora" })).json();
  const b = await (
    await api("/api/runs", { ...template, name: "overlay-full", method: { kind: "full" }, optim: { lr: 3e-4 } })
  ).json();
  expect((await until(a.id)).status).toBe("completed");
  expect((await until(b.id)).status).toBe("completed");
  const { page, errors } = await loggedIn();
  await page.waitForSelector(`tr.run[data-id="${b.id}"]`);
  await page.click(`tr.run[data-id="${a.id}"] input.select`);
  await page.click(`tr.run[data-id="${b.id}"] input.select`);
  await page.waitForFunction(() => document.querySelectorAll("#chart-loss g.mark-line path").length === 2);
  const rows = await chartRows(page, "loss");
  for (const run of [a, b]) {
    const stored = (await (await api(`/api/runs/${run.id}/metrics?name=loss`)).json()) as {
      step: number;
      value: number;
    }[];
    expect(stored.length).toBe(12);
    const plotted = rows.filter((r) => r.run === run.id).map((r) => [r.step, r.value]);
    expect(plotted).toEqual(stored.map((m) => [m.step, m.value]));
  }
  // the other series too: validation loss at steps 3, 6, 9, 12 for each; lr, grad norm, tokens/s
  const val = await chartRows(page, "val_loss");
  expect(val.filter((r) => r.run === a.id).map((r) => r.step)).toEqual([3, 6, 9, 12]);
  for (const c of ["lr", "grad_norm", "tokens_per_s"]) expect((await chartRows(page, c)).length).toBe(24);
  // axes with ticks and titles, and a legend naming both runs (name · the end of its id)
  const axis = await page.$$eval("#chart-loss .role-axis-label text", (ts) => ts.map((t) => t.textContent));
  expect(axis.length).toBeGreaterThan(4);
  const legend = await page.$$eval("#chart-loss .role-legend-label text", (ts) => ts.map((t) => t.textContent));
  expect(legend.sort()).toEqual([`overlay-full · ${b.id.slice(-6)}`, `overlay-lora · ${a.id.slice(-6)}`]);
  // sort by lr (ascending: full's 3e-4 first), then filter to the LoRA run
  await page.click('th[data-key="lr"]');
  const ids = await page.$$eval("#runs tr", (trs) => trs.map((t) => (t as HTMLElement).dataset.id));
  expect(ids.indexOf(b.id)).toBeLessThan(ids.indexOf(a.id));
  await page.fill("#filter", "overlay-lora");
  await page.waitForFunction(() => document.querySelectorAll("#runs tr").length === 1);
  expect(await page.$eval("#runs tr", (t) => (t as HTMLElement).dataset.id)).toBe(a.id);
  await page.fill("#filter", "");
  await shot(page, "dashboard-overlay");
  expect(errors).toEqual([]);
  await page.close();
}, 240_000);

test("a run started from the page with eval_every: its validation loss and scores grow live; then Evaluate and Analyze", async () => {
  const { page, errors } = await loggedIn();
  const config = {
    ...template,
    name: "live-eval",
    train: {
      ...(template.train as object),
      steps: 8,
      eval_every: 2,
      eval_tasks: ["winogrande", "arc_challenge"],
      eval_limit: 3,
      eval_data: { winogrande: join(fx, "winogrande"), arc_challenge: join(fx, "arc_challenge") },
    },
  };
  await page.fill("#config", JSON.stringify(config));
  await page.click("#start");
  await page.waitForFunction(() => document.querySelector("#start-msg")?.textContent?.startsWith("queued"));
  const id = (await page.textContent("#start-msg"))!.slice("queued ".length);
  // the score series as the page holds it, sampled until the run ends: it grows checkpoint by checkpoint
  const counts: number[] = [];
  for (let i = 0; i < 1200; i++) {
    const n = (await chartRows(page, "eval")).length;
    if (!counts.length || n !== counts[counts.length - 1]) counts.push(n);
    if ((await page.textContent("#d-status")) === "completed") break;
    await Bun.sleep(50);
  }
  await page.waitForFunction(() => document.querySelector("#d-status")?.textContent === "completed", undefined, {
    timeout: 60_000,
  });
  await chartHas(page, "eval", 5);
  const scores = await chartRows(page, "eval");
  // the base (step 0) and steps 2, 4, 6, 8: the forgetting score of each, as stored
  expect(scores.map((r) => r.step)).toEqual([0, 2, 4, 6, 8]);
  const stored = await srv.store.evalResults(id);
  for (const r of scores)
    expect(r.value).toBe(
      stored.find((x) => x.checkpoint === r.checkpoint && x.task === "forgetting" && x.metric === "score")!.value,
    );
  expect(counts.filter((n) => n > 0).length).toBeGreaterThan(2); // seen growing, not only drawn at the end
  expect((await chartRows(page, "val_loss")).map((r) => r.step)).toEqual([2, 4, 6, 8]);
  await page.waitForSelector("#d-eval table");
  // Evaluate: the final model scored on the run's own tasks, live over the run's stream
  await page.click("#evaluate");
  await page.waitForFunction(
    () => document.querySelector("#d-job")?.textContent?.startsWith("evaluate: done"),
    undefined,
    {
      timeout: 120_000,
    },
  );
  await page.waitForFunction(() => document.querySelector("#d-eval")?.textContent?.includes("final"));
  expect((await srv.store.evalResults(id)).some((x) => x.checkpoint === "final" && x.task === "forgetting")).toBe(true);
  // Analyze: the spectrum of ΔW at each checkpoint, its figures shown
  await page.click("#analyze");
  await page.waitForFunction(
    () => document.querySelector("#d-job")?.textContent?.startsWith("analyze: done"),
    undefined,
    {
      timeout: 120_000,
    },
  );
  await page.waitForSelector("#d-spectra img");
  expect((await srv.store.spectra(id)).length).toBeGreaterThan(0);
  // a second job while none runs is taken; one on a running job is refused
  const again = await api(`/api/runs/${id}/analyze`, {});
  expect(again.status).toBe(202);
  const busy = await api(`/api/runs/${id}/evaluate`, {});
  expect(busy.status).toBe(409);
  await shot(page, "dashboard-live-eval");
  expect(errors).toEqual([]);
  await page.close();
}, 300_000);

test("the sweep page: each scored checkpoint on the learning–forgetting plane, each method's frontier, the findings", async () => {
  const { page, errors } = await loggedIn();
  const base = {
    ...template,
    name: "sweep",
    data: { ...(template.data as object), validation: undefined },
    train: {
      ...(template.train as object),
      steps: 6,
      eval_every: 3,
      eval_tasks: ["gsm8k", "arc_challenge"],
      eval_limit: 2,
      eval_data: { gsm8k: join(fx, "gsm8k"), arc_challenge: join(fx, "arc_challenge") },
    },
  };
  await page.click("#nav-sweeps");
  await page.fill(
    "#sweep-config",
    JSON.stringify({ name: "lora-vs-full", base, grid: { method: [{ kind: "lora", rank: 4 }, { kind: "full" }] } }),
  );
  await page.click("#start-sweep");
  await page.waitForFunction(() => document.querySelector("#sweep-msg")?.textContent?.startsWith("queued"));
  await page.waitForFunction(
    () => document.querySelector("#s-progress")?.textContent?.startsWith("2 of 2 runs ended"),
    undefined,
    {
      timeout: 240_000,
    },
  );
  const sid = (await page.textContent("#s-id"))!;
  const s = await (await api(`/api/sweeps/${sid}`)).json();
  expect(s.runs.map((r: { status: string }) => r.status)).toEqual(["completed", "completed"]);
  // two checkpoints each (steps 3 and 6), each with both scores; the base drawn apart
  expect(s.points.length).toBe(4);
  await chartHas(page, "pareto", 5);
  const rows = await chartRows(page, "pareto");
  const plotted = rows
    .filter((r) => r.kind === "checkpoint")
    .map((r) => [r.run, r.checkpoint, r.learning, r.forgetting]);
  expect(plotted).toEqual(
    s.points.map((p: Record<string, unknown>) => [p.run, p.checkpoint, p.learning, p.forgetting]),
  );
  // the frontier per method: the points no other of its method beats in both scores
  for (const g of ["lora", "full"]) {
    const mine = s.points.filter((p: { group: string }) => p.group === g);
    const beaten = (p: { learning: number; forgetting: number }) =>
      mine.some(
        (q: { learning: number; forgetting: number }) =>
          q !== p &&
          q.learning >= p.learning &&
          q.forgetting >= p.forgetting &&
          (q.learning > p.learning || q.forgetting > p.forgetting),
      );
    // (two checkpoints that score the same are one point of it)
    const want = new Set(
      mine
        .filter((p: { learning: number; forgetting: number }) => !beaten(p))
        .map((p: { learning: number; forgetting: number }) => `${p.learning},${p.forgetting}`),
    ).size;
    expect(rows.filter((r) => r.kind === "frontier" && r.group === g).length).toBe(want);
  }
  expect(rows.filter((r) => r.kind === "base").length).toBe(1);
  expect(await page.$$eval("#chart-pareto g.mark-symbol path", (ps) => ps.length)).toBeGreaterThanOrEqual(5);
  const findings = await page.$$eval("#findings li", (ls) => ls.map((l) => (l as HTMLElement).dataset.id));
  expect(findings).toEqual(["learns_less", "forgets_less"]);
  expect(await page.textContent("#findings")).toContain("LoRA learns less than full fine-tuning");
  await shot(page, "dashboard-sweep");
  expect(errors).toEqual([]);
  await page.close();
}, 360_000);
