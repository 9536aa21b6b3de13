// The layer checker (scripts/layers.ts) on small fixture trees written to a temp dir: a clean
// tree passes; an upward `use crate::…`, a cycle inside one layer, an undeclared module and a
// package importing one above it fail, each named by file:line. Then this repository's TS half.
import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const checker = join(root, "scripts/layers.ts");

const LAYERS_TOML = `
[rust."core/src"]
layers = ["base", "config", "nn", "api"]

[ts]
layers = [["@fx/native", "@fx/data"], ["@fx/engine"], ["fx"]]
`;

/** A tree that passes, with the traps a naive scan falls into: upward paths in comments,
 * strings, raw strings and a template literal; `{` in char literals; lifetimes; `use super::*`
 * in an inline test module; a grouped `use` across lines. */
function cleanTree(): Record<string, string> {
  const pkg = (name: string, deps: string[] = []) =>
    JSON.stringify(
      { name, private: true, type: "module", dependencies: Object.fromEntries(deps.map((d) => [d, "workspace:*"])) },
      null,
      2,
    );
  return {
    "layers.toml": LAYERS_TOML,
    "package.json": JSON.stringify({ name: "fx-workspace", private: true, workspaces: ["packages/*"] }),
    "core/src/lib.rs": "pub mod api;\npub mod base;\npub mod config;\npub mod nn;\npub use api::*;\n",
    "core/src/base/mod.rs": "pub mod error;\npub mod rng;\n",
    "core/src/base/error.rs": "pub struct Error;\npub type Result<T> = std::result::Result<T, Error>;\n",
    "core/src/base/rng.rs": [
      "// an upward path in a comment is no use: crate::api::Handle",
      "/* nor in a block comment /* nested */ crate::api::Handle */",
      "use super::error::Result;",
      "pub struct Rng<'a> { seed: &'a u64 }",
      'pub const NOTE: &str = "crate::api::Handle";',
      'pub const RAW: &str = r#"crate::api::{Handle}"#;',
      "pub fn brace() -> char { '{' }",
      "pub fn next(r: &mut Rng<'_>) -> Result<u64> { Ok(*r.seed) }",
      "",
    ].join("\n"),
    "core/src/config.rs": [
      "use crate::{",
      "    base::error::{Error, Result},",
      "    base::rng::Rng,",
      "};",
      "pub struct Config;",
      "",
    ].join("\n"),
    "core/src/nn/mod.rs": "pub mod linear;\npub mod ops;\npub use ops::matmul;\n",
    "core/src/nn/ops.rs": [
      "use crate::base::error::Result;",
      "pub fn matmul() -> Result<()> { Ok(()) }",
      "#[cfg(test)]",
      "mod tests {",
      "    use super::*;",
      "    #[test] fn runs() { matmul().unwrap(); }",
      "}",
      "",
    ].join("\n"),
    "core/src/nn/linear.rs":
      "use super::ops;\npub fn linear(r: crate::base::rng::Rng<'_>) { ops::matmul().unwrap(); }\n",
    "core/src/api.rs": "pub struct Handle;\npub fn run() { crate::nn::ops::matmul().unwrap(); }\n",
    "packages/native/package.json": pkg("@fx/native"),
    "packages/native/src/index.ts": "export const addon = 1;\n",
    "packages/data/package.json": pkg("@fx/data"),
    "packages/data/src/index.ts": [
      '// import { train } from "@fx/engine";',
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the fixture's own template literal
      'export const script = `import { train } from "@fx/engine"; ${1 + 1}`;',
      'export const re = /from "@fx\\/engine"/;',
      'export const hint = "import(\\"fx\\")";',
      "",
    ].join("\n"),
    "packages/engine/package.json": pkg("@fx/engine", ["@fx/native", "@fx/data"]),
    "packages/engine/src/index.ts":
      'import { addon } from "@fx/native";\nimport type {} from "@fx/data";\nexport const train = () => addon;\n',
    "packages/fx/package.json": pkg("fx", ["@fx/engine", "@fx/data"]),
    "packages/fx/src/index.ts":
      'export * from "@fx/engine";\nexport const lazy = () => import("@fx/data");\nimport "fx/server";\n',
  };
}

function writeTree(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "loralab-layers-"));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), text);
  }
  return dir;
}

function check(dir: string, ...flags: string[]): { code: number; lines: string[]; err: string } {
  const p = Bun.spawnSync([process.execPath, checker, dir, ...flags], { stdout: "pipe", stderr: "pipe" });
  const out = p.stdout.toString().trim();
  return { code: p.exitCode, lines: out ? out.split("\n") : [], err: p.stderr.toString() };
}

