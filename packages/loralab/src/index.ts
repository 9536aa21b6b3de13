// `loralab`: the library other Bun apps import. Train the same model both ways, evaluate what
// each learned and forgot, analyse why (the spectrum of the weight change), keep every run in
// a database and serve it over HTTP:
//
//   import { train, evaluate, analyze, openStore, createServer } from "loralab";
export * from "./core.ts";
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
  type EvalOptions,
  type EvalResult,
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
// the run store (packages/db) and the HTTP server (packages/server)
export { openStore, Store, type RunRow, type RunStatus, type StoreOptions } from "@loralab/db";
export { createServer, type ServerOptions, type LoralabServer } from "@loralab/server";
