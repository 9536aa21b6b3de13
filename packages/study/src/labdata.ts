// The laboratory's data, made at run time from nothing downloaded: the target domain is
// arithmetic word problems with exact answers (a miniature GSM8K, scored by the GSM8K code
// path), the source domain's forgetting measures are a HellaSwag-style cloze and held-out
// text for perplexity, both built from the held-out prose (datasets/lab/corpus.ts).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PyRandom } from "@loralab/eval";
import { sentences, sourceDocs } from "../../../datasets/lab/corpus.ts";

const NAMES = [
  "Ann",
  "Ben",
  "Cara",
  "Dan",
  "Eve",
  "Finn",
  "Gus",
  "Hana",
  "Ivan",
  "Jo",
  "Kim",
  "Liam",
  "Maya",
  "Ned",
  "Olga",
  "Pat",
];
const THINGS = ["apples", "books", "coins", "stamps", "shells", "marbles", "pens", "cards", "eggs", "ropes"];

export interface Problem {
  question: string;
  answer: string;
  value: number;
}

/** One word problem with one-digit operands (81 facts per operation, so a small model can
 * learn the domain in the laboratory's minutes), its worked answer ending in "#### N". */
function problem(r: PyRandom): Problem {
  const name = NAMES[r.randbelow(NAMES.length)]!;
  const thing = THINGS[r.randbelow(THINGS.length)]!;
  const a = 1 + r.randbelow(9);
  const b = 1 + r.randbelow(9);
  const kind = r.randbelow(3);
  if (kind === 0)
    return {
      question: `${name} has ${a} ${thing} and finds ${b} more. How many ${thing} does ${name} have now?`,
      answer: `${a} + ${b} = ${a + b}.\n#### ${a + b}`,
      value: a + b,
    };
  if (kind === 1) {
    const [hi, lo] = a >= b ? [a + 9, b] : [b + 9, a];
    return {
      question: `${name} has ${hi} ${thing} and gives away ${lo}. How many ${thing} are left?`,
      answer: `${hi} - ${lo} = ${hi - lo}.\n#### ${hi - lo}`,
      value: hi - lo,
    };
  }
  return {
    question: `${name} buys ${a} bags with ${b} ${thing} in each. How many ${thing} is that?`,
    answer: `${a} * ${b} = ${a * b}.\n#### ${a * b}`,
    value: a * b,
  };
}

/** Where a cloze sentence is cut: its first CLOZE_CUT of words are the context. */
export const CLOZE_CUT = 0.75;
/** Cloze sentences are 12 to MAX_WORDS words long (longer ones cost more than they tell). */
export const MAX_WORDS = 30;

export interface LabData {
  dir: string;
  /** IFT training records: {prompt, response}. */
  train: string;
  trainRecords: number;
  /** GSM8K-format test (and train, for shots) directory. */
  gsm8k: string;
  /** HellaSwag-format cloze directory (validation split). */
  cloze: string;
  /** Held-out source text, one {text} per line, for perplexity. */
  heldOut: string;
  counts: { train: number; test: number; cloze: number; heldOutDocs: number };
}

/** Write the laboratory's data sets into `dir` (deterministic in `seed`). */
export function makeLabData(
  dir: string,
  o: { train: number; test: number; cloze: number; seed?: number; cut?: number },
): LabData {
  mkdirSync(join(dir, "gsm8k"), { recursive: true });
  mkdirSync(join(dir, "cloze"), { recursive: true });
  const r = new PyRandom(o.seed ?? 7);
  const seen = new Set<string>();
  const draw = (n: number) => {
    const out: Problem[] = [];
    while (out.length < n) {
      const p = problem(r);
      if (seen.has(p.question)) continue;
      seen.add(p.question);
      out.push(p);
    }
    return out;
  };
  const test = draw(o.test); // disjoint from train: every question once
  const train = draw(o.train);
  const jsonl = (rows: unknown[]) => `${rows.map((x) => JSON.stringify(x)).join("\n")}\n`;
  writeFileSync(
    join(dir, "train.jsonl"),
    jsonl(train.map((p) => ({ prompt: `Question: ${p.question}\nAnswer:`, response: ` ${p.answer}` }))),
  );
  writeFileSync(join(dir, "gsm8k", "test.jsonl"), jsonl(test.map((p) => ({ question: p.question, answer: p.answer }))));
  writeFileSync(
    join(dir, "gsm8k", "train.jsonl"),
    jsonl(train.slice(0, 50).map((p) => ({ question: p.question, answer: p.answer }))),
  );
  // the cloze: a held-out sentence's beginning, its true ending and three endings of other sentences
  const held = sourceDocs().filter((d) => d.heldOut);
  const pool: { label: string; words: string[] }[] = [];
  for (const d of held)
    for (const s of sentences(d.text)) {
      const words = s.split(" ");
      if (words.length >= 12 && words.length <= MAX_WORDS && !/[[\]]/.test(s))
        pool.push({ label: d.source === "sotu" ? "State of the Union" : "Moby-Dick", words });
    }
  const cr = new PyRandom((o.seed ?? 7) + 1);
  const chosen = cr.sample(pool, Math.min(o.cloze, pool.length));
  const cloze = chosen.map((q) => {
    const cut = Math.floor(q.words.length * (o.cut ?? CLOZE_CUT));
    const ending = q.words.slice(cut).join(" ");
    // distractors: endings of sentences from the other source (a Moby-Dick sentence gets State of
    // the Union endings and vice versa), so a model that knows its source domain can tell
    const others: string[] = [];
    const foreign = pool.filter((x) => x.label !== q.label);
    while (others.length < 3) {
      const o2 = foreign[cr.randbelow(foreign.length)]!;
      const e = o2.words.slice(Math.floor(o2.words.length * (o.cut ?? CLOZE_CUT))).join(" ");
      if (e !== ending && !others.includes(e)) others.push(e);
    }
    const label = cr.randbelow(4);
    const endings = [...others];
    endings.splice(label, 0, ending);
    return {
      activity_label: q.label,
      ctx_a: q.words.slice(0, cut).join(" "),
      ctx_b: "",
      endings,
      label: String(label),
    };
  });
  writeFileSync(join(dir, "cloze", "validation.jsonl"), jsonl(cloze));
  // perplexity on a fixed 48k-character slice of the held-out prose (the start of each document)
  const per = Math.ceil(48_000 / held.length);
  writeFileSync(join(dir, "heldout.jsonl"), jsonl(held.map((d) => ({ text: d.text.slice(0, per) }))));
  return {
    dir,
    train: join(dir, "train.jsonl"),
    trainRecords: train.length,
    gsm8k: join(dir, "gsm8k"),
    cloze: join(dir, "cloze"),
    heldOut: join(dir, "heldout.jsonl"),
    counts: { train: train.length, test: test.length, cloze: cloze.length, heldOutDocs: held.length },
  };
}
