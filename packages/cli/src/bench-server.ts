// `bun run bench server [SECONDS]`: the API under load while a tiny run trains. One run
// trains alone, then an identical one under 200 connections polling GET /api/runs/:id at
// 200 requests/s in all plus 20 SSE clients (scripts/bench-server-load.ts, its own process,
// over loopback); prints latency p50/p99, errors, and training tokens/s with and without load.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "@loralab/server";

const root = new URL("../../..", import.meta.url).pathname;

export async function benchServer(args: string[]): Promise<number> {
  const seconds = Number(args[0] ?? 60);
  const out = mkdtempSync(join(tmpdir(), "loralab-bench-server-"));
  const tiny = join(root, "datasets/tiny");
  const token = "bench-token";
  const srv = await createServer({
    store: { path: join(out, "store.db") },
    runsDir: join(out, "runs"),
    roots: [root, out],
    token,
  });
  const url = srv.listen(0);
  // long enough to cover the load window: steps are sized from a short calibration run
  const config = (steps: number) => ({
    name: "bench",
    seed: 0,
    model: { config: join(tiny, "config.json"), tokenizer: join(tiny, "tokenizer.json") },
    data: { train: join(tiny, "code.jsonl"), text_field: "content", seq_len: 128, cache_dir: join(out, "cache") },
    method: { kind: "lora" as const, rank: 16 },
    train: { steps, micro_batch: 16, checkpoint_every: 0, log_every: 1 },
  });
  const runTo = async (steps: number, during?: (id: string) => Promise<string>) => {
    const r = await srv.runner.submit(config(steps));
    while ((await srv.store.getRun(r.id))!.status !== "running") await Bun.sleep(20);
    const load = during ? during(r.id) : undefined;
    let run = await srv.store.getRun(r.id);
    while (!["completed", "failed", "cancelled"].includes(run!.status)) {
      await Bun.sleep(100);
      run = await srv.store.getRun(r.id);
    }
    if (run!.status !== "completed") throw new Error(`bench run ${r.id} ${run!.status}: ${run!.error}`);
    const tps = (await srv.store.metrics(r.id, { name: "tokens_per_s" })).map((m) => m.value).slice(2); // skip warm-up steps
    tps.sort((a, b) => a - b);
    return {
      id: r.id,
      median: tps[Math.floor(tps.length / 2)]!,
      steps: tps.length + 2,
      load: load ? JSON.parse(await load) : null,
    };
  };
  try {
    const cal = await runTo(12);
    const perStep = (128 * 16) / cal.median;
    const steps = Math.ceil((seconds + 10) / perStep);
    console.log(
      `tiny LoRA run (rank 16, 16×128 tokens a step): ${cal.median.toFixed(0)} tok/s, ${steps} steps cover ${seconds} s of load`,
    );
    const alone = await runTo(steps);
    const loaded = await runTo(steps, async (id) => {
      const p = Bun.spawn(
        [process.execPath, join(root, "scripts/bench-server-load.ts"), url, token, id, "200", "20", String(seconds)],
        { stdout: "pipe", stderr: "inherit" },
      );
      return new Response(p.stdout).text();
    });
    const l = loaded.load as {
      requests: number;
      errors: number;
      rate: number;
      p50_ms: number;
      p99_ms: number;
      max_ms: number;
      sse_events: number;
    };
    console.log(`\nload: 200 connections polling GET /api/runs/:id + 20 SSE clients, ${seconds} s, loopback`);
    console.log(
      `  requests ${l.requests} (${l.rate.toFixed(1)}/s), errors ${l.errors}, latency p50 ${l.p50_ms.toFixed(2)} ms, p99 ${l.p99_ms.toFixed(2)} ms, max ${l.max_ms.toFixed(1)} ms; SSE events received ${l.sse_events}`,
    );
    console.log(
      `training tokens/s (median over steps): alone ${alone.median.toFixed(0)}, under load ${loaded.median.toFixed(0)}: the load costs ${((1 - loaded.median / alone.median) * 100).toFixed(1)} %`,
    );
    console.log(
      `targets: zero errors (${l.errors === 0 ? "met" : "missed"}), p99 < 50 ms (${l.p99_ms < 50 ? "met" : "missed"}), cost < 10 % (${1 - loaded.median / alone.median < 0.1 ? "met" : "missed"})`,
    );
    return 0;
  } finally {
    await srv.close();
    rmSync(out, { recursive: true, force: true });
  }
}
