// Evaluation: the scoring rules against hand-computed values and Python's own semantics,
// HumanEval's real 164 problems through the sandbox, and the whole pipeline on fixtures.
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  defaultDataPath,
  describeForgetting,
  evaluate,
  FORGETTING_DEFAULT,
  fewshotPrefixes,
  flexibleExtract,
  gsm8kExactMatch,
  gsm8kPrompts,
  humanevalProgram,
  mcDoc,
  mcRequests,
  meanWithBootstrap,
  Model,
  passAtK,
  PyRandom,
  pyCapitalize,
  pyStrip,
  Sandbox,
  scoreHumanEval,
  scoreMcDoc,
  strictMatch,
  stopAtStopToken,
  type HumanEvalProblem,
  type McTask,
} from "@loralab/eval";
import { readRecords } from "@loralab/data";
import { tempDir, tinyConfig, tinyModel } from "./helpers.ts";

const repo = new URL("..", import.meta.url).pathname;
const fx = join(repo, "tests/fixtures/eval");

async function rows(path: string): Promise<Record<string, unknown>[]> {
  const out = [];
  for await (const r of readRecords(path)) out.push(r);
  return out;
}

/** A multiple-choice document as Python builds it from the fixture (tests/fixtures/eval/make.py). */
interface PythonDoc {
  requests: [string, string][];
  choices: string[];
  gold: number;
}
const MC: McTask[] = ["hellaswag", "winogrande", "arc_challenge"];
const pythonDocs = (): Record<McTask, PythonDoc[]> =>
  JSON.parse(readFileSync(join(fx, "expected.json"), "utf8")) as Record<McTask, PythonDoc[]>;

/** lm-eval's per-document scores, written out here: the choice with the highest log-likelihood
 *  (the first of equals) is gold for acc; the same after dividing by the choice's length in
 *  characters (Python's len: code points) for acc_norm, by its tokens for acc_per_token. */
function scoreByDefinition(doc: PythonDoc, ll: { logprob: number; tokens: number }[]) {
  const first = (xs: number[]) => xs.indexOf(Math.max(...xs));
  const lp = ll.map((l) => l.logprob);
  return {
    acc: Number(first(lp) === doc.gold),
    acc_norm: Number(first(lp.map((v, i) => v / [...doc.choices[i]!].length)) === doc.gold),
    acc_per_token: Number(first(lp.map((v, i) => v / ll[i]!.tokens)) === doc.gold),
  };
}

/** A metric over two documents: the mean, and meanWithBootstrap's stderr from CPython's random
 *  (seed 1234, 1000 resamples): 0 when both score the same, and for one of each
 *    python3 -c "import random,math; r=random.Random(1234); xs=[0,1]; ms=[sum(xs[r._randbelow(2)] for _ in
 *      range(2))/2 for _ in range(1000)]; m=sum(ms)/1000; print(math.sqrt(sum((x-m)**2 for x in ms)/999))"
 *    → 0.3553382406458192 */
function twoDocMetric(xs: number[]): { value: number; stderr: number } {
  expect(xs.length).toBe(2);
  return { value: (xs[0]! + xs[1]!) / 2, stderr: xs[0] === xs[1] ? 0 : 0.3553382406458192 };
}

/** The engine's log-likelihoods of Python's requests for these documents, asked for as the
 *  pipeline asks (one call, batches of 8), split per document. */
async function pythonLogliks(m: Model, docs: PythonDoc[]) {
  const flat = await m.loglikelihood(
    docs.flatMap((d) => d.requests.map(([context, continuation]) => ({ context, continuation }))),
    8,
  );
  const start = docs.map((_, i) => docs.slice(0, i).reduce((a, d) => a + d.requests.length, 0));
  return docs.map((d, i) => flat.slice(start[i], start[i]! + d.requests.length));
}

