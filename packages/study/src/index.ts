// @loralab/study: sweeps over methods, ranks, targets, learning rates, seeds and durations;
// every checkpoint evaluated and analysed; the report with the Pareto frontier and findings;
// and the laboratory `bun run train` runs by default.
export { ensureLabBase, packLabBase } from "./labbase.ts";
export { makeLabData, type LabData } from "./labdata.ts";
export {
  LAB,
  LAB_BASE,
  labLanes,
  type LabMode,
  labSpecs,
  powerPlan,
  runLab,
  summaryTable,
  type LabResult,
} from "./lab.ts";
export {
  bootstrap,
  decide,
  decideEstimate,
  frontier,
  frontierGap,
  interpolate,
  logOptimum,
  mcnemar,
  pairedMdd,
  type Observation,
  type Rule,
  type Verdict,
} from "./decide.ts";
export { divergedPoint, findings, RULES, STATISTICS, type Finding } from "./findings.ts";
export { basePoint, checkpointPoint, groupOf, type EvalPlan, type Point } from "./points.ts";
export {
  bestLrPoints,
  figures,
  interactiveData,
  paretoFrontier,
  writeReport,
  type ReportInput,
} from "./report.ts";
export { type SlurmOptions, slurmScript, submitSlurm, waitForSlurm } from "./slurm.ts";
export {
  CELL_QUEUE,
  DEAD_QUEUE,
  describeEta,
  type Eta,
  enqueueSweep,
  openQueue,
  queuedPoints,
  runWorker,
  type SweepState,
  sweepState,
  waitForSweep,
} from "./queue.ts";
export {
  cellConfig,
  cellPlan,
  cellRunId,
  cells,
  runSweep,
  type SweepOutcome,
  sweepCell,
  type Cell,
  type Checkpoint,
  type Method,
  type RunProgress,
  type SweepSpec,
} from "./sweep.ts";
export {
  drawStudy,
  redrawReport,
  reportRuns,
  runStudy,
  scoreBase,
  scoreCheckpoint,
  type StudyEval,
  type StudySpec,
} from "./study.ts";
export { loadStudySpec, SPEC_SCHEMA, validateStudySpec } from "./spec.ts";
export { BASE_FIELDS } from "./points.ts";
