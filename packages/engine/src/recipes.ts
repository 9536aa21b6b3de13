// The study's datasets by name (`data.train = "recipe:NAME"`, STUDY.md §1): where each is on
// the Hub, streamed shard by shard into the prepare step. The shards are listed at one commit,
// then fetched one at a time into the Hugging Face cache and read record by record (Parquet a
// row group at a time); with `data.max_tokens` the stream stops at the record that reaches the
// budget, so a 20B-token set is never held in memory, and only the shards a budget needs are
// ever downloaded. The output is the normalised JSONL the engine prepares from, cached by the
// commit, the shards, the mapping, the budget and the tokenizer.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DataError, type Mapping, RECIPES, readRecords } from "@loralab/data";
import { type HubRef, pinRevision, resolveRef } from "@loralab/hub";

export interface RecipeSource {
  repo: string;
  /** A branch, or refs/convert/parquet for a dataset the Hub converted. */
  revision: string;
  /** The folder of the subset or split ("" = the repo's root). */
  under: string;
  /** Which of its files are data. */
  files: RegExp;
  /** What the user should know before streaming it. */
  note?: string;
}

/** Where each recipe's dataset is. Branches, not commits: this project's machines cannot reach
 *  the Hub to read the shas; every run records the commit it streamed (data.source). */
export const RECIPE_SOURCES: Record<string, RecipeSource> = {
  // starcoderdata's python subset: 59 Parquet shards, field `content`; gated (accept its terms)
  "starcoder-python": {
    repo: "bigcode/starcoderdata",
    revision: "main",
    under: "python",
    files: /\.parquet$/,
    note: "gated: accept its terms at https://huggingface.co/datasets/bigcode/starcoderdata and set HF_TOKEN",
  },
  openwebmath: { repo: "open-web-math/open-web-math", revision: "main", under: "data", files: /\.parquet$/ },
  "magicoder-evol-instruct": {
    repo: "ise-uiuc/Magicoder-Evol-Instruct-110K",
    revision: "main",
    under: "",
    files: /\.jsonl$/,
  },
  // one 395K-record JSON array upstream: read from the Hub's own Parquet conversion instead
  metamathqa: {
    repo: "meta-math/MetaMathQA",
    revision: "refs/convert/parquet",
    under: "default/train",
    files: /\.parquet$/,
  },
};

