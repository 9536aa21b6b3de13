// Parity as a test, not a port: every request loralab builds for GSM8K, HellaSwag, WinoGrande and
// ARC-Challenge, at 0-shot and k-shot, equals the one lm-eval 0.4.4 itself builds
// (scripts/lm_eval_requests.py runs its task YAMLs and ContextSampler on the same records). On
// the fixtures and on generated records that carry what the preprocessing must get right:
// brackets across \r and U+2028, " [title]", double spaces, ligatures and title-case first
// letters for str.capitalize, evaluated records repeated in the few-shot split. (HumanEval is
// not an lm-eval 0.4.4 task; it follows bigcode's harness, tests/eval.test.ts.)
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readRecords } from "@loralab/data";
import { GSM8K_STOP, gsm8kPrompts, type McTask, mcDoc, mcTaskRequests } from "@loralab/eval";
import { root, tempDir, testPython } from "./helpers.ts";

type Rec = Record<string, unknown>;

async function rows(path: string): Promise<Rec[]> {
  const out = [];
  for await (const r of readRecords(path)) out.push(r);
  return out;
}

/** mulberry32: the generated records are the same every run. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(xs: T[]) => xs[Math.floor(next() * xs.length)]!;
  return { next, pick, int: (n: number) => Math.floor(next() * n) };
}

const WORDS = ["the", "owl", "river", "ﬁsh", "ǆungle", "école", "Ωmega", "run", "5", "über", "ǈama", "ŉ", "ß"];
const ODD = [
  " [title] ",
  "[header] ",
  " [step] ",
  "[a\rb] ",
  "[x\u2028y] ",
  "[sub\u2029steps] ",
  "  ",
  " ",
  "\t",
  "[unclosed ",
];

function phrase(r: ReturnType<typeof rng>, n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += r.pick(WORDS) + (r.next() < 0.3 ? r.pick(ODD) : " ");
  return s;
}

function generated(task: McTask | "gsm8k", n: number, seed: number): Rec[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    if (task === "hellaswag")
      return {
        ind: i,
        activity_label: phrase(r, 2).trim() || "Act",
        ctx_a: phrase(r, 6),
        ctx_b: r.next() < 0.2 ? "" : phrase(r, 3),
        ctx: "",
        endings: Array.from({ length: 4 }, () => phrase(r, 4)),
        source_id: `s${i}`,
        split: "val",
        split_type: "indomain",
        label: String(r.int(4)),
      };
    if (task === "winogrande") {
      const a = `${phrase(r, 4)}_${phrase(r, 3)}`;
      return { sentence: a, option1: r.pick(WORDS), option2: r.pick(WORDS), answer: String(1 + r.int(2)) };
    }
    if (task === "arc_challenge") {
      const k = 3 + r.int(3);
      const labels = r.next() < 0.5 ? ["A", "B", "C", "D", "E"].slice(0, k) : ["1", "2", "3", "4", "5"].slice(0, k);
      return {
        id: `q${i}`,
        question: phrase(r, 5).trim(),
        choices: { text: labels.map(() => phrase(r, 2)), label: labels },
        answerKey: r.pick(labels),
      };
    }
    const x = r.int(90);
    return { question: `${phrase(r, 5)}${x}?`, answer: `${phrase(r, 4)}\n#### ${x}` };
  });
}

function jsonl(dir: string, name: string, recs: Rec[]): string {
  const f = join(dir, name);
  writeFileSync(f, `${recs.map((x) => JSON.stringify(x)).join("\n")}\n`);
  return f;
}

interface Job {
  task: McTask | "gsm8k";
  shots: number;
  eval: string;
  train: string;
  out: string;
}

/** Every job through lm-eval in one Python process (its task index takes seconds to build). */
async function lmEval(jobs: Job[]): Promise<void> {
  const file = join(tempDir("lmeval-jobs"), "jobs.json");
  writeFileSync(file, JSON.stringify(jobs));
  const p = Bun.spawn([testPython(), join(root, "scripts/lm_eval_requests.py"), file], {
    env: { ...process.env, HF_DATASETS_OFFLINE: "1", HF_HUB_OFFLINE: "1", HF_DATASETS_CACHE: tempDir("dscache") },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [err, code] = await Promise.all([new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`lm_eval_requests.py: exit ${code}\n${err.slice(-3000)}`);
}

const SPLIT: Record<McTask | "gsm8k", [string, string]> = {
  gsm8k: ["gsm8k/test.jsonl", "gsm8k/train.jsonl"],
  hellaswag: ["hellaswag/validation.jsonl", "hellaswag/train.jsonl"],
  winogrande: ["winogrande/validation.jsonl", "winogrande/train.jsonl"],
  arc_challenge: ["arc_challenge/test.jsonl", "arc_challenge/train.jsonl"],
};
/** k-shot settings: GSM8K's 5, the study's 25 for ARC, 10 for HellaSwag, 5 for WinoGrande. */
const SHOTS: Record<McTask | "gsm8k", number> = { gsm8k: 5, hellaswag: 10, winogrande: 5, arc_challenge: 25 };

const TASKS = ["gsm8k", "hellaswag", "winogrande", "arc_challenge"] as const;
const jobs: Job[] = [];

beforeAll(async () => {
  const out = tempDir("lmeval-out");
  const fx = join(root, "tests/fixtures/eval");
  for (const task of TASKS) {
    const dir = tempDir(`parity-${task}`);
    const evalGen = generated(task, 40, 7);
    // the few-shot split holds three evaluated records as they are: the draw must drop them
    const trainGen = [...generated(task, 37, 11), evalGen[3]!, evalGen[17]!, evalGen[30]!];
    const sets: [string, string][] = [
      [join(fx, SPLIT[task][0]), join(fx, SPLIT[task][1])],
      [jsonl(dir, "eval.jsonl", evalGen), jsonl(dir, "train.jsonl", trainGen)],
    ];
    for (const [si, [evalFile, trainFile]] of sets.entries()) {
      const trainN = (await rows(trainFile)).length;
      for (const shots of [0, Math.min(SHOTS[task], trainN - 1)])
        jobs.push({ task, shots, eval: evalFile, train: trainFile, out: join(out, `${task}-${si}-${shots}.json`) });
    }
  }
  await lmEval(jobs);
}, 300_000);

describe("requests equal lm-eval 0.4.4's own", () => {
  for (const task of TASKS) {
    test(`${task}: fixtures and 40 generated documents, 0-shot and ${SHOTS[task]}-shot`, async () => {
      let compared = 0;
      for (const j of jobs.filter((x) => x.task === task)) {
        const want = JSON.parse(readFileSync(j.out, "utf8")) as unknown[];
        const evalRows = await rows(j.eval);
        const trainRows = await rows(j.train);
        let mine: unknown[];
        if (task === "gsm8k") {
          const doc = (x: Rec) => ({ question: String(x.question), answer: String(x.answer) });
          mine = gsm8kPrompts(evalRows.map(doc), trainRows.map(doc), j.shots).map((p) => [p.prompt, GSM8K_STOP]);
        } else {
          const docs = evalRows.map((x) => mcDoc(task, x));
          const train = trainRows.map((x) => mcDoc(task, x));
          mine = mcTaskRequests(task, docs, evalRows, train, trainRows, j.shots).requests.map((rs) =>
            rs.map((q) => [q.context, q.continuation]),
          );
        }
        expect(mine.length).toBe(evalRows.length);
        for (let i = 0; i < mine.length; i++) expect([i, mine[i]]).toEqual([i, want[i]]);
        compared += mine.length;
      }
      // fixtures and generated records, each at 0-shot and k-shot
      expect(jobs.filter((x) => x.task === task).length).toBe(4);
      expect(compared).toBeGreaterThanOrEqual(2 * 40);
    });
  }
});
