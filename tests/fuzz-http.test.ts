// A bounded fuzz of the HTTP API with schemathesis (from the test venv: scripts/pyenv.ts), run
// against a real server on 127.0.0.1 from its own /api/openapi.json: a fixed seed and example
// count, valid and invalid requests for every operation. No request may get a 5xx, every
// response must have a documented status, content type and body shape, and every request the
// document calls invalid must be refused. The server side counts what it answered, so the
// totals do not rest on schemathesis's report.
import { expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createServer } from "loralab";
import { ROUTES } from "../packages/server/src/openapi.ts";
import { tempDir, testPython } from "./helpers.ts";

const TOKEN = "fuzz-token";
const EXAMPLES = 50;
const SEED = 16;
const ROUTE_COUNT = ROUTES.length;

/** A finished run's directory (docs/run-directory.md), imported by the server at start: the
 *  fuzz then reads real rows, files and an event stream that ends. */
function finishedRun(runs: string, id: string) {
  const dir = join(runs, id);
  mkdirSync(join(dir, "adapter"), { recursive: true });
  writeFileSync(
    join(dir, "run.json"),
    JSON.stringify({
      run_id: id,
      name: "fuzz",
      method: "lora",
      status: "completed",
      error: null,
      started_at: "20260101-000000-000",
      updated_at: "20260101-000100-000",
    }),
  );
  writeFileSync(join(dir, "config.json"), JSON.stringify({ name: "fuzz", method: { kind: "lora", rank: 4 } }));
  writeFileSync(
    join(dir, "metrics.jsonl"),
    `${[1, 2, 3]
      .map((step) =>
        JSON.stringify({ step, loss: 3 - step / 2, lr: 1e-3, grad_norm: 1, tokens_per_s: 100, tokens: 128 * step }),
      )
      .join("\n")}\n`,
  );
  writeFileSync(join(dir, "adapter", "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r: 4 }));
}

test("schemathesis: every operation, valid and invalid requests: no 5xx, responses as documented, invalid requests refused", async () => {
  const python = testPython();
  const out = tempDir("fuzz");
  finishedRun(join(out, "runs"), "fuzz-run");
  const srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [out],
    token: TOKEN,
    run: false,
    log: () => {},
  });
  expect(srv.imported.map((r) => r.action)).toEqual(["imported"]);
  // the server's own tally of what it answered
  const statuses = new Map<number, number>();
  const errors: string[] = [];
  const http = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    idleTimeout: 30,
    async fetch(req) {
      const res = await srv.fetch(req);
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      if (res.status >= 500) errors.push(`${req.method} ${req.url} -> ${res.status}: ${await res.clone().text()}`);
      return res;
    },
  });
  const base = `http://127.0.0.1:${http.port}`;
  // every {id} is the finished run (unknown ids are tests/server-hardening.test.ts's). A config
  // that resolves needs files that exist under the roots, which no schema can say: a well-formed
  // one may get 422 naming the field (schemathesis's own advice for such rules, `st explain ST202`);
  // so may a sweep's base, and an evaluation of a run with no train.eval_tasks to default to
  writeFileSync(
    join(out, "schemathesis.toml"),
    `[parameters]
"path.id" = "fuzz-run"

[[operations]]
include-name = "POST /api/runs"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-name = "POST /api/sweeps"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-name = "POST /api/runs/{id}/evaluate"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
`,
  );
  const t0 = performance.now();
  const st = Bun.spawn(
    [
      python,
      "-m",
      "schemathesis.cli",
      "--config-file",
      join(out, "schemathesis.toml"),
      "run",
      `${base}/api/openapi.json`,
      "--checks",
      "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance,missing_required_header,unsupported_method,ignored_auth",
      "--mode",
      "all",
      "--phases",
      "examples,coverage,fuzzing",
      "--max-examples",
      String(EXAMPLES),
      "--seed",
      String(SEED),
      "--generation-deterministic",
      "--header",
      `Authorization: Bearer ${TOKEN}`,
      "--request-timeout",
      "10",
      "--workers",
      "1",
      "--warnings",
      "off",
      "--continue-on-failure",
      "--report",
      "ndjson",
      "--report-ndjson-path",
      join(out, "report.ndjson"),
    ],
    { cwd: out, stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1", PYTHONUNBUFFERED: "1" } },
  );
  const killer = setTimeout(() => st.kill(9), 150_000);
  const [stdout, stderr, code] = await Promise.all([
    new Response(st.stdout).text(),
    new Response(st.stderr).text(),
    st.exited,
  ]);
  clearTimeout(killer);
  const seconds = (performance.now() - t0) / 1000;
  http.stop(true);
  await srv.close();
  // schemathesis's own account: each check's verdicts, and which operations each phase ran
  const checks = new Map<string, { passed: number; failed: number }>();
  const fuzzed = new Set<string>();
  const failures: string[] = [];
  const report = join(out, "report.ndjson");
  for (const line of existsSync(report) ? readFileSync(report, "utf8").split("\n") : []) {
    if (!line.startsWith('{"ScenarioFinished"')) continue;
    const ev = JSON.parse(line).ScenarioFinished as {
      phase: string;
      status: string;
      recorder: { label: string; checks?: Record<string, { name: string; status: string }[]> };
    };
    if (ev.phase === "fuzzing" && ev.status === "success") fuzzed.add(ev.recorder.label);
    for (const list of Object.values(ev.recorder.checks ?? {}))
      for (const c of list) {
        const n = checks.get(c.name) ?? { passed: 0, failed: 0 };
        if (c.status === "success") n.passed++;
        else {
          n.failed++;
          failures.push(`${ev.recorder.label}: ${c.name}`);
        }
        checks.set(c.name, n);
      }
  }
  const total = [...statuses.values()].reduce((a, b) => a + b, 0);
  const fives = [...statuses].filter(([s]) => s >= 500).reduce((a, [, n]) => a + n, 0);
  console.log(
    `fuzz: ${total} requests in ${seconds.toFixed(1)} s; statuses ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}; 5xx: ${fives}`,
  );
  console.log(`fuzz: checks ${JSON.stringify(Object.fromEntries(checks))}`);
  if (code !== 0 || failures.length) console.log(stdout.slice(-12000), stderr.slice(-4000));
  expect(errors).toEqual([]);
  expect([...new Set(failures)]).toEqual([]);
  expect(code).toBe(0);
  // every operation but the document itself went through the fuzzing phase, and was judged
  expect(fuzzed.size).toBe(ROUTE_COUNT - 1);
  for (const c of [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
  ])
    expect([c, (checks.get(c)?.passed ?? 0) > 500]).toEqual([c, true]);
  expect(total).toBeGreaterThan(1000);
  expect(seconds).toBeLessThan(90);
}, 200_000);
