// The dashboard end to end in headless Chromium (Debian's `chromium`, installed with apt-get
// when missing, driven by playwright-core): log in, start a tiny run, watch its loss curve
// grow over Server-Sent Events, see it finish.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { createServer, type LoralabServer } from "loralab";
import { root, tempDir, tinyConfig } from "./helpers.ts";

function chromiumPath(): string {
  for (const p of ["/usr/bin/chromium", "/usr/bin/chromium-browser"]) if (existsSync(p)) return p;
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  let r = spawnSync("apt-get", ["install", "-y", "-q", "chromium"], { env, encoding: "utf8" });
  if (r.status !== 0) {
    spawnSync("apt-get", ["update", "-q"], { env });
    r = spawnSync("apt-get", ["install", "-y", "-q", "chromium"], { env, encoding: "utf8" });
  }
  if (!existsSync("/usr/bin/chromium")) throw new Error(`the dashboard test needs Debian's chromium: apt-get install chromium failed: ${r.stderr}`);
  return "/usr/bin/chromium";
}

const TOKEN = "dashboard-test-token";
let srv: LoralabServer;
let browser: Browser;
let url: string;

beforeAll(async () => {
  const out = tempDir("dashboard");
  const template = tinyConfig(out, { name: "from-the-dashboard", method: { kind: "lora", rank: 4 }, train: { steps: 30, checkpoint_every: 10, micro_batch: 4 } });
  delete template.out_dir;
  srv = await createServer({ store: { path: join(out, "store.db") }, runsDir: join(out, "runs"), roots: [root, out], token: TOKEN, template });
  url = srv.listen(0);
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
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
  await page.waitForFunction(() => (document.querySelector("#config") as HTMLTextAreaElement).value.includes("from-the-dashboard"));
  await page.click("#start");
  await page.waitForFunction(() => document.querySelector("#start-msg")?.textContent?.startsWith("queued"));
  // the curve grows point by point as progress events arrive
  const counts: number[] = [];
  for (let i = 0; i < 200; i++) {
    const n = await page.evaluate(() => (document.querySelector("#loss")?.getAttribute("points") ?? "").split(" ").filter(Boolean).length);
    if (!counts.length || n !== counts[counts.length - 1]) counts.push(n);
    if ((await page.textContent("#d-status")) === "completed") break;
    await Bun.sleep(25);
  }
  await page.waitForFunction(() => document.querySelector("#d-status")?.textContent === "completed", undefined, { timeout: 60_000 });
  const final = await page.evaluate(() => (document.querySelector("#loss")?.getAttribute("points") ?? "").split(" ").filter(Boolean).length);
  expect(final).toBe(30);
  expect(counts.length).toBeGreaterThan(2); // seen growing, not only drawn at the end
  expect(await page.textContent("#loss-label")).toContain("at step 30");
  // the runs table shows it completed
  await page.waitForFunction(() => [...document.querySelectorAll("#runs tr")].some((tr) => tr.textContent?.includes("from-the-dashboard") && tr.textContent.includes("completed")));
  expect(errors).toEqual([]);
}, 180_000);
