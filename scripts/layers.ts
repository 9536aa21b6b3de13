// The layer checker: crates/core's modules and the workspace's packages against the order
// declared in layers.toml (lowest layer first). `bun scripts/layers.ts [ROOT] [--only rust|ts]`;
// tests/layers.test.ts runs it on fixture trees and on this repository. One line per violation
// and exit 1, else a one-line summary and exit 0; a config it cannot read exits 2.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { parse as parseToml } from "smol-toml";

export interface Violation {
  file: string; // relative to the root
  line: number;
  message: string;
}

export interface LayerReport {
  violations: Violation[];
  summary: string[];
}

export class LayersConfigError extends Error {}

type Only = "rust" | "ts" | undefined;

export function checkLayers(root: string, only?: Only): LayerReport {
  const path = join(root, "layers.toml");
  if (!existsSync(path)) throw new LayersConfigError(`${path}: not found (hint: the layer order lives at the root)`);
  let config: Record<string, unknown>;
  try {
    config = parseToml(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new LayersConfigError(`${path}: ${(e as Error).message}`);
  }
  const report: LayerReport = { violations: [], summary: [] };
  if (only !== "ts") {
    const crates = (config.rust ?? {}) as Record<string, { layers?: unknown }>;
    for (const [src, table] of Object.entries(crates)) checkRust(root, src, declaredLayers(src, table.layers), report);
  }
  if (only !== "rust" && config.ts) {
    checkTs(root, declaredLevels((config.ts as { layers?: unknown }).layers), report);
  }
  return report;
}

function declaredLayers(src: string, layers: unknown): string[] {
  if (!Array.isArray(layers) || !layers.every((l) => typeof l === "string"))
    throw new LayersConfigError(`layers.toml: [rust."${src}"] layers must be a list of module names, lowest first`);
  return layers;
}

/** `[ts] layers`: each entry a package name or a list of them (one level, independent packages). */
function declaredLevels(layers: unknown): string[][] {
  if (!Array.isArray(layers))
    throw new LayersConfigError("layers.toml: [ts] layers must be a list, lowest first, of names or lists of names");
  return layers.map((l) => {
    const level = Array.isArray(l) ? l : [l];
    if (!level.every((n) => typeof n === "string"))
      throw new LayersConfigError(
        `layers.toml: [ts] layers: ${JSON.stringify(l)} is not a package name or list of them`,
      );
    return level as string[];
  });
}

// ---------------------------------------------------------------------------------------------
// Rust: one crate's src directory

interface Reference {
  line: number;
  text: string; // the path as written, `use` groups expanded
  abs: string[] | null; // the module path it names, from the crate root; null: another crate
}

interface Edge {
  to: string;
  line: number;
  text: string;
}

function checkRust(root: string, srcRel: string, layers: string[], report: LayerReport): void {
  const src = join(root, srcRel);
  if (!existsSync(src)) {
    report.violations.push({ file: "layers.toml", line: 1, message: `[rust."${srcRel}"]: no such directory` });
    return;
  }
  const rank = new Map(layers.map((l, i) => [l, i]));
  const files = walk(src, (f) => f.endsWith(".rs")).map((f) => relative(src, f));
  // module path of each file: nn/ops.rs -> nn::ops, nn/mod.rs -> nn, data.rs -> data
  const modOf = new Map<string, string[]>();
  for (const f of files) {
    if (f === "lib.rs") continue; // the crate root declares the modules; it is exempt
    const parts = f.slice(0, -3).split("/");
    if (parts.length > 1 && parts.at(-1) === "mod") parts.pop();
    modOf.set(f, parts);
  }
  const fileOf = new Map([...modOf].map(([f, m]) => [m.join("::"), f]));
  const shown = (f: string) => join(srcRel, f);
  const graph = new Map<string, Map<string, Edge>>();
  let references = 0;

  for (const [file, mod] of [...modOf].sort()) {
    const layer = mod[0]!;
    if (!rank.has(layer))
      report.violations.push({
        file: shown(file),
        line: 1,
        message: `undeclared module \`${layer}\`: not a layer of [rust."${srcRel}"] (hint: add it to layers.toml in its place)`,
      });
    const edges = new Map<string, Edge>();
    graph.set(file, edges);
    const isChild = (here: string[], name: string) => fileOf.has([...here, name].join("::"));
    for (const ref of rustReferences(readFileSync(join(src, file), "utf8"), mod, isChild)) {
      if (!ref.abs) continue;
      references++;
      const target = ref.abs[0];
      if (target === undefined || !rank.has(target)) {
        report.violations.push({
          file: shown(file),
          line: ref.line,
          message: `${ref.text}: undeclared module \`${target ?? "(the crate root)"}\`, not a layer of [rust."${srcRel}"] (layer ${layer}; hint: name the module the item lives in, or add it to layers.toml)`,
        });
      } else if (rank.has(layer) && rank.get(target)! > rank.get(layer)!) {
        report.violations.push({
          file: shown(file),
          line: ref.line,
          message: `${ref.text}: layer ${layer} uses layer ${target}, which is above it`,
        });
      }
      // the file it lands in: the longest prefix of the path that is a file of its own
      for (let n = ref.abs.length; n > 0; n--) {
        const to = fileOf.get(ref.abs.slice(0, n).join("::"));
        if (to === undefined) continue;
        if (to !== file && !edges.has(to)) edges.set(to, { to, line: ref.line, text: ref.text });
        break;
      }
    }
  }

  for (const cycle of cycles(graph)) {
    const hops = cycle.map((f, i) => {
      const e = graph.get(f)!.get(cycle[(i + 1) % cycle.length]!)!;
      return `${shown(f)}:${e.line} (${e.text})`;
    });
    const first = graph.get(cycle[0]!)!.get(cycle[1 % cycle.length]!)!;
    report.violations.push({
      file: shown(cycle[0]!),
      line: first.line,
      message: `module cycle: ${hops.join(" -> ")} -> ${shown(cycle[0]!)} (layers ${cycle.map((f) => modOf.get(f)![0]).join(" -> ")})`,
    });
  }
  report.summary.push(`rust ${srcRel}: ${modOf.size} files in ${layers.length} layers, ${references} references`);
}

/** Every path a Rust file names that starts at `crate`, `super`, `self` or a child module:
 * `use` trees (groups expanded, across lines) and paths in code, comments and strings skipped. */
export function rustReferences(
  source: string,
  fileMod: string[],
  isChild: (here: string[], name: string) => boolean = () => false,
): Reference[] {
  const toks = rustTokens(maskRust(source));
  const out: Reference[] = [];
  const inline: { name: string; depth: number }[] = []; // `mod tests { ... }` inside the file
  let depth = 0;
  const here = () => [...fileMod, ...inline.map((m) => m.name)];
  const isIdent = (t: string | undefined) => t !== undefined && /^(\$crate|r#\w+|[A-Za-z_]\w*)$/.test(t);
  const starts = (t: string) => t === "crate" || t === "$crate" || t === "super" || t === "self";

  const emit = (segs: string[], line: number) => {
    const h = here();
    const text = segs.filter((s, k) => k === 0 || s !== "self").join("::"); // `a::{self}` is `a`
    out.push({ line, text, abs: absolutePath(segs, h, isChild) });
  };

  for (let i = 0; i < toks.length; i++) {
    const { t, line } = toks[i]!;
    if (t === "{") {
      depth++;
      if (toks[i - 2]?.t === "mod" && isIdent(toks[i - 1]?.t)) inline.push({ name: toks[i - 1]!.t, depth });
    } else if (t === "}") {
      if (inline.at(-1)?.depth === depth) inline.pop();
      depth--;
    } else if (t === "use" && toks[i + 1]?.t !== "<") {
      // use TREE ;  where TREE := [::] ( { TREE, ... } | * | path [:: ({...} | *)] [as name] )
      let j = i + 1;
      const tree = (prefix: string[]) => {
        if (toks[j]?.t === "::") j++;
        const at = toks[j]?.line ?? line;
        if (toks[j]?.t === "{") {
          j++;
          while (j < toks.length && toks[j]!.t !== "}") {
            tree(prefix);
            if (toks[j]?.t === ",") j++;
            else break;
          }
          if (toks[j]?.t === "}") j++;
          return;
        }
        if (toks[j]?.t === "*") {
          j++;
          if (prefix.length) emit(prefix, at);
          return;
        }
        const segs = [...prefix];
        while (isIdent(toks[j]?.t)) {
          segs.push(toks[j]!.t);
          j++;
          if (toks[j]?.t !== "::") break;
          j++;
          if (toks[j]?.t === "{" || toks[j]?.t === "*") return tree(segs);
        }
        if (toks[j]?.t === "as") j += 2;
        if (segs.length) emit(segs, at);
      };
      tree([]);
      while (j < toks.length && toks[j]!.t !== ";") j++; // anything the tree did not take
      i = j;
    } else if (
      toks[i + 1]?.t === "::" &&
      toks[i - 1]?.t !== "::" &&
      (starts(t) || (isIdent(t) && isChild(here(), t))) &&
      !(toks[i - 1]?.t === "in" && toks[i - 2]?.t === "(") // pub(in crate::x): a visibility, not a use
    ) {
      const segs = [t];
      let j = i + 1;
      while (toks[j]?.t === "::" && isIdent(toks[j + 1]?.t)) {
        segs.push(toks[j + 1]!.t);
        j += 2;
      }
      emit(segs, line);
      i = j - 1;
    }
  }
  return out;
}

/** A path as written, resolved against the module it is written in; null for another crate. */
function absolutePath(
  segs: string[],
  here: string[],
  isChild: (here: string[], name: string) => boolean,
): string[] | null {
  const [head, ...rest] = segs;
  let abs: string[];
  if (head === "crate" || head === "$crate") abs = rest;
  else if (head === "self") abs = [...here, ...rest];
  else if (head === "super") {
    const base = here.slice(0, -1);
    while (rest[0] === "super") {
      rest.shift();
      base.pop();
    }
    abs = [...base, ...rest];
  } else if (head !== undefined && isChild(here, head)) abs = [...here, ...segs];
  else return null;
  return abs.filter((s) => s !== "self"); // `a::{self, b}`: `self` is `a`
}

/** Comments, strings and char literals blanked (newlines kept, so lines still count). */
export function maskRust(src: string): string {
  const out = src.split("");
  const blank = (a: number, b: number) => {
    for (let k = a; k < Math.min(b, src.length); k++) if (out[k] !== "\n") out[k] = " ";
  };
  const rawString = /(?:b|c)?r(#*)"/y;
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (c === "/" && src[i + 1] === "/") {
      const j = src.indexOf("\n", i);
      const end = j < 0 ? src.length : j;
      blank(i, end);
      i = end;
      continue;
    }
    if (c === "/" && src[i + 1] === "*") {
      let level = 1;
      let j = i + 2;
      while (j < src.length && level) {
        if (src[j] === "/" && src[j + 1] === "*") level++;
        else if (src[j] === "*" && src[j + 1] === "/") level--;
        else {
          j++;
          continue;
        }
        j += 2;
      }
      blank(i, j);
      i = j;
      continue;
    }
    rawString.lastIndex = i;
    const raw = !/[\w$]/.test(src[i - 1] ?? "") ? rawString.exec(src) : null;
    if (raw) {
      const close = `"${raw[1]}`;
      const j = src.indexOf(close, i + raw[0].length);
      const end = j < 0 ? src.length : j + close.length;
      blank(i, end);
      i = end;
      continue;
    }
    if (c === '"') {
      let j = i + 1;
      while (j < src.length && src[j] !== '"') j += src[j] === "\\" ? 2 : 1;
      blank(i, j + 1);
      i = j + 1;
      continue;
    }
    if (c === "'") {
      if (src[i + 1] === "\\") {
        const j = src.indexOf("'", i + 3);
        const end = j < 0 ? src.length : j + 1;
        blank(i, end);
        i = end;
        continue;
      }
      const width = (src.codePointAt(i + 1) ?? 0) > 0xffff ? 2 : 1;
      if (src[i + 1 + width] === "'") {
        blank(i, i + 2 + width);
        i += 2 + width;
        continue;
      }
      i++; // a lifetime: 'a
      continue;
    }
    i++;
  }
  return out.join("");
}

function rustTokens(masked: string): { t: string; line: number }[] {
  const toks: { t: string; line: number }[] = [];
  let line = 1;
  for (const m of masked.matchAll(/\n|r#[A-Za-z_]\w*|\$?[A-Za-z_]\w*|\d[\w.]*|::|[^\s\w]/g)) {
    if (m[0] === "\n") line++;
    else toks.push({ t: m[0], line });
  }
  return toks;
}

// ---------------------------------------------------------------------------------------------
// TypeScript: the workspace's packages

const SOURCE = /\.(ts|tsx|mts|cts|js|mjs|cjs)$/;
// what a package needs at run time; devDependencies (test tools) are not part of the layering
const DEP_FIELDS = ["dependencies", "peerDependencies", "optionalDependencies"] as const;

function checkTs(root: string, levels: string[][], report: LayerReport): void {
  const level = new Map<string, number>();
  for (const [i, names] of levels.entries())
    for (const n of names) {
      if (level.has(n))
        report.violations.push({ file: "layers.toml", line: 1, message: `[ts] layers: ${n} is declared twice` });
      level.set(n, i);
    }
  const packages = workspacePackages(root);
  for (const n of level.keys())
    if (!packages.has(n))
      report.violations.push({ file: "layers.toml", line: 1, message: `[ts] layers: ${n} is not a workspace package` });
  const describe = (n: string) => `${n} (layer ${level.get(n)! + 1})`;
  const graph = new Map<string, Map<string, Edge>>();
  let imports = 0;

  const edge = (from: string, to: string, file: string, line: number, text: string) => {
    const edges = graph.get(from)!;
    if (!edges.has(to)) edges.set(to, { to, line, text: `${file}:${line}` });
    if (!level.has(from) || !level.has(to)) return; // reported once, below
    const [lf, lt] = [level.get(from)!, level.get(to)!];
    if (lt > lf)
      report.violations.push({
        file,
        line,
        message: `${text}: ${describe(from)} uses ${describe(to)}, which is above it`,
      });
    else if (lt === lf)
      report.violations.push({
        file,
        line,
        message: `${text}: ${describe(from)} uses ${to} on its own level (packages on one level are independent; hint: put one below the other in layers.toml)`,
      });
  };

  for (const [name, dir] of [...packages].sort()) {
    graph.set(name, new Map());
    const manifestRel = relative(root, join(dir, "package.json"));
    if (!level.has(name))
      report.violations.push({
        file: manifestRel,
        line: 1,
        message: `undeclared package ${name}: not in [ts] layers of layers.toml (hint: add it in its place)`,
      });
    const manifestText = readFileSync(join(dir, "package.json"), "utf8");
    const manifest = JSON.parse(manifestText) as Record<string, Record<string, string> | undefined>;
    const declared = new Set<string>();
    for (const field of DEP_FIELDS)
      for (const dep of Object.keys(manifest[field] ?? {})) {
        declared.add(dep);
        if (!packages.has(dep) || dep === name) continue;
        edge(name, dep, manifestRel, lineOfKey(manifestText, field, dep), `"${field}": "${dep}"`);
      }
    for (const file of walk(dir, (f) => SOURCE.test(f))) {
      const fileRel = relative(root, file);
      for (const { spec, line } of tsImports(readFileSync(file, "utf8"))) {
        let dep = packageName(spec);
        if (dep === undefined && spec.startsWith(".")) {
          // a relative path into another package is an import of it that no manifest declares
          const target = resolve(dirname(file), spec);
          const owner = [...packages].find(([, d]) => target === d || target.startsWith(`${d}/`))?.[0];
          if (owner && owner !== name) {
            report.violations.push({
              file: fileRel,
              line,
              message: `import "${spec}": reaches into ${owner} by path (hint: import "${owner}" by name)`,
            });
            dep = owner;
          }
        }
        if (dep === undefined || !packages.has(dep) || dep === name) continue;
        imports++;
        edge(name, dep, fileRel, line, `import "${spec}"`);
        if (!declared.has(dep))
          report.violations.push({
            file: fileRel,
            line,
            message: `import "${spec}": ${dep} is not among ${manifestRel}'s dependencies (hint: add "${dep}": "workspace:*")`,
          });
      }
    }
  }

  for (const cycle of cycles(graph)) {
    const hops = cycle.map((p, i) => `${p} (${graph.get(p)!.get(cycle[(i + 1) % cycle.length]!)!.text})`);
    const [file, line] = graph
      .get(cycle[0]!)!
      .get(cycle[1 % cycle.length]!)!
      .text.split(/:(?=\d+$)/);
    report.violations.push({
      file: file!,
      line: Number(line),
      message: `package cycle: ${hops.join(" -> ")} -> ${cycle[0]}`,
    });
  }
  report.summary.push(`ts: ${packages.size} packages in ${levels.length} layers, ${imports} imports`);
}

/** Workspace packages by name -> directory, from the root package.json's `workspaces`. */
function workspacePackages(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const rootManifest = join(root, "package.json");
  if (!existsSync(rootManifest)) return out;
  const { workspaces } = JSON.parse(readFileSync(rootManifest, "utf8")) as { workspaces?: string[] };
  for (const pattern of workspaces ?? [])
    for (const rel of new Bun.Glob(`${pattern}/package.json`).scanSync({ cwd: root, onlyFiles: true })) {
      const dir = join(root, rel.slice(0, -"/package.json".length));
      out.set((JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name: string }).name, dir);
    }
  return out;
}

/** The package an import specifier names: `@a/b/c` -> `@a/b`, `a/c` -> `a`; none for paths and builtins. */
function packageName(spec: string): string | undefined {
  if (spec.startsWith(".") || spec.startsWith("/") || /^[a-z]+:/.test(spec)) return undefined;
  const parts = spec.split("/");
  return spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
}

function lineOfKey(text: string, field: string, key: string): number {
  const start = Math.max(0, text.indexOf(`"${field}"`));
  const at = text.indexOf(`"${key}"`, start);
  return at < 0 ? 1 : text.slice(0, at).split("\n").length;
}

/** The module specifiers a TS/JS file imports: `import … from`, `export … from`, `import "x"`,
 * `import("x")`, `require("x")`; type-only imports too (they are still a dependency). Comments,
 * strings, template literals and regular expressions are lexed so nothing in them counts. */
export function tsImports(source: string): { spec: string; line: number }[] {
  const toks = tsTokens(source);
  const out: { spec: string; line: number }[] = [];
  for (let i = 0; i < toks.length; i++) {
    const tok = toks[i]!;
    if (tok.kind !== "string") continue;
    const prev = toks[i - 1];
    const fromKeyword = prev?.kind === "word" && (prev.t === "from" || prev.t === "import");
    const call =
      prev?.t === "(" &&
      toks[i - 2]?.kind === "word" &&
      (toks[i - 2]!.t === "import" || toks[i - 2]!.t === "require") &&
      toks[i - 3]?.t !== ".";
    if (fromKeyword || call) out.push({ spec: tok.t, line: tok.line });
  }
  return out;
}

interface TsToken {
  kind: "word" | "string" | "punct";
  t: string;
  line: number;
}

const REGEX_AFTER_WORD = new Set([
  "return",
  "typeof",
  "instanceof",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "case",
  "do",
  "else",
  "yield",
  "await",
]);

function tsTokens(src: string): TsToken[] {
  const toks: TsToken[] = [];
  let line = 1;
  let i = 0;
  // template literals nest through `${ … }`: the brace depth at which each one resumes
  const templates: number[] = [];
  let braces = 0;
  const advance = (to: number) => {
    for (let k = i; k < to && k < src.length; k++) if (src[k] === "\n") line++;
    i = to;
  };
  const template = () => {
    // from just inside a backtick (or a `}` closing `${`): to the closing backtick or the next `${`
    let j = i;
    while (j < src.length) {
      if (src[j] === "\\") j += 2;
      else if (src[j] === "`") {
        advance(j + 1);
        toks.push({ kind: "punct", t: "`", line });
        return;
      } else if (src[j] === "$" && src[j + 1] === "{") {
        templates.push(braces);
        braces++;
        advance(j + 2);
        return;
      } else j++;
    }
    advance(j);
  };
  while (i < src.length) {
    const c = src[i]!;
    if (c === "\n" || c === " " || c === "\t" || c === "\r") {
      advance(i + 1);
    } else if (c === "/" && src[i + 1] === "/") {
      const j = src.indexOf("\n", i);
      advance(j < 0 ? src.length : j);
    } else if (c === "/" && src[i + 1] === "*") {
      const j = src.indexOf("*/", i + 2);
      advance(j < 0 ? src.length : j + 2);
    } else if (c === '"' || c === "'") {
      const start = line;
      let j = i + 1;
      let value = "";
      while (j < src.length && src[j] !== c && src[j] !== "\n") {
        if (src[j] === "\\") {
          value += src[j + 1] ?? "";
          j += 2;
        } else value += src[j++];
      }
      advance(j + 1);
      toks.push({ kind: "string", t: value, line: start });
    } else if (c === "`") {
      advance(i + 1);
      template();
    } else if (c === "/" && regexAllowed(toks.at(-1))) {
      let j = i + 1;
      let inClass = false;
      while (j < src.length && src[j] !== "\n") {
        if (src[j] === "\\") j++;
        else if (src[j] === "[") inClass = true;
        else if (src[j] === "]") inClass = false;
        else if (src[j] === "/" && !inClass) break;
        j++;
      }
      j++;
      while (j < src.length && /[a-z]/.test(src[j]!)) j++;
      advance(j);
      toks.push({ kind: "punct", t: "/re/", line });
    } else if (/[A-Za-z_$]/.test(c)) {
      const m = /[\w$]+/y;
      m.lastIndex = i;
      const word = m.exec(src)![0];
      toks.push({ kind: "word", t: word, line });
      advance(i + word.length);
    } else if (/\d/.test(c)) {
      const m = /[\w.]+/y;
      m.lastIndex = i;
      const num = m.exec(src)![0];
      toks.push({ kind: "word", t: num, line });
      advance(i + num.length);
    } else if (c === "}" && templates.length && templates.at(-1) === braces - 1) {
      templates.pop();
      braces--;
      advance(i + 1);
      template();
    } else {
      if (c === "{") braces++;
      else if (c === "}") braces--;
      toks.push({ kind: "punct", t: c, line });
      advance(i + 1);
    }
  }
  return toks;
}

function regexAllowed(prev: TsToken | undefined): boolean {
  if (!prev) return true;
  if (prev.kind === "string") return false;
  if (prev.kind === "word") return REGEX_AFTER_WORD.has(prev.t);
  return !(prev.t === ")" || prev.t === "]" || prev.t === "`" || prev.t === "/re/");
}

// ---------------------------------------------------------------------------------------------
// shared

function walk(dir: string, keep: (f: string) => boolean): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (name.startsWith(".") || name === "node_modules" || name === "target" || name === "dist") continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p, keep));
    else if (keep(p)) out.push(p);
  }
  return out;
}

