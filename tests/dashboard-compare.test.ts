// The comparing dashboard in headless Chromium: two runs overlaid, their plotted series read back
// from the page's Vega views and its SVG; a run started from the page with eval_every, its
// validation loss and scores seen growing, then evaluated and analysed from its buttons; a sweep
// page drawing the learning–forgetting plane, each method's frontier and the findings. Each
// scene's screenshot goes to the test's temp dir, and to $LORALAB_SHOTS_DIR when set
// (`bun run shots` writes the README's under docs/shots/).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync } from "node:fs";
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
  // axes with ticks and titles, and a legend naming both runs (the end of its id · its name)
  const axis = await page.$$eval("#chart-loss .role-axis-label text", (ts) => ts.map((t) => t.textContent));
  expect(axis.length).toBeGreaterThan(4);
  const legend = await page.$$eval("#chart-loss .role-legend-label text", (ts) => ts.map((t) => t.textContent));
  expect(legend.sort()).toEqual([`${a.id.slice(-6)} · overlay-lora`, `${b.id.slice(-6)} · overlay-full`].sort());
  // and each line is drawn through all 12 of its points (a vertex per row: M, then L's)
  const vertices = await page.$$eval("#chart-loss g.mark-line path", (ps) =>
    ps.map((p) => (p.getAttribute("d") ?? "").match(/[ML]/g)?.length ?? 0),
  );
  expect(vertices).toEqual([12, 12]);
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
  await page.waitForFunction(() => document.querySelector("#d-eval")?.textContent?.includes("job:final"));
  expect((await srv.store.evalResults(id)).some((x) => x.checkpoint === "job:final" && x.task === "forgetting")).toBe(
    true,
  );
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
  // the frontier per method: the points (the base among them) no other of its method beats in
  // both scores; two that score the same are one point of it
  type P = { learning: number; forgetting: number };
  for (const g of ["lora", "full"]) {
    const mine: P[] = [s.base, ...s.points.filter((p: { group: string }) => p.group === g)];
    const beaten = (p: P) =>
      mine.some(
        (q) =>
          q !== p &&
          q.learning >= p.learning &&
          q.forgetting >= p.forgetting &&
          (q.learning > p.learning || q.forgetting > p.forgetting),
      );
    const want = new Set(mine.filter((p) => !beaten(p)).map((p) => `${p.learning},${p.forgetting}`)).size;
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

test("jobs and sweeps over the API: every document (limit 0), jobs in turn, inputs outside the roots refused, a sweep's stream that ends, cells that would not score", async () => {
  const evalTrain = {
    ...(template.train as object),
    steps: 4,
    eval_every: 2,
    eval_tasks: ["winogrande"],
    eval_limit: 2,
    eval_data: { winogrande: join(fx, "winogrande") },
  };
  const a = await (await api("/api/runs", { ...template, name: "job-a", train: evalTrain })).json();
  const b = await (await api("/api/runs", { ...template, name: "job-b", train: evalTrain })).json();
  expect((await until(a.id)).status).toBe("completed");
  expect((await until(b.id)).status).toBe("completed");
  // two jobs at once: the second waits its turn ("queued" first), both end done
  expect((await api(`/api/runs/${a.id}/evaluate`, { limit: 0 })).status).toBe(202);
  expect((await api(`/api/runs/${b.id}/analyze`, {})).status).toBe(202);
  expect(srv.runner.jobState(b.id)?.state).toBe("queued");
  for (const id of [a.id, b.id])
    for (let i = 0; i < 600 && !["done", "failed"].includes(srv.runner.jobState(id)?.state ?? ""); i++)
      await Bun.sleep(100);
  expect([srv.runner.jobState(a.id)?.state, srv.runner.jobState(b.id)?.state]).toEqual(["done", "done"]);
  // limit 0: every document of the task, under the job's own key; the scores taken while it trained stay
  const docs = readFileSync(join(fx, "winogrande", "validation.jsonl"), "utf8")
    .trim()
    .split("\n").length;
  const rows = await srv.store.evalResults(a.id);
  expect(rows.find((x) => x.checkpoint === "job:final" && x.task === "winogrande" && x.metric === "acc")?.n).toBe(docs);
  expect(rows.find((x) => x.checkpoint === "step-000004" && x.task === "winogrande" && x.metric === "acc")?.n).toBe(2);

  // a run made elsewhere and imported, its eval data outside the server's roots: not evaluated
  const elsewhere = tempDir("outside-the-roots");
  cpSync(join(fx, "winogrande"), join(elsewhere, "wino"), { recursive: true });
  const { train } = await import("loralab");
  const made = await train(
    tinyConfig(elsewhere, {
      run_id: "imported",
      method: { kind: "lora", rank: 4 },
      train: {
        steps: 2,
        checkpoint_every: 0,
        eval_every: 2,
        eval_tasks: ["winogrande"],
        eval_data: { winogrande: join(elsewhere, "wino") },
      },
    }),
  );
  await srv.store.ingestRunDir(made.run_dir);
  const refused = await api("/api/runs/imported/evaluate", {});
  expect(refused.status).toBe(409);
  expect((await refused.json()).field).toBe("train.eval_data.winogrande");
  // (its base is under the roots: its spectrum may be taken)
  expect((await api("/api/runs/imported/analyze", {})).status).toBe(202);

  // a sweep whose runs are cancelled at once: its stream still ends, with them cancelled
  const long = { ...template, train: { ...evalTrain, steps: 5000 } };
  const sw = await api("/api/sweeps", { name: "cancelled", base: long, grid: { "optim.lr": [1e-3, 3e-4] } });
  expect(sw.status).toBe(201);
  const sweep = await sw.json();
  expect(sweep.runs.length).toBe(2);
  const stream = fetch(`${url}/api/sweeps/${sweep.id}/events`, { headers: { Authorization: `Bearer ${TOKEN}` } }).then(
    (r) => r.text(),
  );
  for (const id of sweep.runs) expect((await api(`/api/runs/${id}/cancel`, {})).status).toBe(202);
  const text = await Promise.race([stream, Bun.sleep(60_000).then(() => "timed out")]);
  expect(text).toContain("event: end");
  const last = [...text.matchAll(/event: sweep\ndata: (.*)\n/g)].at(-1)![1]!;
  expect(JSON.parse(last).runs.map((r: { status: string }) => r.status)).toEqual(["cancelled", "cancelled"]);

  // a grid that replaces the train section with one that scores nothing: refused, naming the cell
  const bare = await api("/api/sweeps", { name: "bare", base: long, grid: { train: [{ steps: 2 }] } });
  expect(bare.status).toBe(422);
  expect((await bare.json()).detail).toMatch(/^grid cell 1 .*train.eval_tasks and train.eval_every/);
  // the chart libraries are served by name, and nothing else is
  expect((await fetch(`${url}/vendor/vega.js`)).status).toBe(200);
  expect((await fetch(`${url}/vendor/${"x".repeat(100)}.js`)).status).toBe(404);
}, 300_000);
