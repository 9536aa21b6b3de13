// The dashboard end to end in headless Chromium (Debian's `chromium`, installed with apt-get
// when missing, driven by playwright-core): log in, start a tiny run, watch its loss curve
// grow over Server-Sent Events, see it finish.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { createServer, type LoralabServer } from "loralab";
import { launchChromium, root, tempDir, tinyConfig } from "./helpers.ts";

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

test("log in, start a tiny run, watch its loss curve grow, see it finish", async () => {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("401")) errors.push(m.text());
  });
  await page.goto(url);
  await page.waitForSelector("#login:not(.hidden)");
  await page.fill("#token", "wrong");
  await page.click("#login button");
  await page.waitForFunction(() => document.querySelector("#login-error")?.textContent === "wrong token");
  await page.fill("#token", TOKEN);
  await page.click("#login button");
  await page.waitForSelector("#app:not(.hidden)");
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
    const n = await page.evaluate(
      () => (document.querySelector("#loss")?.getAttribute("points") ?? "").split(" ").filter(Boolean).length,
    );
    if (!counts.length || n !== counts[counts.length - 1]) counts.push(n);
    if ((await page.textContent("#d-status")) === "completed") break;
    await Bun.sleep(25);
  }
  await page.waitForFunction(() => document.querySelector("#d-status")?.textContent === "completed", undefined, {
    timeout: 60_000,
  });
  const final = await page.evaluate(
    () => (document.querySelector("#loss")?.getAttribute("points") ?? "").split(" ").filter(Boolean).length,
  );
  expect(final).toBe(30);
  expect(counts.length).toBeGreaterThan(2); // seen growing, not only drawn at the end
  expect(await page.textContent("#loss-label")).toContain("at step 30");
  // the runs table shows it completed
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#runs tr")].some(
      (tr) => tr.textContent?.includes("from-the-dashboard") && tr.textContent.includes("completed"),
    ),
  );
  expect(errors).toEqual([]);
}, 180_000);