/** One cycle per strongly connected component of more than one node (Tarjan), shortest through
 * the component's first node by name, as the list of nodes in order. */
function cycles<E>(graph: Map<string, Map<string, E>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) components.push(component);
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return components.map((component) => {
    const members = new Set(component);
    const start = [...component].sort()[0]!;
    // breadth-first from start, within the component, back to start
    const parent = new Map<string, string>();
    const queue = [start];
    while (queue.length) {
      const v = queue.shift()!;
      for (const w of graph.get(v)!.keys()) {
        if (!members.has(w)) continue;
        if (w === start) {
          const path = [v];
          while (path[0] !== start) path.unshift(parent.get(path[0]!)!);
          return path;
        }
        if (!parent.has(w)) {
          parent.set(w, v);
          queue.push(w);
        }
      }
    }
    return component; // unreachable: a component always closes
  });
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const onlyAt = args.indexOf("--only");
  const only = onlyAt >= 0 ? args[onlyAt + 1] : undefined;
  if (only !== undefined && only !== "rust" && only !== "ts") {
    console.error(`layers: --only ${only}: expected rust or ts`);
    process.exit(2);
  }
  const positional = onlyAt < 0 ? args : args.filter((_, i) => i !== onlyAt && i !== onlyAt + 1);
  if (positional.some((a) => a.startsWith("-"))) {
    console.error("usage: bun scripts/layers.ts [ROOT] [--only rust|ts]");
    process.exit(2);
  }
  const root = resolve(positional[0] ?? new URL("..", import.meta.url).pathname);
  let report: LayerReport;
  try {
    report = checkLayers(root, only as Only);
  } catch (e) {
    if (!(e instanceof LayersConfigError)) throw e;
    console.error(`layers: ${e.message}`);
    process.exit(2);
  }
  for (const v of report.violations) console.log(`${v.file}:${v.line}: ${v.message}`);
  if (report.violations.length) {
    console.error(`layers: ${report.violations.length} violations (${report.summary.join("; ")})`);
    process.exit(1);
  }
  console.log(`layers: ok (${report.summary.join("; ")})`);
}
