// GSM8K as lm-evaluation-harness v0.4.4 defines it (lm_eval/tasks/gsm8k/gsm8k.yaml, version
// 3.0): 5-shot from the train split (the default ContextSampler: one random.Random(1234)
// for the task, sample(train, 5) per test question in order), each shot
// "Question: {q}\nAnswer: {full worked answer}\n\n", the query "Question: {q}\nAnswer:",
// greedy until "Question:", "</s>", "<|im_end|>" (and the model's EOS), then two filters
// scored by exact_match with ignore_case and regexes_to_ignore [",", "\$", "(?s).*#### ", "\.$"].
import { PyRandom } from "./pyrandom.ts";

export const GSM8K_VERSION = "lm-evaluation-harness v0.4.4, lm_eval/tasks/gsm8k/gsm8k.yaml (task version 3.0)";
export const GSM8K_STOP = ["Question:", "</s>", "<|im_end|>"];
export const GSM8K_FEWSHOT_SEED = 1234;

export interface Gsm8kDoc {
  question: string;
  answer: string;
}

export function gsm8kQuery(d: Gsm8kDoc): string {
  return `Question: ${d.question}\nAnswer:`;
}

/** Prompts for the test docs, in order, with the train indices of each one's shots: lm-eval's
 *  ContextSampler draws k per doc and drops a drawn doc equal to the evaluated one (k − 1 shots
 *  then; GSM8K's real splits share none). */
export function gsm8kPrompts(
  test: Gsm8kDoc[],
  train: Gsm8kDoc[],
  shots = 5,
  seed = GSM8K_FEWSHOT_SEED,
): { prompt: string; shots: number[] }[] {
  const rnd = new PyRandom(seed);
  const idx = train.map((_, i) => i);
  return test.map((d) => {
    const chosen =
      shots > 0
        ? rnd.sample(idx, shots).filter((i) => !(train[i]!.question === d.question && train[i]!.answer === d.answer))
        : [];
    const prefix = chosen.map((i) => `${gsm8kQuery(train[i]!)} ${train[i]!.answer}\n\n`).join("");
    return { prompt: prefix + gsm8kQuery(d), shots: chosen };
  });
}

/** lm-eval's RegexFilter: findall, the group_select-th match, its first non-empty group, stripped. */
function regexFilter(resp: string, pattern: RegExp, groupSelect: number): string {
  const matches = [...resp.matchAll(pattern)];
  if (!matches.length) return "[invalid]";
  const m = matches[groupSelect < 0 ? matches.length + groupSelect : groupSelect]!;
  const groups = m.length > 1 ? m.slice(1) : [m[0]];
  const first = groups.find((g) => g) ?? "";
  return first.trim();
}

/** strict-match: the first "#### N". */
export function strictMatch(resp: string): string {
  return regexFilter(resp, /#### (-?[0-9.,]+)/g, 0);
}

/** flexible-extract: the last number-like run. */
export function flexibleExtract(resp: string): string {
  return regexFilter(resp, /(-?[$0-9.,]{2,})|(-?[0-9]+)/g, -1);
}

/** exact_match with gsm8k's regexes_to_ignore and ignore_case (Python's `\.$` also matches before a final newline). */
export function gsm8kExactMatch(prediction: string, reference: string): boolean {
  const norm = (s: string) =>
    s
      .replace(/,/g, "")
      .replace(/\$/g, "")
      .replace(/[\s\S]*#### /g, "")
      .replace(/\.(?=\n?$)/g, "")
      .toLowerCase();
  return norm(prediction) === norm(reference);
}

export interface Gsm8kSample {
  prompt_shots: number[];
  generation: string;
  target: string;
  strict: string;
  flexible: string;
  strict_correct: boolean;
  flexible_correct: boolean;
}

export function scoreGsm8k(
  test: Gsm8kDoc[],
  generations: string[],
  shots: number[][],
): { strict_match: number; flexible_extract: number; samples: Gsm8kSample[] } {
  const samples = test.map((d, i) => {
    const g = generations[i]!;
    const strict = strictMatch(g);
    const flexible = flexibleExtract(g);
    return {
      prompt_shots: shots[i]!,
      generation: g,
      target: d.answer,
      strict,
      flexible,
      strict_correct: gsm8kExactMatch(strict, d.answer),
      flexible_correct: gsm8kExactMatch(flexible, d.answer),
    };
  });
  const mean = (f: (s: Gsm8kSample) => boolean) => samples.filter(f).length / Math.max(1, samples.length);
  return { strict_match: mean((s) => s.strict_correct), flexible_extract: mean((s) => s.flexible_correct), samples };
}
