// HumanEval as bigcode-evaluation-harness scores it (bigcode_eval/tasks/humaneval.py,
// task "humaneval"): 0-shot, the prompt stripped with Python's str.strip(), n samples per
// problem, generation cut at the first stop sequence, the program
// prompt + generation + "\n" + "\n" + test + "\n" + "check(entry_point)" judged in the sandbox,
// unbiased pass@k (Chen et al. 2021) for every k ≤ n asked for. The sandbox splits that program
// where bigcode does not: prompt + generation runs as the untrusted module, the test and
// check(entry_point) in a trusted checker that calls it (sandbox.ts says why).
import { maths } from "@loralab/engine";
import { pyStrip } from "./text.ts";
import type { CheckJob, ExecResult, Sandbox } from "./sandbox.ts";

export interface HumanEvalProblem {
  task_id: string;
  prompt: string;
  canonical_solution: string;
  test: string;
  entry_point: string;
}

/** bigcode's stop sequences (since 2024-01). */
export const HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>"];

export function humanevalPrompt(p: HumanEvalProblem): string {
  return pyStrip(p.prompt);
}

/** The generation cut at the first stop sequence (bigcode's _stop_at_stop_token). */
export function stopAtStopToken(generation: string, stops: string[] = HUMANEVAL_STOP): string {
  let at = generation.length;
  for (const s of stops) {
    const i = generation.indexOf(s);
    if (i !== -1 && i < at) at = i;
  }
  return generation.slice(0, at);
}

/** bigcode's program for one completion (the generation, without the prompt). */
export function humanevalProgram(p: HumanEvalProblem, generation: string): string {
  return `${humanevalPrompt(p) + stopAtStopToken(generation)}\n\n${p.test}\ncheck(${p.entry_point})`;
}

/** The same program as the sandbox judges it: the module is the program up to the test, the
 *  test and check(entry_point) run in the checker over the dataset's own prompt. */
export function humanevalCheck(p: HumanEvalProblem, generation: string): CheckJob {
  return {
    module: `${humanevalPrompt(p) + stopAtStopToken(generation)}\n`,
    prelude: humanevalPrompt(p),
    test: p.test,
    entryPoint: p.entry_point,
  };
}

/** Unbiased pass@k = 1 − C(n−c, k)/C(n, k), as a stable product (Chen et al. 2021): the
 *  shared maths (loralab-maths, through the engine; the browser report runs the same code). */
export function passAtK(n: number, c: number, k: number): number {
  if (![n, c, k].every((v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32))
    throw new Error(`pass@k: need integers with 0 ≤ c ≤ n and k ≥ 1 (n=${n}, c=${c}, k=${k})`);
  return maths.passAtK(n, c, k);
}

export interface HumanEvalSample {
  generation: string;
  passed: boolean;
  status: ExecResult["status"];
}

export interface HumanEvalProblemResult {
  task_id: string;
  n: number;
  correct: number;
  /** pass@k of this problem for each k asked for. */
  pass_at: Record<string, number>;
  /** Distinct completions (after the stop cut, whitespace-trimmed), all / passing / failing. */
  distinct: { all: number; passing: number; failing: number };
  samples: HumanEvalSample[];
}

export interface HumanEvalResult {
  problems: number;
  n: number;
  /** Mean over problems of the unbiased estimate, for each k. */
  pass_at: Record<string, number>;
  /** The study's diversity measure: mean distinct completions per problem, all / passing / failing. */
  diversity: { all: number; passing: number; failing: number };
  per_problem: HumanEvalProblemResult[];
}

/** Score the generations (n per problem) by running each in the sandbox. */
export async function scoreHumanEval(
  problems: HumanEvalProblem[],
  generations: string[][],
  sandbox: Sandbox,
  ks: number[] = [1],
  onDone?: (done: number, total: number) => void,
): Promise<HumanEvalResult> {
  const n = generations[0]?.length ?? 0;
  if (generations.length !== problems.length || generations.some((g) => g.length !== n) || n === 0)
    throw new Error(`humaneval: need the same number (≥ 1) of generations for each of the ${problems.length} problems`);
  for (const k of ks) if (k > n) throw new Error(`humaneval: pass@${k} needs n ≥ ${k} samples per problem (n = ${n})`);
  const total = problems.length * n;
  let done = 0;
  const per_problem = await Promise.all(
    problems.map(async (p, i) => {
      const samples = await Promise.all(
        generations[i]!.map(async (g) => {
          const r = await sandbox.check(humanevalCheck(p, g));
          onDone?.(++done, total);
          return { generation: stopAtStopToken(g), passed: r.passed, status: r.status };
        }),
      );
      const correct = samples.filter((s) => s.passed).length;
      const distinct = (ss: HumanEvalSample[]) => new Set(ss.map((s) => s.generation.trim())).size;
      return {
        task_id: p.task_id,
        n,
        correct,
        pass_at: Object.fromEntries(ks.map((k) => [String(k), passAtK(n, correct, k)])),
        distinct: {
          all: distinct(samples),
          passing: distinct(samples.filter((s) => s.passed)),
          failing: distinct(samples.filter((s) => !s.passed)),
        },
        samples,
      };
    }),
  );
  const mean = (f: (r: HumanEvalProblemResult) => number) =>
    per_problem.reduce((a, r) => a + f(r), 0) / Math.max(1, per_problem.length);
  return {
    problems: problems.length,
    n,
    pass_at: Object.fromEntries(ks.map((k) => [String(k), mean((r) => r.pass_at[String(k)]!)])),
    diversity: {
      all: mean((r) => r.distinct.all),
      passing: mean((r) => r.distinct.passing),
      failing: mean((r) => r.distinct.failing),
    },
    per_problem,
  };
}
