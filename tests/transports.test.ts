// One protocol, two transports: the same request lines sent to the napi addon (in this process)
// and to the sidecar worker (its own process) come back as the same lines — every reply, every
// progress event and every failure — once the two runs' own directories, the engine handles
// and wall-clock figures are written alike. Both run loralab_core::api's one dispatch.
import { expect, test } from "bun:test";
import { join } from "node:path";
import * as native from "@loralab/native";
import { sidecarPath } from "@loralab/native/sidecar";
import { InProcessEngine, ProtocolError, quick, SidecarEngine } from "@loralab/engine";
import { tempDir, tinyConfig, tinyModel } from "./helpers.ts";

type Transport = { name: string; send: (line: string) => Promise<string[]>; close: () => Promise<void> };

function addon(): Transport {
  return {
    name: "addon",
    send: async (line) => {
      // every line, the last included, comes through the callback, in order
      const lines: string[] = [];
      const answer = await native.call(line, (l) => lines.push(l));
      while (lines.at(-1) !== answer) await Bun.sleep(1);
      return lines;
    },
    close: async () => {},
  };
}

async function sidecar(): Promise<Transport> {
  const proc = Bun.spawn([sidecarPath("cpu")], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const nextLine = async (): Promise<string> => {
    for (;;) {
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error(`sidecar closed its stdout; buffered: ${buf}`);
      buf += dec.decode(value, { stream: true });
    }
  };
  expect(JSON.parse(await nextLine())).toMatchObject({ event: "ready", protocol: 2 });
  return {
    name: "sidecar",
    send: async (line) => {
      proc.stdin.write(`${line}\n`);
      proc.stdin.flush();
      const out: string[] = [];
      for (;;) {
        const l = await nextLine();
        out.push(l);
        if (/"event":"(result|error)"/.test(l)) return out;
      }
    },
    close: async () => {
      proc.stdin.end();
      await proc.exited;
    },
  };
}

/** Lines made comparable: this transport's directory, the engine handles and timings written alike. */
function normalise(lines: string[], out: string): unknown[] {
  const walk = (v: unknown, key = ""): unknown => {
    if (typeof v === "string" && ["started_at", "updated_at"].includes(key)) return "<time>";
    // (a failure lists the engines loaded, and other tests in this process may hold some)
    if (typeof v === "string")
      return v
        .split(out)
        .join("<out>")
        .replace(/^engine-\d+$/, "engine-#")
        .replace(/loaded: \[[^\]]*\]/, "loaded: […]");
    if (typeof v === "number" && ["elapsed_s", "tokens_per_s", "seconds"].includes(key)) return 0;
    if (Array.isArray(v)) return v.map((x) => walk(x));
    if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, k)]));
    return v;
  };
  return lines.map((l) => walk(JSON.parse(l)));
}

/** The request list: every kind of op, and every kind of failure, for one transport's directory. */
function requests(out: string, model: string, handle: () => string): (() => object)[] {
  const cfg = tinyConfig(out, {
    run_id: "r",
    method: { kind: "lora", rank: 4 },
    train: { steps: 3, checkpoint_every: 2 },
  });
  const line = (id: number, op: string, fields: object = {}) => ({ v: 2, id, op, ...fields });
  return [
    () => line(1, "resolve_config", { config: cfg }),
    () => line(2, "pass_at_k", { n: 10, c: 3, k: 2 }),
    () => line(3, "pareto_frontier", { x: [0.1, 0.2, 0.3], y: [0.9, 0.5, 0.7] }),
    () => line(4, "singular_values", { a: [3, 0, 0, 0, 2, 0], m: 2, n: 3 }),
    () => line(5, "load", { model }),
    () => line(6, "count_tokens", { engine: handle(), text: "def add(a, b): return a + b" }),
    () => line(7, "generate", { engine: handle(), prompts: ["x = 1", "def f("], options: { max_new_tokens: 4 } }),
    () => line(8, "loglik", { engine: handle(), requests: [{ context: "x =", continuation: " 1" }], batch_size: 2 }),
    () => line(9, "unload", { engine: handle() }),
    () => line(10, "train", { config: cfg }),
    () => line(11, "run_directory", { run_dir: join(out, "r") }),
    () =>
      line(12, "analyze", {
        base: join(out, "r/base"),
        adapter: join(out, "r/adapter"),
        modules: ["q_proj"],
        threads: 1,
      }),
    () => line(13, "merge", { base: join(out, "r/base"), adapter: join(out, "r/adapter"), out: join(out, "merged") }),
    () => line(14, "eval_loss", { model: join(out, "merged"), data: { ...cfg.data, cache_dir: join(out, "cache") } }),
    () => line(15, "random_baseline", { n: 8, cs: [0.5], seed: 1 }),
    // failures: a config field, a missing engine, a wrong field type, an unknown op, the wrong version
    () => line(16, "train", { config: { ...cfg, run_id: "bad", method: { kind: "lora", rank: 0 } } }),
    () => line(17, "generate", { engine: "engine-999", prompts: ["x"] }),
    () => line(18, "loglik", { engine: handle(), requests: "nope" }),
    () => line(19, "fly"),
    () => ({ v: 1, id: 20, op: "pass_at_k", n: 1, c: 1, k: 1 }),
    // JSON has no NaN or ±∞: they travel as strings, both ways
    () => line(21, "explained_variance", { sigma: [1, "NaN"], total_sq: "Infinity" }),
  ];
}

