// `loralab`: the library other Bun apps import. Train the same model both ways, evaluate what
// each learned and forgot, analyse why (the spectrum of the weight change), keep every run in
// a database and serve it over HTTP:
//
//   import { train, evaluate, analyze, openStore, createServer } from "loralab";
//
// Importing it loads the engine, evaluation and analysis, not the store (drizzle) or the
// server (hono): `openStore` and `createServer` here load those on their first call. The
// rest of those two packages: `loralab/store` and `loralab/server`; training alone: `loralab/core`.
import type { Store, StoreOptions } from "@loralab/db";
import type { LoralabServer, ServerOptions } from "@loralab/server";

export * from "@loralab/engine";
// evaluation: learning and forgetting scores of a model, an adapter or a run (packages/eval)
export {
  describeForgetting,
  evaluate,
  evaluateBase,
  evaluateRun,
  FORGETTING_DEFAULT,
  FORGETTING_GAUNTLET,
  Model,
  runModels,
  Sandbox,
  SandboxUnavailable,
  TASKS,
  trainWithEval,
  type EvalOptions,
  type EvalPoint,
  type EvalResult,
  type EvaluatedRun,
  type RunEvaluation,
  type TaskName,
  type TaskResult,
} from "@loralab/eval";
// spectral analysis of the weight change (packages/spectrum)
export {
  analyze,
  analyzeRun,
  randomBaseline,
  runCheckpoints,
  writeFigures,
  type Analysis,
  type AnalyzeOptions,
  type CheckpointAnalysis,
  type MatrixAnalysis,
} from "@loralab/spectrum";
// the run store (packages/db) and the HTTP server (packages/server), as types only: a type
// import loads nothing. `Store` the class (its value) is in `loralab/store`.
export type { RunRow, RunStatus, Store, StoreOptions } from "@loralab/db";
export type { LoralabServer, ServerOptions } from "@loralab/server";

/** Open the run store ($DATABASE_URL, else ./loralab.db); see `loralab/store`. */
export async function openStore(o: StoreOptions = {}): Promise<Store> {
  return (await import("@loralab/db")).openStore(o);
}

/** The runner, the HTTP API and the dashboard on one store; see `loralab/server`. */
export async function createServer(o: ServerOptions = {}): Promise<LoralabServer> {
  return (await import("@loralab/server")).createServer(o);
}