describe("pass@k", () => {
  test("matches hand-computed values", () => {
    expect(passAtK(10, 3, 1)).toBeCloseTo(0.3, 12);
    expect(passAtK(10, 3, 2)).toBeCloseTo(1 - 21 / 45, 12); // 1 − C(7,2)/C(10,2)
    expect(passAtK(5, 2, 3)).toBeCloseTo(1 - 1 / 10, 12); // 1 − C(3,3)/C(5,3)
    expect(passAtK(50, 0, 1)).toBe(0);
    expect(passAtK(50, 50, 10)).toBe(1);
    expect(passAtK(2, 1, 2)).toBe(1);
    expect(passAtK(200, 13, 100)).toBeCloseTo(
      1 -
        (() => {
          let p = 1;
          for (let i = 0; i < 100; i++) p *= (187 - i) / (200 - i);
          return p;
        })(),
      12,
    );
    expect(() => passAtK(5, 1, 6)).toThrow(/needs at least 6 samples/);
    expect(() => passAtK(5, 6, 1)).toThrow();
  });
});

describe("Python semantics", () => {
  test("str.strip, str.capitalize", () => {
    expect(pyStrip("\n\t def f():\n    pass\n\x0b\x1c ")).toBe("def f():\n    pass");
    expect(pyStrip("\ufeffx")).toBe("\ufeffx"); // BOM is not whitespace to Python
    expect(pyCapitalize("hELLO wORLD")).toBe("Hello world");
    expect(pyCapitalize("ßtraße")).toBe("Sstraße");
    expect(pyCapitalize("")).toBe("");
    // title case, not upper case, for the first character (Python: "ﬁsh".capitalize() == "Fish")
    expect(pyCapitalize("\u{fb01}sh")).toBe("Fish");
    expect(pyCapitalize("\u{1c6}EMAL")).toBe("\u{1c5}emal");
    expect(pyCapitalize("\u{10d0}\u{10d1}")).toBe("\u{10d0}\u{10d1}"); // Georgian: its own title case
    expect(pyCapitalize("\u{1fb3}X")).toBe("\u{1fbc}x"); // ᾳ → ᾼ, not ΑΙ
  });

  test("str.capitalize against the Python on PATH, for every character whose title case is not its upper case", () => {
    const py = Bun.spawnSync(
      [
        process.env.LORALAB_TEST_PYTHON ?? "python3",
        "-c",
        "import json\nprint(json.dumps([[cp, (chr(cp) + 'xY').capitalize()] for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and chr(cp).title() != chr(cp).upper()]))",
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    expect(py.stderr.toString()).toBe("");
    const cases = JSON.parse(py.stdout.toString()) as [number, string][];
    expect(cases.length).toBeGreaterThan(130); // 135 in CPython 3.11 (Unicode 14)
    const got = cases.map(([cp]) => [cp, pyCapitalize(`${String.fromCodePoint(cp)}xY`)]);
    expect(got).toEqual(cases);
  });

  test("HellaSwag's bracket removal: Python's `.` crosses \\r, U+2028 and U+2029, not \\n", () => {
    const q = (ctx: string) =>
      mcDoc("hellaswag", { activity_label: "A", ctx_a: ctx, ctx_b: "", endings: ["x", "y"], label: "0" }).contexts[0];
    expect(q("one [a\rb] two [c\u2028d\u2029e] three")).toBe("A: one two three");
    // a newline stops the match: the bracket stays
    expect(q("one [a\nb] two")).toBe("A: one [a\nb] two");
  });

  test("few-shot contexts for tasks without a few-shot split: lm-eval's k + 1 draw, the evaluated doc dropped", () => {
    const rec = (i: number) => ({ activity_label: "A", ctx_a: `doc ${i}`, ctx_b: "", endings: ["x", "y"], label: "0" });
    const train = Array.from({ length: 10 }, (_, i) => mcDoc("hellaswag", rec(i)));
    // evaluated docs 0, 2, 3 are train docs 7, 0, 1; doc 1 is new
    const docs = [rec(7), rec(100), rec(0), rec(1)].map((r) => mcDoc("hellaswag", r));
    // python3 -c "import random; r=random.Random(1234); eq={0:7,1:None,2:0,3:1}
    //   print([[x for x in r.sample(range(10),4) if x!=eq[d]][:3] for d in range(4)])"
    expect(fewshotPrefixes(docs, train, 3, { sameSplit: true }).map((p) => p.shots)).toEqual([
      [1, 0, 9],
      [9, 0, 1],
      [5, 3, 7],
      [0, 5, 7],
    ]);
    // a task with a few-shot split draws k, and still drops the evaluated doc (ContextSampler's
    // `x != doc`): print([[x for x in r.sample(range(10),3) if x!=eq[d]] for d in range(4)])
    expect(fewshotPrefixes(docs, train, 3).map((p) => p.shots)).toEqual([
      [1, 0],
      [1, 0, 9],
      [1, 5, 3],
      [0, 9, 8],
    ]);
    expect(fewshotPrefixes(docs, train, 3, { sameSplit: true })[0]!.prefix).toBe(
      [1, 0, 9].map((i) => `${train[i]!.shot}\n\n`).join(""),
    );
  });

  test("PyRandom reproduces Python's random.Random(seed).sample bit for bit", () => {
    // python3 -c "import random; r=random.Random(1234); print([r.sample(range(7473),5) for _ in range(3)])"
    const r = new PyRandom(1234);
    const idx = Array.from({ length: 7473 }, (_, i) => i);
    expect([r.sample(idx, 5), r.sample(idx, 5), r.sample(idx, 5)]).toEqual([
      [6374, 3610, 957, 61, 742],
      [7462, 6610, 4769, 286, 5501],
      [5677, 687, 806, 6279, 2905],
    ]);
    // the pool branch (small populations) and a seed wider than 32 bits
    const s = new PyRandom(1234);
    const ten = Array.from({ length: 10 }, (_, i) => i);
    expect([s.sample(ten, 5), s.sample(ten, 5)]).toEqual([
      [7, 1, 0, 9, 4],
      [0, 1, 8, 6, 2],
    ]);
    expect(
      s.sample(
        Array.from({ length: 40 }, (_, i) => i),
        25,
      ),
    ).toEqual([15, 1, 38, 37, 22, 30, 29, 9, 5, 31, 35, 3, 27, 0, 16, 39, 7, 2, 21, 17, 14, 33, 18, 25, 36]);
    const w = new PyRandom(2 ** 40 + 7);
    expect(w.getrandbits(32)).toBe(2635837658);
    expect(
      w.sample(
        Array.from({ length: 1000 }, (_, i) => i),
        3,
      ),
    ).toEqual([765, 834, 960]);
  });
});

describe("GSM8K (lm-eval v0.4.4 filters and exact_match)", () => {
  test("strict-match takes the first '#### N', flexible-extract the last number", () => {
    const cases: [string, string, string][] = [
      ["so 3 + 4 = 7 apples.\n#### 7", "7", "7"],
      ["He pays $1,234.50 in total.\n#### 1,234.50", "1,234.50", "1,234.50"],
      ["The balance is -3 dollars.\n#### -3\n\nQuestion: next", "-3", "-3"],
      ["Each piece is 3.75 m long.", "[invalid]", "3.75"],
      ["First 12, then 30, so 42.", "[invalid]", "42."],
      ["#### 5 and later #### 6", "5", "6"],
      ["no numbers here", "[invalid]", "[invalid]"],
      ["It costs $8.", "[invalid]", "$8."],
    ];
    for (const [resp, strict, flexible] of cases) {
      expect([resp, strictMatch(resp)]).toEqual([resp, strict]);
      expect([resp, flexibleExtract(resp)]).toEqual([resp, flexible]);
    }
  });

  test("exact_match ignores commas, $, everything up to '#### ', a final period and case", () => {
    const ref = "It sells 1,200 * 2 = <<1200*2=2400>>2,400 pens.\n#### 2,400";
    expect(gsm8kExactMatch("2,400", ref)).toBe(true);
    expect(gsm8kExactMatch("$2400.", ref)).toBe(true);
    expect(gsm8kExactMatch("2400.0", ref)).toBe(false); // strings, not numbers, as lm-eval
    expect(gsm8kExactMatch("-3", "5 - 8 = -3\n#### -3")).toBe(true);
    expect(gsm8kExactMatch("3", "5 - 8 = -3\n#### -3")).toBe(false);
    expect(gsm8kExactMatch("[invalid]", ref)).toBe(false);
    expect(gsm8kExactMatch("42.", "#### 42")).toBe(true);
  });

  test("5-shot prompts draw train examples with random.Random(1234), recorded per question", async () => {
    const train = (await rows(join(fx, "gsm8k/train.jsonl"))) as { question: string; answer: string }[];
    const test_ = (await rows(join(fx, "gsm8k/test.jsonl"))) as { question: string; answer: string }[];
    const ps = gsm8kPrompts(test_, train, 5);
    const r = new PyRandom(1234);
    const idx = train.map((_, i) => i);
    for (const p of ps) expect(p.shots).toEqual(r.sample(idx, 5));
    const first = ps[0]!;
    const shot0 = train[first.shots[0]!]!;
    expect(first.prompt.startsWith(`Question: ${shot0.question}\nAnswer: ${shot0.answer}\n\nQuestion: `)).toBe(true);
    expect(first.prompt.endsWith(`Question: ${test_[0]!.question}\nAnswer:`)).toBe(true);
    expect(first.prompt.split("\n\n").length).toBe(6);
  });
});

describe("multiple choice (lm-eval v0.4.4 preprocessing)", () => {
  test("requests equal those Python builds from the same records", async () => {
    const expected = pythonDocs();
    const files: Record<McTask, string> = {
      hellaswag: "hellaswag/validation.jsonl",
      winogrande: "winogrande/validation.jsonl",
      arc_challenge: "arc_challenge/test.jsonl",
    };
    for (const task of ["hellaswag", "winogrande", "arc_challenge"] as McTask[]) {
      const docs = (await rows(join(fx, files[task]))).map((r) => mcDoc(task, r));
      expect(docs.length).toBe(3);
      docs.forEach((d, i) => {
        const want = expected[task][i]!;
        expect(mcRequests(d).map((r) => [r.context, r.continuation])).toEqual(want.requests);
        expect([d.choices, d.gold]).toEqual([want.choices, want.gold]);
      });
    }
  });

  test("acc, acc_norm (per character) and per-token mean pick differently, ties to the first", () => {
    const doc = {
      contexts: ["Q"],
      continuations: [" a", " bbbbbbbbbb"],
      choices: ["a", "bbbbbbbbbb"],
      gold: 1,
      shot: "",
    };
    // raw: a wins (−2 > −5); per char: b wins (−0.5 > −2); per token: a (−2/1) vs b (−5/2 = −2.5): a wins
    const r = scoreMcDoc(doc, [
      { logprob: -2, tokens: 1 },
      { logprob: -5, tokens: 2 },
    ]);
    expect([r.acc, r.acc_norm, r.acc_per_token]).toEqual([0, 1, 0]);
    const tie = scoreMcDoc({ ...doc, gold: 0 }, [
      { logprob: -1, tokens: 1 },
      { logprob: -1, tokens: 1 },
    ]);
    expect(tie.acc).toBe(1);
  });

  test("bootstrap standard error is CPython's, resample for resample, and close to the analytic one", () => {
    const xs = Array.from({ length: 400 }, (_, i) => (i % 4 === 0 ? 1 : 0)); // p = 0.25
    const m = meanWithBootstrap(xs);
    expect(m.value).toBe(0.25);
    // python3 -c "import random,math; r=random.Random(1234); xs=[1,0,0,0]*100; ms=[sum(xs[r._randbelow(400)]
    //   for _ in range(400))/400 for _ in range(1000)]; m=sum(ms)/1000; print(math.sqrt(sum((x-m)**2 for x in ms)/999))"
    expect(m.stderr).toBeCloseTo(0.021117121793294513, 14);
    const analytic = Math.sqrt((0.25 * 0.75) / 400); // 0.021650…
    expect(Math.abs(m.stderr - analytic) / analytic).toBeLessThan(0.15);
    expect(meanWithBootstrap([0, 1])).toEqual(twoDocMetric([0, 1]));
    expect(meanWithBootstrap([1, 1])).toEqual({ value: 1, stderr: 0 });
  });

  test("the forgetting score is defined once, with its definition", () => {
    const d = describeForgetting(FORGETTING_DEFAULT);
    expect(d).toContain("hellaswag acc_norm (0-shot)");
    expect(d).toContain("winogrande acc (0-shot)");
    expect(d).toContain("arc_challenge acc_norm (0-shot)");
  });
});

describe("HumanEval", () => {
  test("bigcode prompt, stop sequences and program", () => {
    const p: HumanEvalProblem = {
      task_id: "t",
      prompt: '\ndef f():\n    """doc"""\n',
      canonical_solution: "",
      test: "def check(c):\n    assert c() == 1\n",
      entry_point: "f",
    };
    expect(stopAtStopToken("\n    return 1\n\ndef g():\n    pass")).toBe("\n    return 1\n");
    expect(stopAtStopToken("\n    return 1\nprint(f())")).toBe("\n    return 1");
    expect(humanevalProgram(p, "\n    return 1\n\nif __name__ == '__main__':\n    f()")).toBe(
      'def f():\n    """doc"""\n    return 1\n\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)',
    );
  });

  test("on the real 164 problems: canonical solutions score 1.0, empty bodies 0.0", async () => {
    const file = defaultDataPath("humaneval");
    expect(existsSync(file)).toBe(true); // `bun run test` fetches it (bun run fetch humaneval)
    const problems = (await rows(file)) as unknown as HumanEvalProblem[];
    expect(problems.length).toBe(164);
    const sb = await Sandbox.open({ timeoutS: 10 });
    // the stripped prompt ends at the docstring: a model's generation starts with the newline
    const canonical = await scoreHumanEval(
      problems,
      problems.map((p) => [`\n${p.canonical_solution}`]),
      sb,
      [1],
    );
    const failing = canonical.per_problem.filter((r) => r.correct === 0).map((r) => r.task_id);
    expect(failing).toEqual([]);
    expect(canonical.pass_at["1"]).toBe(1);
    const empty = await scoreHumanEval(
      problems,
      problems.map(() => ["\n    pass\n", ""]),
      sb,
      [1, 2],
    );
    expect(empty.pass_at).toEqual({ "1": 0, "2": 0 });
    expect(empty.diversity).toEqual({ all: 2, passing: 0, failing: 2 });
  }, 300_000);
});

describe("evaluate: the whole pipeline on fixtures with the bundled tiny model", () => {
  test("every task runs, results carry settings, shots and per-document detail", async () => {
    const dir = mkdtempSync(join(tmpdir(), "loralab-eval-"));
    try {
      const data = {
        humaneval: join(fx, "humaneval/HumanEval.jsonl.gz"),
        gsm8k: join(fx, "gsm8k"),
        hellaswag: join(fx, "hellaswag"),
        winogrande: join(fx, "winogrande"),
        arc_challenge: join(fx, "arc_challenge"),
      };
      const seen = new Set<string>();
      const r = await evaluate({
        model: await tinyModel(),
        tasks: ["humaneval", "gsm8k", "hellaswag", "winogrande", "arc_challenge"],
        data,
        limit: 2,
        humaneval: { n: 2, maxLength: 64, ks: [1, 2] },
        gsm8k: { shots: 2, maxNewTokens: 16 },
        shots: { arc_challenge: 1 },
        onProgress: (t) => seen.add(t),
      });
      expect([...seen].sort()).toEqual(["arc_challenge", "gsm8k", "hellaswag", "humaneval", "winogrande"]);
      // HumanEval, n = 2: per problem pass@1 = c/2 and pass@2 = 1 − C(2−c, 2)/C(2, 2) = (c ≥ 1),
      // c its passing samples; the metric is their mean over the problems
      const he = r.tasks.humaneval!;
      expect(he.docs).toBe(2);
      const passed = (he.samples as { samples: { passed: boolean }[] }[]).map(
        (p) => p.samples.filter((x) => x.passed).length,
      );
      expect(passed.length).toBe(2);
      expect([he.metrics["pass@1"], he.metrics["pass@2"]]).toEqual([
        (passed[0]! / 2 + passed[1]! / 2) / 2,
        (Number(passed[0]! >= 1) + Number(passed[1]! >= 1)) / 2,
      ]);
      // GSM8K: the shots recorded, and exact_match of each answer by the rules the tests above pin
      expect(r.tasks.gsm8k!.settings.shots).toBe(2);
      const gsm = r.tasks.gsm8k!.samples as { prompt_shots: number[]; generation: string }[];
      expect(gsm.map((x) => x.prompt_shots.length)).toEqual([2, 2]);
      const answers = ((await rows(join(fx, "gsm8k/test.jsonl"))) as { answer: string }[]).slice(0, 2);
      expect(r.tasks.gsm8k!.metrics.strict_match).toEqual(
        twoDocMetric(gsm.map((x, i) => Number(gsm8kExactMatch(strictMatch(x.generation), answers[i]!.answer)))),
      );
      expect(r.tasks.gsm8k!.metrics.flexible_extract).toEqual(
        twoDocMetric(gsm.map((x, i) => Number(gsm8kExactMatch(flexibleExtract(x.generation), answers[i]!.answer)))),
      );
      // multiple choice: each metric by lm-eval's definition (scoreByDefinition) from the
      // per-document log-likelihoods, with gold and choices as Python reads them; and for the
      // 0-shot tasks those log-likelihoods are the engine's for Python's own requests
      expect((r.tasks.arc_challenge!.samples as { shots: number[] }[]).map((x) => x.shots.length)).toEqual([1, 1]);
      const py = pythonDocs();
      const m = await Model.load({ model: await tinyModel() });
      for (const t of MC) {
        const docs = py[t].slice(0, 2);
        const lls = (r.tasks[t]!.samples as { logprobs: number[]; tokens: number[] }[]).map((x) =>
          x.logprobs.map((logprob, j) => ({ logprob, tokens: x.tokens[j]! })),
        );
        expect(lls.map((ll) => ll.length)).toEqual(docs.map((d) => d.choices.length));
        if (t !== "arc_challenge") {
          const direct = await pythonLogliks(m, docs);
          expect(lls).toEqual(
            direct.map((ll) => ll.map((l) => ({ logprob: expect.closeTo(l.logprob, 4), tokens: l.tokens }))),
          );
        }
        const scores = docs.map((d, i) => scoreByDefinition(d, lls[i]!));
        const want: Record<string, { value: number; stderr: number }> = {
          acc: twoDocMetric(scores.map((x) => x.acc)),
          acc_norm: twoDocMetric(scores.map((x) => x.acc_norm)),
          acc_per_token: twoDocMetric(scores.map((x) => x.acc_per_token)),
        };
        if (t === "winogrande") delete want.acc_norm; // lm-eval reports acc only
        expect([t, r.tasks[t]!.metrics]).toEqual([t, want]);
      }
      await m.close();
      expect(r.learning!.metric).toBe("humaneval pass@1");
      expect(r.forgetting!.definition).toContain("arc_challenge acc_norm (1-shot)");
      expect(r.forgetting!.value).toBeCloseTo(
        ((r.tasks.hellaswag!.metrics.acc_norm as { value: number }).value +
          (r.tasks.winogrande!.metrics.acc as { value: number }).value +
          (r.tasks.arc_challenge!.metrics.acc_norm as { value: number }).value) /
          3,
        12,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);

  test("a run evaluates from the library: its adapter and its base, results in the run directory", async () => {
    const { train, evaluateRun } = await import("loralab");
    const out = tempDir("eval-run");
    try {
      const s = await train(
        tinyConfig(out, { run_id: "r", method: { kind: "lora", rank: 4 }, train: { steps: 2, checkpoint_every: 0 } }),
      );
      const data = {
        hellaswag: join(fx, "hellaswag"),
        winogrande: join(fx, "winogrande"),
        arc_challenge: join(fx, "arc_challenge"),
      };
      const prev = process.env.LORALAB_CACHE;
      process.env.LORALAB_CACHE = join(out, "cache"); // the base's cached results go here
      const r = await evaluateRun(s.run_dir, { tasks: ["hellaswag", "winogrande", "arc_challenge"], data, limit: 3 });
      const again = await evaluateRun(s.run_dir, {
        tasks: ["hellaswag", "winogrande", "arc_challenge"],
        data,
        limit: 3,
      });
      if (prev === undefined) delete process.env.LORALAB_CACHE;
      else process.env.LORALAB_CACHE = prev;
      expect(r.adapter).toBe(join(s.run_dir, "adapter"));
      expect(r.base.model).toBe(join(s.run_dir, "base"));
      // the forgetting score by its definition, mean of hellaswag acc_norm, winogrande acc and
      // arc_challenge acc_norm (0-shot), each scored here from the engine's log-likelihoods of
      // Python's requests: for the run (base + adapter) and for its base
      const py = pythonDocs();
      const forgetting = async (m: Model) => {
        const part = async (t: McTask, metric: "acc" | "acc_norm") => {
          const docs = py[t].slice(0, 3);
          const lls = await pythonLogliks(m, docs);
          return docs.reduce((a, d, i) => a + scoreByDefinition(d, lls[i]!)[metric], 0) / 3;
        };
        const parts = [
          await part("hellaswag", "acc_norm"),
          await part("winogrande", "acc"),
          await part("arc_challenge", "acc_norm"),
        ];
        await m.close();
        return (parts[0]! + parts[1]! + parts[2]!) / 3;
      };
      const tuned = await Model.load({ model: r.base.model, adapter: r.adapter });
      expect(r.forgetting!.value).toBeCloseTo(await forgetting(tuned), 12);
      expect(r.base.forgetting!.value).toBeCloseTo(await forgetting(await Model.load({ model: r.base.model })), 12);
      expect(again.base).toEqual(r.base); // from the cache, the same
      const onDisk = JSON.parse(readFileSync(join(s.run_dir, "eval.json"), "utf8"));
      expect(onDisk.forgetting.definition).toContain("hellaswag acc_norm");
      expect(JSON.parse(readFileSync(join(s.run_dir, "eval", "arc_challenge.json"), "utf8")).samples.length).toBe(3);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);

  test("bad input: unknown task, missing split, missing field — each a clear error", async () => {
    const model = await tinyModel();
    await expect(evaluate({ model, tasks: ["mmlu" as McTask] })).rejects.toThrow(/unknown task `mmlu`/);
    await expect(evaluate({ model, tasks: ["gsm8k"], data: { gsm8k: join(fx, "hellaswag") } })).rejects.toThrow(
      /no data files for the test split/,
    );
    await expect(
      evaluate({ model, tasks: ["winogrande"], data: { winogrande: join(fx, "arc_challenge/test.jsonl") } }),
    ).rejects.toThrow(/record 1: winogrande: record lacks the string field `sentence`/);
  }, 60_000);

  test("the engine from Bun: log-likelihood batched equals one by one", async () => {
    const m = await Model.load({ model: await tinyModel() });
    const reqs = [
      { context: "The red owl", continuation: " plays" },
      { context: "A wolf lives near the", continuation: " forest and waits." },
    ];
    const a = await m.loglikelihood(reqs, 2);
    const b = [...(await m.loglikelihood([reqs[0]!], 1)), ...(await m.loglikelihood([reqs[1]!], 1))];
    for (const [i, x] of a.entries()) expect(Math.abs(x.logprob - b[i]!.logprob)).toBeLessThan(1e-4);
    const g = await m.generate(["The red owl"], { max_new_tokens: 5 });
    expect(g[0]!.tokens).toBe(5);
    // datasets/tiny/tokenizer.json's byte-level BPE by hand: "The", "Ġred", "Ġowl", each one
    // vocabulary entry (ids 494, 452, 478) after the merges h+e, T+he; r+e, Ġ+re, Ġre+d;
    // o+w, Ġ+ow, Ġow+l; no special tokens are counted
    expect(await m.countTokens("The red owl")).toBe(3);
  }, 60_000);
});