async function runAll(t: Transport, model: string): Promise<unknown[][]> {
  const out = tempDir(`transports-${t.name}`);
  let engine = "engine-0";
  const all: unknown[][] = [];
  try {
    for (const make of requests(out, model, () => engine)) {
      const lines = await t.send(JSON.stringify(make()));
      const last = JSON.parse(lines[lines.length - 1]!);
      if (last.data?.engine) engine = last.data.engine;
      all.push(normalise(lines, out));
    }
  } finally {
    await t.close();
  }
  return all;
}

test("the same request list through the addon and the sidecar gives identical replies, events and failures", async () => {
  const model = await tinyModel();
  const inProcess = await runAll(addon(), model);
  const worker = await runAll(await sidecar(), model);
  expect(worker.length).toBe(21);
  for (let i = 0; i < inProcess.length; i++)
    expect({ request: i + 1, lines: worker[i] }).toEqual({ request: i + 1, lines: inProcess[i] });

  // and the answers are what they should be, not merely alike
  // biome-ignore lint/suspicious/noExplicitAny: the answers are JSON read by path, checked by value below
  type Answer = { event: string; data?: any; error?: any };
  const last = (i: number) => inProcess[i - 1]!.at(-1) as Answer;
  expect(last(2).data).toBeCloseTo(1 - (7 * 6) / (10 * 9), 12); // 1 − C(7,2)/C(10,2) = 8/15
  expect(last(3).data).toEqual([0, 2]); // (0.1, 0.9) and (0.3, 0.7) are not dominated; (0.2, 0.5) is
  expect(last(4).data).toEqual([3, 2]);
  expect(last(5).data.engine).toBe("engine-#");
  const train = inProcess[9]!.map((l) => (l as { data: { type?: string } }).data.type ?? "result");
  expect(train).toEqual([
    "prepared",
    "start",
    "progress",
    "progress",
    "checkpoint",
    "progress",
    "checkpoint",
    "result",
  ]);
  expect(last(10).data).toMatchObject({ status: "completed", steps: 3, run_dir: "<out>/r", output: "<out>/r/adapter" });
  expect(last(11).data).toMatchObject({ status: "completed", last_checkpoint: "<out>/r/checkpoints/step-000003" });
  expect(last(11).data.checkpoints.map((c: { step: number }) => c.step)).toEqual([2, 3]);
  expect(inProcess[11]!.length).toBe(last(12).data.matrices.length + 1); // a matrix event per matrix, then the reply
  expect(last(16).error).toMatchObject({ code: "config", field: "method.rank" });
  expect(last(17).error).toMatchObject({ code: "config", field: "engine" });
  expect(last(18).error).toMatchObject({ code: "config", field: "requests" });
  expect(last(19).error).toMatchObject({ code: "protocol" });
  expect(last(19).error.message).toContain("unknown op `fly`");
  expect(last(20).error.message).toContain("protocol version 1 is not spoken here");
  expect(last(21).data).toEqual([0, "NaN"]); // 1/∞, then NaN
});

test("a cancel sent as a train is accepted, before it has started, stops it in both transports; shutdown is refused in process", async () => {
  for (const make of [async () => new InProcessEngine(), () => SidecarEngine.start({ device: "cpu" })]) {
    const engine = await make();
    const out = tempDir(`transports-cancel-${engine.transport}`);
    const config = tinyConfig(out, { run_id: "c", train: { steps: 40, checkpoint_every: 0 } });
    const stop = new AbortController();
    stop.abort(); // before the request is even sent
    const s = await engine.request("train", { config }, { signal: stop.signal });
    await engine.close();
    // stopped at its first step boundary, with a checkpoint, not trained to the end
    expect([engine.transport, s.status, s.steps < 40]).toEqual([engine.transport, "cancelled", true]);
    expect(s.last_checkpoint).toMatch(/checkpoints\/step-\d{6}$/);
  }
  expect(() => quick("shutdown", {})).toThrow(ProtocolError);
  expect(() => quick("shutdown", {})).toThrow(/in process, unload what you loaded/);
});
