// The dashboard end to end in headless Chromium (Debian's `chromium`, installed with apt-get
// when missing, driven by playwright-core): log in, start a tiny run, watch its loss curve
// grow over Server-Sent Events, see it finish.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { createServer, type LoralabServer } from "loralab";
import { chartHas, chartRows, dashboardPage, launchChromium, root, tempDir, tinyConfig } from "./helpers.ts";

const TOKEN = "dashboard-test-token";
let srv: LoralabServer;
let browser: Browser;
let url: string;

beforeAll(async () => {
  const out = tempDir("dashboard");
  const template = tinyConfig(out, {
    name: "from-the-dashboard",
    method: { kind: "lora", rank: 4 },
    train: { steps: 30, checkpoint_every: 10, micro_batch: 4 },
  });
  delete template.out_dir;
  srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token: TOKEN,
    template,
  });
  url = srv.listen(0);
  browser = await launchChromium();
}, 300_000);

afterAll(async () => {
  await browser?.close();
  await srv?.close();
});

const plotted = async (page: Page) => (await chartRows(page, "loss")).length;

test("log in, start a tiny run, watch its loss curve grow, see it finish", async () => {
  // a wrong token is refused first, then the right one logs in
  const { page, errors } = await dashboardPage(browser, url, TOKEN, { wrongFirst: true });
  // the session is an HttpOnly cookie: the page's script cannot read it
  expect(await page.evaluate(() => document.cookie)).toBe("");
  await page.waitForFunction(() =>
    (document.querySelector("#config") as HTMLTextAreaElement).value.includes("from-the-dashboard"),
  );
  await page.click("#start");
  await page.waitForFunction(() => document.querySelector("#start-msg")?.textContent?.startsWith("queued"));
  // the curve grows point by point as progress events arrive
  const counts: number[] = [];
  for (let i = 0; i < 200; i++) {
    const n = await plotted(page);
    if (!counts.length || n !== counts[counts.length - 1]) counts.push(n);
    if ((await page.textContent("#d-status")) === "completed") break;
    await Bun.sleep(25);
  }
  await page.waitForFunction(() => document.querySelector("#d-status")?.textContent === "completed", undefined, {
    timeout: 60_000,
  });
  await page.waitForFunction(() => document.querySelector("#d-progress")?.textContent?.startsWith("step 30/30"));
  await chartHas(page, "loss", 30);
  expect(await plotted(page)).toBe(30);
  expect(counts.length).toBeGreaterThan(2); // seen growing, not only drawn at the end
  // one line, on axes with ticks
  expect(await page.$$eval("#chart-loss g.mark-line path", (ps) => ps.length)).toBe(1);
  expect((await page.$$eval("#chart-loss .role-axis-label text", (ts) => ts.length)) > 4).toBe(true);
  // the runs table shows it completed
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#runs tr")].some(
      (tr) => tr.textContent?.includes("from-the-dashboard") && tr.textContent.includes("completed"),
    ),
  );
  expect(errors).toEqual([]);
}, 180_000);
