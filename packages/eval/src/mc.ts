// Multiple choice by log-likelihood, as lm-evaluation-harness v0.4.4 builds and scores
// hellaswag (tasks/hellaswag/utils.py), winogrande (tasks/winogrande/preprocess_winogrande.py,
// "partial" scoring) and arc_challenge (tasks/arc/arc_easy.yaml): requests
// (context, " " + choice), or for winogrande (sentence[:_] + option, " " + rest); metrics
// acc (sum of log-probs), acc_norm (divided by the choice's length in characters) and
// acc_per_token (divided by its token count: the MosaicML Gauntlet's mean), ties to the
// first choice as numpy's argmax; optional k-shot from the train split (ContextSampler,
// seed 1234); bootstrap standard errors.
import { PyRandom } from "./pyrandom.ts";
import { pyCapitalize, pyLen, pyStrip } from "./text.ts";

export type McTask = "hellaswag" | "winogrande" | "arc_challenge";
export const MC_TASKS: McTask[] = ["hellaswag", "winogrande", "arc_challenge"];

/** One question: contexts (one, or one per choice for winogrande), continuations, gold index, and
 * `choices`: the strings whose character length acc_norm divides by (lm-eval's doc_to_choice). */
export interface McDoc {
  contexts: string[];
  continuations: string[];
  choices: string[];
  gold: number;
  /** What a few-shot example of this doc shows: the question with its right answer. */
  shot: string;
}

function hellaswagPre(text: string): string {
  return (
    pyStrip(text)
      .replace(/ \[title\]/g, ". ")
      // Python's re: "." is anything but "\n" (JavaScript's also stops at "\r", U+2028 and U+2029)
      .replace(/\[[^\n]*?\]/g, "")
      .replace(/ {2}/g, " ")
  );
}

/** Field names as the Hugging Face datasets ship them. */
export function mcDoc(task: McTask, r: Record<string, unknown>): McDoc {
  const s = (k: string) => {
    const v = r[k];
    if (typeof v !== "string" && typeof v !== "number")
      throw new Error(`${task}: record lacks the string field \`${k}\``);
    return String(v);
  };
  if (task === "hellaswag") {
    const query = hellaswagPre(`${s("activity_label")}: ${s("ctx_a")} ${pyCapitalize(s("ctx_b"))}`);
    const endings = r.endings;
    if (!Array.isArray(endings)) throw new Error("hellaswag: record lacks `endings`");
    const choices = endings.map((e) => hellaswagPre(String(e)));
    const gold = Number(s("label"));
    return {
      contexts: [query],
      continuations: choices.map((c) => ` ${c}`),
      choices,
      gold,
      shot: `${query} ${choices[gold]}`,
    };
  }
  if (task === "winogrande") {
    const sentence = s("sentence");
    const idx = sentence.indexOf("_");
    if (idx < 0) throw new Error(`winogrande: sentence has no blank "_": ${sentence}`);
    const rest = pyStrip(sentence.slice(idx + 1));
    const contexts = [s("option1"), s("option2")].map((o) => sentence.slice(0, idx) + o);
    const gold = { "1": 0, "2": 1 }[s("answer")];
    if (gold === undefined) throw new Error(`winogrande: answer must be "1" or "2", not ${JSON.stringify(r.answer)}`);
    return { contexts, continuations: [` ${rest}`], choices: contexts, gold, shot: `${contexts[gold]} ${rest}` };
  }
  const choices = r.choices as { text?: unknown; label?: unknown } | undefined;
  if (!choices || !Array.isArray(choices.text) || !Array.isArray(choices.label))
    throw new Error("arc_challenge: record lacks `choices` {text, label}");
  const text = choices.text.map(String);
  const gold = choices.label.map(String).indexOf(s("answerKey"));
  if (gold < 0)
    throw new Error(
      `arc_challenge: answerKey ${s("answerKey")} is not among the labels ${JSON.stringify(choices.label)}`,
    );
  const q = `Question: ${s("question")}\nAnswer:`;
  return { contexts: [q], continuations: text.map((t) => ` ${t}`), choices: text, gold, shot: `${q} ${text[gold]}` };
}

