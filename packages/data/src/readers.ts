// Streaming dataset readers: JSONL, JSON arrays, CSV, Parquet (hyparquet, with snappy and
// zstd via hyparquet-compressors), Hugging Face dataset directories, and gzip around the
// text formats. Every reader yields one record at a time, so a file larger than memory is
// fine. Called by normalize.ts.
import { createReadStream, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { createGunzip } from "node:zlib";

export type DataRecord = Record<string, unknown>;

/** A bad input, named by file and record (1-based line or record number). */
export class DataError extends Error {
  override name = "DataError";
  constructor(
    readonly file: string,
    readonly at: number,
    message: string,
  ) {
    super(`dataset ${file}${at ? `, record ${at}` : ""}: ${message}`);
  }
}

const TEXT = [".jsonl", ".ndjson", ".json", ".csv"];

/** The format of a file from its name (".gz" unwrapped). */
export function formatOf(path: string): { kind: "jsonl" | "json" | "csv" | "parquet"; gzip: boolean } | undefined {
  const gzip = path.endsWith(".gz");
  const base = gzip ? path.slice(0, -3) : path;
  if (base.endsWith(".parquet")) return gzip ? undefined : { kind: "parquet", gzip };
  const ext = TEXT.find((e) => base.endsWith(e));
  if (!ext) return undefined;
  return { kind: ext === ".ndjson" ? "jsonl" : (ext.slice(1) as "jsonl" | "json" | "csv"), gzip };
}

/** Text chunks of a (possibly gzipped) file. */
async function* chunks(path: string, gzip: boolean): AsyncGenerator<string> {
  const raw = createReadStream(path, { highWaterMark: 1 << 20 });
  const stream = gzip ? raw.pipe(createGunzip()) : raw;
  const dec = new TextDecoder();
  for await (const c of stream) yield dec.decode(c as Uint8Array, { stream: true });
  yield dec.decode();
}

async function* lines(path: string, gzip: boolean): AsyncGenerator<string> {
  let buf = "";
  for await (const c of chunks(path, gzip)) {
    buf += c;
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf.length) yield buf;
}

async function* readJsonl(path: string, gzip: boolean): AsyncGenerator<DataRecord> {
  let n = 0;
  for await (const line of lines(path, gzip)) {
    n++;
    if (!line.trim()) continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new DataError(path, n, `not valid JSON: ${(e as Error).message} (hint: one JSON object per line)`);
    }
    if (typeof v !== "object" || v === null || Array.isArray(v))
      throw new DataError(path, n, "a line must hold a JSON object");
    yield v as DataRecord;
  }
}

/** The elements of a top-level JSON array, parsed one at a time (the file is never read whole). */
async function* readJsonArray(path: string, gzip: boolean): AsyncGenerator<DataRecord> {
  let depth = 0;
  let inString = false;
  let escaped = false;
  let started = false;
  let cur = "";
  let n = 0;
  for await (const c of chunks(path, gzip)) {
    for (const ch of c) {
      if (!started) {
        if (ch === "[") started = true;
        else if (!/\s/.test(ch))
          throw new DataError(path, 0, "a .json dataset must be an array of objects (hint: or use .jsonl)");
        continue;
      }
      if (depth === 0 && !inString) {
        if (ch === "{") {
          depth = 1;
          cur = "{";
        } else if (ch === "]") return;
        else if (!/[\s,]/.test(ch)) throw new DataError(path, n + 1, "array elements must be objects");
        continue;
      }
      cur += ch;
      if (inString) {
        if (escaped) escaped = false;
        else if (ch === "\\") escaped = true;
        else if (ch === '"') inString = false;
      } else if (ch === '"') inString = true;
      else if (ch === "{" || ch === "[") depth++;
      else if (ch === "}" || ch === "]") {
        depth--;
        if (depth === 0) {
          n++;
          try {
            yield JSON.parse(cur) as DataRecord;
          } catch (e) {
            throw new DataError(path, n, `not valid JSON: ${(e as Error).message}`);
          }
          cur = "";
        }
      }
    }
  }
  throw new DataError(path, n + 1, "the array is not closed (hint: truncated file?)");
}

