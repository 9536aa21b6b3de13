// Turns any supported dataset (readers.ts) into the engine's input: a JSONL of
// {"text"} (CPT) or {"prompt", "response"} (IFT) records, streamed to a cache file keyed by
// the source files and the mapping, written once and renamed into place. Recipes know the
// study's datasets by their real field names.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { DataError, datasetFiles, readRecords } from "./readers.ts";

export interface Mapping {
  format: "cpt" | "ift" | "chat";
  text_field: string;
  prompt_field: string;
  response_field: string;
  messages_field: string;
}

/** The study's datasets (STUDY.md §1), by the field names they ship with. */
export const RECIPES: Record<string, Partial<Mapping> & Pick<Mapping, "format">> = {
  "starcoder-python": { format: "cpt", text_field: "content" },
  openwebmath: { format: "cpt", text_field: "text" },
  "magicoder-evol-instruct": { format: "ift", prompt_field: "instruction", response_field: "response" },
  metamathqa: { format: "ift", prompt_field: "query", response_field: "response" },
  // conversations as most chat datasets ship them; the model's chat template renders them
  chat: { format: "chat", messages_field: "messages" },
};

/** Whether the engine can read this file as it is (.jsonl or .txt). */
export function engineReadable(path: string): boolean {
  return (path.endsWith(".jsonl") || path.endsWith(".txt")) && !statSync(path).isDirectory();
}

export interface NormalizeReport {
  source: string;
  output: string;
  records: number;
  reused: boolean;
}

function field(rec: Record<string, unknown>, name: string, file: string, n: number): string {
  const v = rec[name];
  if (typeof v === "string") return v;
  if (v === undefined)
    throw new DataError(
      file,
      n,
      `no field \`${name}\` (fields: ${Object.keys(rec).join(", ")}) (hint: set the data.*_field option or a data.recipe)`,
    );
  throw new DataError(file, n, `field \`${name}\` is ${v === null ? "null" : typeof v}, not a string`);
}

function turns(
  rec: Record<string, unknown>,
  name: string,
  file: string,
  n: number,
): { role: string; content: string }[] {
  let v = rec[name];
  if (typeof v === "string") {
    try {
      v = JSON.parse(v); // CSV and some Parquet exports store the list as JSON text
    } catch {}
  }
  if (!Array.isArray(v))
    throw new DataError(
      file,
      n,
      `no list \`${name}\` of {role, content} turns (fields: ${Object.keys(rec).join(", ")})`,
    );
  return v.map((t, i) => {
    const turn = t as { role?: unknown; content?: unknown };
    if (typeof turn?.role !== "string" || typeof turn?.content !== "string")
      throw new DataError(file, n, `turn ${i + 1} needs string role and content`);
    return { role: turn.role, content: turn.content };
  });
}

/** The cache key: every source file's path, size and mtime, and the mapping. */
function key(source: string, m: Mapping): string {
  const abs = resolve(source);
  const files = statSync(abs).isDirectory() ? datasetFiles(abs) : [abs];
  const h = createHash("sha256");
  for (const f of files) {
    const st = statSync(f);
    h.update(`${f}\0${st.size}\0${st.mtimeMs}\0`);
  }
  h.update(JSON.stringify(m));
  return h.digest("hex").slice(0, 16);
}

export async function normalize(
  source: string,
  m: Mapping,
  cacheDir: string,
  signal?: AbortSignal,
): Promise<NormalizeReport> {
  const dir = join(cacheDir, "normalized");
  mkdirSync(dir, { recursive: true });
  const output = join(dir, `${key(source, m)}.jsonl`);
  if (existsSync(output)) return { source, output, records: -1, reused: true };
  const tmp = `${output}.tmp`;
  const w = Bun.file(tmp).writer();
  let n = 0;
  try {
    for await (const rec of readRecords(source)) {
      if (signal?.aborted) throw new DataError(source, n, "cancelled while preparing the data");
      n++;
      const row =
        m.format === "cpt"
          ? { text: field(rec, m.text_field, source, n) }
          : m.format === "chat"
            ? { messages: turns(rec, m.messages_field, source, n) }
            : { prompt: field(rec, m.prompt_field, source, n), response: field(rec, m.response_field, source, n) };
      w.write(`${JSON.stringify(row)}\n`);
    }
    await w.end();
  } catch (e) {
    await w.end();
    rmSync(tmp, { force: true }); // nothing half-written is left looking valid
    throw e;
  }
  if (n === 0) {
    rmSync(tmp, { force: true });
    throw new DataError(source, 0, "no records (hint: the dataset is empty)");
  }
  renameSync(tmp, output);
  return { source, output, records: n, reused: false };
}