/** The (context, continuation) requests of a doc, with a few-shot prefix. */
export function mcRequests(doc: McDoc, prefix = ""): { context: string; continuation: string }[] {
  const n = Math.max(doc.contexts.length, doc.continuations.length);
  return Array.from({ length: n }, (_, i) => ({
    context: prefix + (doc.contexts[i] ?? doc.contexts[0]!),
    continuation: doc.continuations[i] ?? doc.continuations[0]!,
  }));
}

/** Few-shot prefixes: lm-eval 0.4.4's ContextSampler.get_context (random.Random(seed), sample
 *  per doc in order). A drawn doc equal to the evaluated one is always dropped (`x != doc`), so a
 *  doc present in both splits gets k − 1 shots. `sameSplit`: the task names no few-shot split and
 *  no test split (HellaSwag, WinoGrande), which lm-eval reads as "the few-shot docs may be the
 *  evaluated split": it draws k + 1 and keeps the first k left — so its random stream advances by
 *  k + 1 draws a document. */
export function fewshotPrefixes(
  docs: McDoc[],
  train: McDoc[],
  shots: number,
  o: {
    seed?: number;
    sameSplit?: boolean;
    /** Whether train doc t is evaluated doc d (default: the same McDoc). */
    same?: (t: number, d: number) => boolean;
  } = {},
): { prefix: string; shots: number[] }[] {
  const rnd = new PyRandom(o.seed ?? 1234);
  const idx = train.map((_, i) => i);
  const key = (d: McDoc) => JSON.stringify(d);
  const same = o.same ?? ((t: number, d: number) => key(train[t]!) === key(docs[d]!));
  return docs.map((_, d) => {
    if (shots <= 0) return { prefix: "", shots: [] };
    const chosen = rnd
      .sample(idx, o.sameSplit ? shots + 1 : shots)
      .filter((t) => !same(t, d))
      .slice(0, shots);
    return { prefix: chosen.map((i) => `${train[i]!.shot}\n\n`).join(""), shots: chosen };
  });
}

function argmax(xs: number[]): number {
  let b = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[b]!) b = i;
  return b;
}

export interface McDocResult {
  gold: number;
  logprobs: number[];
  tokens: number[];
  acc: number;
  acc_norm: number;
  acc_per_token: number;
}

export function scoreMcDoc(doc: McDoc, ll: { logprob: number; tokens: number }[]): McDocResult {
  const lp = ll.map((l) => l.logprob);
  const tokens = ll.map((l) => l.tokens);
  const lens = doc.choices.map(pyLen);
  return {
    gold: doc.gold,
    logprobs: lp,
    tokens,
    acc: Number(argmax(lp) === doc.gold),
    acc_norm: Number(argmax(lp.map((v, i) => v / lens[i]!)) === doc.gold),
    acc_per_token: Number(argmax(lp.map((v, i) => v / tokens[i]!)) === doc.gold),
  };
}

export interface Metric {
  value: number;
  /** Bootstrap standard error of the mean (`BOOTSTRAP_ITERS` resamples, seeded). */
  stderr: number;
}

export const BOOTSTRAP_ITERS = 1000;

/** Mean and its bootstrap standard error (resampling documents with a seeded generator). */
export function meanWithBootstrap(xs: number[], iters = BOOTSTRAP_ITERS, seed = 1234): Metric {
  const n = xs.length;
  if (!n) return { value: NaN, stderr: NaN };
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const rnd = new PyRandom(seed);
  const means: number[] = [];
  for (let b = 0; b < iters; b++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += xs[rnd.randbelow(n)]!;
    means.push(s / n);
  }
  const m = means.reduce((a, b) => a + b, 0) / iters;
  const sd = Math.sqrt(means.reduce((a, b) => a + (b - m) ** 2, 0) / (iters - 1));
  return { value: mean, stderr: sd };
}

/** The task's metrics: acc, acc_norm (not for winogrande: its choices are whole contexts, and
 * lm-eval reports acc only) and acc_per_token, each with its bootstrap standard error. */
export function aggregateMc(task: McTask, results: McDocResult[]): Record<string, Metric> {
  const out: Record<string, Metric> = { acc: meanWithBootstrap(results.map((r) => r.acc)) };
  if (task !== "winogrande") out.acc_norm = meanWithBootstrap(results.map((r) => r.acc_norm));
  out.acc_per_token = meanWithBootstrap(results.map((r) => r.acc_per_token));
  return out;
}
