// @loralab/data: dataset readers (JSONL, JSON arrays, CSV, Parquet, HF dataset directories,
// gzip), the study's dataset recipes, and the normalisation the engine prepares from.
export { DataError, datasetFiles, formatOf, readRecords, type DataRecord } from "./readers.ts";
export { engineReadable, normalize, RECIPES, type Mapping, type NormalizeReport } from "./normalize.ts";