describe("layers: fixture trees", () => {
  test("a clean tree passes with a one-line summary", () => {
    const r = check(writeTree(cleanTree()));
    expect(r.err).toBe("");
    expect(r.lines).toEqual([
      expect.stringMatching(
        /^layers: ok \(rust core\/src: 8 files in 4 layers, \d+ references; ts: 4 packages in 3 layers, 4 imports\)$/,
      ),
    ]);
    expect(r.code).toBe(0);
  });

  test("a base/ file that uses crate::api fails, naming file:line, the path and both layers", () => {
    const tree = cleanTree();
    tree["core/src/base/rng.rs"] += "pub fn back() -> crate::api::Handle {\n    crate::api::Handle\n}\n";
    tree["core/src/base/error.rs"] += "use crate::api::Handle;\n";
    const r = check(writeTree(tree));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      "core/src/base/error.rs:3: crate::api::Handle: layer base uses layer api, which is above it",
      "core/src/base/rng.rs:9: crate::api::Handle: layer base uses layer api, which is above it",
      "core/src/base/rng.rs:10: crate::api::Handle: layer base uses layer api, which is above it",
      // and through the layers below, a cycle
      "core/src/api.rs:2: module cycle: core/src/api.rs:2 (crate::nn::ops::matmul) -> core/src/nn/ops.rs:1 (crate::base::error::Result) -> core/src/base/error.rs:3 (crate::api::Handle) -> core/src/api.rs (layers api -> nn -> base)",
    ]);
    expect(r.err).toContain("4 violations");
  });

  test("grouped `use crate::{...}` across lines: each path on its own line, `self` in a group", () => {
    const tree = cleanTree();
    tree["core/src/config.rs"] = [
      "use crate::{",
      "    base::error::Result,",
      "    api::{self, Handle},",
      "    nn::{ops::matmul, linear},",
      "};",
      "",
    ].join("\n");
    const r = check(writeTree(tree));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      "core/src/config.rs:3: crate::api: layer config uses layer api, which is above it",
      "core/src/config.rs:3: crate::api::Handle: layer config uses layer api, which is above it",
      "core/src/config.rs:4: crate::nn::ops::matmul: layer config uses layer nn, which is above it",
      "core/src/config.rs:4: crate::nn::linear: layer config uses layer nn, which is above it",
    ]);
  });

  test("a cycle inside one layer fails with its path (super:: resolved from the file)", () => {
    const tree = cleanTree();
    tree["core/src/nn/ops.rs"] = `use super::linear::linear;\n${tree["core/src/nn/ops.rs"]}`;
    const r = check(writeTree(tree));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      "core/src/nn/linear.rs:1: module cycle: core/src/nn/linear.rs:1 (super::ops) -> core/src/nn/ops.rs:1 (super::linear::linear) -> core/src/nn/linear.rs (layers nn -> nn)",
    ]);
  });

  test("a new top-level module not in layers.toml is an undeclared module, and so is a path into it", () => {
    const tree = cleanTree();
    tree["core/src/extra.rs"] = "pub fn x() {}\n";
    tree["core/src/api.rs"] += "pub fn y() { crate::extra::x() }\n";
    const r = check(writeTree(tree));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      'core/src/api.rs:3: crate::extra::x: undeclared module `extra`, not a layer of [rust."core/src"] (layer api; hint: name the module the item lives in, or add it to layers.toml)',
      'core/src/extra.rs:1: undeclared module `extra`: not a layer of [rust."core/src"] (hint: add it to layers.toml in its place)',
    ]);
  });

  test("a TS package importing one above it fails, by import and by package.json; a package cycle too", () => {
    const tree = cleanTree();
    tree["packages/native/src/index.ts"] += 'export { train } from "@fx/engine";\n';
    const r = check(writeTree(tree));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      'packages/native/src/index.ts:2: import "@fx/engine": @fx/native (layer 1) uses @fx/engine (layer 2), which is above it',
      'packages/native/src/index.ts:2: import "@fx/engine": @fx/engine is not among packages/native/package.json\'s dependencies (hint: add "@fx/engine": "workspace:*")',
      "packages/engine/package.json:6: package cycle: @fx/engine (packages/engine/package.json:6) -> @fx/native (packages/native/src/index.ts:2) -> @fx/engine",
    ]);

    const sideways = cleanTree();
    sideways["packages/data/package.json"] = JSON.stringify({ name: "@fx/data", dependencies: { "@fx/native": "*" } });
    sideways["packages/data/src/index.ts"] = 'export * from "@fx/native/sub";\n';
    const s = check(writeTree(sideways), "--only", "ts");
    expect(s.code).toBe(1);
    expect(s.lines).toEqual([
      'packages/data/package.json:1: "dependencies": "@fx/native": @fx/data (layer 1) uses @fx/native on its own level (packages on one level are independent; hint: put one below the other in layers.toml)',
      'packages/data/src/index.ts:1: import "@fx/native/sub": @fx/data (layer 1) uses @fx/native on its own level (packages on one level are independent; hint: put one below the other in layers.toml)',
    ]);
  });

  test("a relative path into another package is an import of it, and refused as such", () => {
    const tree = cleanTree();
    tree["packages/native/src/index.ts"] += 'export { train } from "../../engine/src/index.ts";\n';
    const r = check(writeTree(tree), "--only", "ts");
    expect(r.code).toBe(1);
    expect(r.lines[0]).toBe(
      'packages/native/src/index.ts:2: import "../../engine/src/index.ts": reaches into @fx/engine by path (hint: import "@fx/engine" by name)',
    );
    expect(r.lines[1]).toMatch(/@fx\/native \(layer 1\) uses @fx\/engine \(layer 2\), which is above it/);
  });

  test("--only rust and --only ts check one half", () => {
    const tree = cleanTree();
    tree["core/src/base/error.rs"] += "use crate::api::Handle;\n";
    const dir = writeTree(tree);
    expect(check(dir, "--only", "ts").code).toBe(0);
    expect(check(dir, "--only", "rust").code).toBe(1);
  });
});

test("this repository's core modules and workspace packages are in their layers", () => {
  const r = check(root);
  expect(r.lines).toEqual([
    expect.stringMatching(
      /^layers: ok \(rust crates\/core\/src: \d+ files in 9 layers, \d+ references; ts: \d+ packages in 5 layers, \d+ imports\)$/,
    ),
  ]);
  expect(r.code).toBe(0);
});
