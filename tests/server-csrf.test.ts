// Cross-site request forgery from another port of localhost (issue 16 item 4), in headless
// Chromium as the issue confirmed it: the user is logged in to the dashboard; a page served by
// some other local process (a dev server on another port: the same site, so the SameSite=Strict
// cookie goes along) posts a run config as text/plain and as a form, neither of which a browser
// preflights. Nothing may be queued.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { createServer, type LoralabServer } from "loralab";
import { launchChromium, root, tempDir, tinyConfig } from "./helpers.ts";

const TOKEN = "csrf-test-token";
let srv: LoralabServer;
let browser: Browser;
let attacker: ReturnType<typeof Bun.serve>;
let api: string;

beforeAll(async () => {
  const out = tempDir("csrf");
  srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token: TOKEN,
    run: false,
    importRuns: false,
  });
  const cfg = tinyConfig(out);
  delete cfg.out_dir;
  api = srv.listen(0);
  // a text/plain form sends name=value: a JSON config whose last string swallows the "="
  const { name: _, ...rest } = cfg;
  const formName = `${JSON.stringify(rest).slice(0, -1)},"name":"a`;
  const page = `<!doctype html><body>
    <form id="f" method="POST" action="${api}/api/runs" enctype="text/plain"><input name='${formName}' value='b"}'><button id="go">go</button></form>
    <script>
      (async () => {
        const body = ${JSON.stringify(JSON.stringify(cfg))};
        const sent = [];
        for (const type of ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]) {
          try { await fetch("${api}/api/runs", { method: "POST", mode: "no-cors", credentials: "include", headers: { "Content-Type": type }, body }); sent.push(type); } catch (e) { sent.push(type + ": " + e); }
        }
        // and a JSON one: the browser must preflight it, and nothing answers the preflight with CORS
        try { await fetch("${api}/api/runs", { method: "POST", credentials: "include", headers: { "Content-Type": "application/json" }, body }); sent.push("json"); } catch (e) { sent.push("json: blocked"); }
        document.title = "sent " + sent.join("; ");
      })();
    </script></body>`;
  attacker = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    fetch: () => new Response(page, { headers: { "Content-Type": "text/html" } }),
  });
  browser = await launchChromium();
}, 300_000);

afterAll(async () => {
  await browser?.close();
  await attacker?.stop(true);
  await srv?.close();
});

test("a page on another localhost port cannot queue a run with the user's session", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  // the user logs in to the dashboard (its own origin): the session cookie is set
  await page.goto(api);
  const login = await page.evaluate(
    async (token) =>
      (
        await fetch("/api/session", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token }),
        })
      ).status,
    TOKEN,
  );
  expect(login).toBe(204);
  expect(await page.evaluate(async () => (await fetch("/api/runs")).status)).toBe(200); // the cookie works on its own origin
  // the attacker's page, on another port of the same host
  await page.goto(`http://127.0.0.1:${attacker.port}/`);
  await page.waitForFunction(() => document.title.startsWith("sent "), undefined, { timeout: 20_000 });
  expect(await page.title()).toContain("json: blocked");
  expect(await srv.store.listRuns()).toEqual([]);
  // the form, too (a top-level navigation: it is the page's own POST)
  await page.goto(`http://127.0.0.1:${attacker.port}/`);
  await Promise.all([page.waitForURL(`${api}/api/runs`, { timeout: 20_000 }), page.click("#go")]);
  expect(await page.textContent("body")).toMatch(/Forbidden|Unsupported Media Type/);
  expect(await srv.store.listRuns()).toEqual([]);
  await ctx.close();
}, 120_000);
