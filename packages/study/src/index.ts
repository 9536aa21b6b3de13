// @loralab/study: sweeps over methods, ranks, targets, learning rates, seeds and durations;
// every checkpoint evaluated and analysed; the report with the Pareto frontier and findings;
// and the laboratory `bun run train` runs by default.
export { ensureLabBase, packLabBase } from "./labbase.ts";
export { makeLabData, type LabData } from "./labdata.ts";
export { LAB_BASE, labSpecs, runLab, summaryTable, type LabResult } from "./lab.ts";
export { basePoint, checkpointPoint, groupOf, type EvalPlan, type Point } from "./points.ts";
export {
  bestLrPoints,
  figures,
  findings,
  interactiveData,
  paretoFrontier,
  writeReport,
  type Finding,
  type ReportInput,
} from "./report.ts";
export {
  cellConfig,
  cells,
  perplexity,
  runSweep,
  type Cell,
  type Checkpoint,
  type Method,
  type RunProgress,
  type SweepSpec,
} from "./sweep.ts";
export { redrawReport, reportRuns, runStudy, type StudyEval, type StudySpec } from "./study.ts";
export { loadStudySpec, SPEC_SCHEMA, validateStudySpec } from "./spec.ts";
