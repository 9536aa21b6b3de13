// Config files as users write them: TOML, YAML or JSON, one schema whatever the syntax; a syntax
// error names the file, line and column. And the nearest valid name, for "did you mean".
import { readFileSync } from "node:fs";
import { parse as parseToml, TomlError } from "smol-toml";
import YAML from "yaml";

/** The extensions a config file may have. */
export const CONFIG_EXTENSIONS = [".toml", ".yaml", ".yml", ".json"] as const;

/** A config file's syntax is wrong: `line` and `column` are 1-based, 0 when unknown. */
export class ConfigSyntaxError extends Error {
  override name = "ConfigSyntaxError";
  constructor(
    message: string,
    readonly file: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(message);
  }
}

function yamlPosition(text: string): [number, number] {
  try {
    YAML.parse(text);
  } catch (e) {
    const pos = (e as { linePos?: { line: number; col: number }[] }).linePos?.[0];
    if (pos) return [pos.line, pos.col];
  }
  return [0, 0];
}

/** Parse config text by the file's extension into a plain value. */
export function parseConfigText(file: string, text: string): unknown {
  const ext = CONFIG_EXTENSIONS.find((e) => file.toLowerCase().endsWith(e));
  if (!ext)
    throw new ConfigSyntaxError(
      `${file}: unknown config format (hint: a ${CONFIG_EXTENSIONS.join(", ")} file)`,
      file,
      0,
      0,
    );
  const fail = (line: number, column: number, what: string): never => {
    const at = line ? `:${line}:${column}` : "";
    throw new ConfigSyntaxError(
      `${file}${at}: ${what} (hint: fix the ${ext.slice(1).toUpperCase()} syntax there)`,
      file,
      line,
      column,
    );
  };
  if (ext === ".toml") {
    try {
      return parseToml(text);
    } catch (e) {
      if (e instanceof TomlError)
        return fail(e.line, e.column, e.message.split("\n")[0]!.replace(/^Invalid TOML document: /, ""));
      throw e;
    }
  }
  if (ext === ".json") {
    try {
      return JSON.parse(text);
    } catch (e) {
      // JSON is YAML: its parser gives the position JSON.parse does not
      const [line, column] = yamlPosition(text);
      return fail(line, column, (e as Error).message.replace(/^JSON Parse error: /, ""));
    }
  }
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  const err = doc.errors[0];
  if (err)
    return fail(
      err.linePos?.[0].line ?? 0,
      err.linePos?.[0].col ?? 0,
      err.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, ""),
    );
  return doc.toJS();
}

/** Read and parse a config file (.toml, .yaml, .yml or .json). */
export function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    throw new ConfigSyntaxError(`config file ${file}: not found (hint: check the path)`, file, 0, 0);
  }
  return parseConfigText(file, text);
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length]!;
}

/** The candidate closest to `name` (case, `-` and `_` ignored first), or undefined when none is
 *  near enough to be a typo. */
export function nearestName(name: string, candidates: readonly string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, "");
  const exact = candidates.find((c) => norm(c) === norm(name));
  if (exact) return exact;
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const dd = distance(norm(name), norm(c));
    if (dd < bestD) [best, bestD] = [c, dd];
  }
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}