export interface RecipeOptions {
  cacheDir: string;
  /** Token budget (0 = all). */
  maxTokens: number;
  /** Record budget (0 = all). */
  maxRecords: number;
  /** Counts each text's tokens with the model's tokenizer. */
  count: (texts: string[]) => number[];
  /** The tokenizer's identity, for the cache key. */
  tokenizerKey: string;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface RecipeReport {
  output: string;
  /** `org/name@sha/under`: what to record as data.source. */
  pinned: string;
  mapping: Mapping;
  records: number;
  tokens: number;
  /** Shards read, of those listed. */
  shards: { read: number; listed: number };
  reused: boolean;
}

const BATCH = 256;

/** Stream recipe `name` from the Hub into a normalised JSONL. */
export async function prepareRecipe(name: string, o: RecipeOptions): Promise<RecipeReport> {
  const src = RECIPE_SOURCES[name];
  const fields = RECIPES[name];
  if (!src || !fields)
    throw new DataError(
      `recipe:${name}`,
      0,
      `unknown recipe (hint: one of ${Object.keys(RECIPE_SOURCES)
        .map((n) => `recipe:${n}`)
        .join(", ")})`,
    );
  const mapping: Mapping = {
    format: fields.format,
    text_field: fields.text_field ?? "text",
    prompt_field: fields.prompt_field ?? "prompt",
    response_field: fields.response_field ?? "response",
    messages_field: fields.messages_field ?? "messages",
  };
  const log = o.log ?? ((l: string) => console.error(l));
  const ref: HubRef = { type: "dataset", repo: src.repo, revision: src.revision, path: src.under };
  // one commit for every shard: the listing names it, each fetch asks for it
  const listing = await resolveRef(ref, { listOnly: true, signal: o.signal });
  const shards = listing.files.filter((f) => src.files.test(f)).sort();
  if (!shards.length)
    throw new DataError(
      `recipe:${name}`,
      0,
      `${src.repo}@${listing.sha.slice(0, 12)} has no data files under \`${src.under || "/"}\``,
    );
  const pinned = `${src.repo}@${listing.sha}${src.under ? `/${src.under}` : ""}`;
  const key = createHash("sha256")
    .update(JSON.stringify({ name, pinned, mapping, max: [o.maxTokens, o.maxRecords], tok: o.tokenizerKey, v: 1 }))
    .digest("hex")
    .slice(0, 16);
  const dir = join(o.cacheDir, "normalized");
  mkdirSync(dir, { recursive: true });
  const output = join(dir, `recipe-${name}-${key}.jsonl`);
  const stats = `${output}.json`;
  if (existsSync(output) && existsSync(stats))
    return { ...(JSON.parse(readFileSync(stats, "utf8")) as RecipeReport), output, reused: true };
  if (src.note && !listing.cached) log(`recipe ${name}: ${src.note}`);

  const tmp = `${output}.tmp`;
  const w = Bun.file(tmp).writer();
  let [records, tokens, read] = [0, 0, 0];
  const done = () => (o.maxTokens > 0 && tokens >= o.maxTokens) || (o.maxRecords > 0 && records >= o.maxRecords);
  let batch: { row: string; texts: string[] }[] = [];
  // a batch is counted, then written row by row until the budget is reached
  const flush = () => {
    const counts = o.count(batch.flatMap((b) => b.texts));
    let at = 0;
    for (const b of batch) {
      if (done()) break;
      const n = b.texts.reduce((sum, _, i) => sum + counts[at + i]!, 0) + 1; // + its EOS
      at += b.texts.length;
      w.write(b.row);
      records++;
      tokens += n;
    }
    batch = [];
  };
  try {
    for (const shard of shards) {
      if (done()) break;
      const r = await resolveRef({ ...ref, revision: listing.sha, path: shard }, { signal: o.signal });
      read++;
      let n = 0;
      for await (const rec of readRecords(r.path)) {
        if (o.signal?.aborted) throw new DataError(shard, n, "cancelled while streaming the recipe");
        n++;
        const text = (f: string) => {
          const v = rec[f];
          if (typeof v !== "string")
            throw new DataError(
              `${src.repo}/${shard}`,
              n,
              `field \`${f}\` is ${v === undefined ? "missing" : typeof v} (fields: ${Object.keys(rec).join(", ")})`,
            );
          return v;
        };
        const row =
          mapping.format === "cpt"
            ? { text: text(mapping.text_field) }
            : { prompt: text(mapping.prompt_field), response: text(mapping.response_field) };
        batch.push({ row: `${JSON.stringify(row)}\n`, texts: Object.values(row) });
        if (batch.length >= BATCH) flush();
        if (done()) break;
      }
      if (batch.length) flush();
      log(`recipe ${name}: ${shard} read (${read} of ${shards.length} shards; ${records} records, ${tokens} tokens)`);
    }
    await w.end();
  } catch (e) {
    await w.end();
    rmSync(tmp, { force: true }); // nothing half-written is left looking valid
    throw e;
  }
  if (records === 0) {
    rmSync(tmp, { force: true });
    throw new DataError(`recipe:${name}`, 0, "no records");
  }
  renameSync(tmp, output);
  // the branch names the commit only now, with every shard the stream read in the cache
  if (!listing.cached) await pinRevision(ref, listing.sha);
  const report: RecipeReport = {
    output,
    pinned,
    mapping,
    records,
    tokens,
    shards: { read, listed: shards.length },
    reused: false,
  };
  writeFileSync(stats, JSON.stringify(report));
  return report;
}

/** The tokenizer a config's model uses, and a key that changes when it does: its content's
 *  hash (a tokenizer.json), or for a large file (a .gguf) its size and time. */
export function tokenizerOf(model: { path?: string; tokenizer?: string }): { path: string; key: string } {
  const path =
    model.tokenizer || (model.path?.endsWith(".gguf") ? model.path : join(model.path ?? "", "tokenizer.json"));
  const st = existsSync(path) ? statSync(path) : null;
  if (st && st.size < 64 << 20) return { path, key: createHash("sha256").update(readFileSync(path)).digest("hex") };
  return { path, key: `${path}\0${st?.size ?? 0}\0${st?.mtimeMs ?? 0}` };
}