/** RFC 4180 CSV: a header row, quoted fields with "" escapes and embedded newlines. */
async function* readCsv(path: string, gzip: boolean): AsyncGenerator<DataRecord> {
  let header: string[] | undefined;
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let pendingQuote = false;
  let n = 0;
  const endRow = function* (): Generator<DataRecord> {
    row.push(field);
    field = "";
    if (!header) header = row;
    else if (!(row.length === 1 && row[0] === "")) {
      n++;
      if (row.length !== header.length)
        throw new DataError(path, n, `${row.length} fields, the header has ${header.length}`);
      yield Object.fromEntries(header.map((h, i) => [h, row[i]]));
    }
    row = [];
  };
  for await (const c of chunks(path, gzip)) {
    for (const ch of c) {
      if (quoted) {
        if (pendingQuote) {
          pendingQuote = false;
          if (ch === '"') {
            field += '"';
            continue;
          }
          quoted = false; // the quote closed the field; fall through to the unquoted rules
        } else if (ch === '"') {
          pendingQuote = true;
          continue;
        } else {
          field += ch;
          continue;
        }
      }
      if (ch === '"' && field === "") quoted = true;
      else if (ch === ",") {
        row.push(field);
        field = "";
      } else if (ch === "\n") yield* endRow();
      else if (ch !== "\r") field += ch;
    }
  }
  if (quoted && !pendingQuote) throw new DataError(path, n + 1, "a quoted field is not closed (hint: truncated file?)");
  if (field !== "" || row.length) yield* endRow();
}

async function* readParquet(path: string): AsyncGenerator<DataRecord> {
  // loaded here, not at import: training and the CLI read JSONL far more often, and the
  // Parquet code (with its decompressors) is most of this package's import time
  const [{ asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects }, { compressors }] = await Promise.all([
    import("hyparquet"),
    import("hyparquet-compressors"),
  ]);
  const file = await asyncBufferFromFile(path);
  let metadata: Awaited<ReturnType<typeof parquetMetadataAsync>>;
  try {
    metadata = await parquetMetadataAsync(file);
  } catch (e) {
    throw new DataError(path, 0, `not a readable Parquet file: ${(e as Error).message}`);
  }
  // one row group at a time: memory is bounded by the largest group, not the file
  let start = 0;
  for (const rg of metadata.row_groups) {
    const end = start + Number(rg.num_rows);
    const rows = await parquetReadObjects({ file, metadata, compressors, rowStart: start, rowEnd: end });
    for (const r of rows) yield r as DataRecord;
    start = end;
  }
}

/** The data files of a Hugging Face dataset directory: those whose path names `split`, or
 * without one its train split when it names one, else every file. */
export function datasetFiles(dir: string, split?: string): string[] {
  const all: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.name.startsWith(".")) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (formatOf(p)) all.push(p);
    }
  };
  walk(dir);
  all.sort();
  const named = (s: string) => all.filter((p) => new RegExp(`(^|[/_.-])${s}([/_.-]|$)`).test(p.slice(dir.length)));
  if (split) return named(split);
  const train = named("train");
  return train.length ? train : all;
}

/** Every record of a file or dataset directory, streamed. */
export async function* readRecords(path: string): AsyncGenerator<DataRecord> {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch {
    throw new DataError(path, 0, "not found (hint: check the path)");
  }
  if (st.isDirectory()) {
    const files = datasetFiles(path);
    if (!files.length) throw new DataError(path, 0, "no .jsonl, .json, .csv or .parquet files in this directory");
    for (const f of files) yield* readRecords(f);
    return;
  }
  const fmt = formatOf(path);
  if (!fmt)
    throw new DataError(
      path,
      0,
      "unknown format (hint: .jsonl, .json, .csv, .parquet, optionally .gz, or a dataset directory)",
    );
  if (fmt.kind === "parquet") yield* readParquet(path);
  else if (fmt.kind === "jsonl") yield* readJsonl(path, fmt.gzip);
  else if (fmt.kind === "json") yield* readJsonArray(path, fmt.gzip);
  else yield* readCsv(path, fmt.gzip);
}
