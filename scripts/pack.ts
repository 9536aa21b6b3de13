// `bun run pack [--out DIR]`: the library as one tarball another Bun app installs with
// `bun add ./dist/loralab-<version>.tgz`, the engine included. Run by hand and by
// tests/install.test.ts.
//
// The workspace packages loralab needs travel inside the tarball as bundled dependencies
// (node_modules/@loralab/* in it, their TypeScript source as it is, nothing rebuilt), so the
// consuming app never asks a registry for them; only third-party packages (hono, drizzle-orm...)
// are ordinary dependencies, pinned to the versions in bun.lock. Bun does not fetch what a
// tarball bundles, as long as the names are absent from `dependencies`.
//
// The addon keeps the repository's layout inside @loralab/native (crates/node/…, target/<triple>/
// release/loralab-sidecar, dist/cuda/loralab-sidecar when built), so sidecar.ts's sidecarPath()
// finds the worker beside it without any change to the source.
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

const root = new URL("..", import.meta.url).pathname;

interface PackageJson {
  name: string;
  version: string;
  type?: string;
  main?: string;
  types?: string;
  exports?: unknown;
  dependencies?: Record<string, string>;
  napi?: { binaryName?: string };
  workspaces?: string[];
}

const readJson = async <T>(path: string): Promise<T> => (await Bun.file(path).json()) as T;

/** Workspace packages by name → their directory (the root's `workspaces` globs). */
async function workspaces(): Promise<Map<string, string>> {
  const rootPkg = await readJson<PackageJson>(join(root, "package.json"));
  const out = new Map<string, string>();
  for (const pattern of rootPkg.workspaces ?? [])
    for (const rel of new Bun.Glob(`${pattern}/package.json`).scanSync({ cwd: root, onlyFiles: true })) {
      const dir = join(root, rel.slice(0, -"/package.json".length));
      out.set((await readJson<PackageJson>(join(dir, "package.json"))).name, dir);
    }
  return out;
}

/** The version bun.lock resolved a registry package to (what this checkout is tested with). */
function lockedVersion(lock: { packages: Record<string, unknown[]> }, name: string, spec: string): string {
  const entry = lock.packages[name]?.[0];
  if (typeof entry === "string") return entry.slice(entry.lastIndexOf("@") + 1);
  if (/^\d+\.\d+\.\d+/.test(spec)) return spec;
  throw new Error(`pack: ${name}@${spec} is not in bun.lock (hint: run \`bun install\` first)`);
}

/** `./x` → `./<prefix>/x` through a package.json's main/types/exports. */
function rebase<T>(v: T, prefix: string): T {
  if (typeof v === "string") return (v.startsWith("./") ? `./${prefix}/${v.slice(2)}` : v) as T;
  if (v && typeof v === "object")
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rebase(x, prefix)])) as T;
  return v;
}

/** A bundled package's package.json: what resolution reads, none of what installation would act on. */
function bundledManifest(p: PackageJson, prefix = ""): Record<string, unknown> {
  const m: Record<string, unknown> = { name: p.name, version: p.version };
  if (p.type) m.type = p.type;
  for (const k of ["main", "types", "exports"] as const)
    if (p[k] !== undefined) m[k] = prefix ? rebase(p[k], prefix) : p[k];
  return m;
}

export interface PackResult {
  tarball: string;
  bytes: number;
  bundled: string[];
  dependencies: Record<string, string>;
  /** The engine's binaries in the tarball (the addon, the CPU sidecar, the CUDA one when built). */
  engine: string[];
}

export async function pack(outDir: string, o: { gzipLevel?: number } = {}): Promise<PackResult> {
  const ws = await workspaces();
  const lock = Bun.JSONC.parse(await Bun.file(join(root, "bun.lock")).text()) as {
    packages: Record<string, unknown[]>;
  };
  const libDir = ws.get("loralab");
  if (!libDir) throw new Error("pack: no workspace package named loralab");
  const lib = await readJson<PackageJson>(join(libDir, "package.json"));

  // --- what loralab needs: the workspace packages it reaches, and their registry dependencies
  const bundled = new Map<string, PackageJson>();
  const dependencies: Record<string, string> = {};
  const visit = async (p: PackageJson) => {
    for (const [name, spec] of Object.entries(p.dependencies ?? {})) {
      if (name === lib.name) continue; // the package itself (layers.toml keeps anything below from depending on it)
      if (ws.has(name)) {
        if (!bundled.has(name)) {
          const dep = await readJson<PackageJson>(join(ws.get(name)!, "package.json"));
          bundled.set(name, dep);
          await visit(dep);
        }
        continue;
      }
      const version = lockedVersion(lock, name, spec);
      if (dependencies[name] && dependencies[name] !== version)
        throw new Error(
          `pack: ${name} is needed at ${dependencies[name]} and ${version} (hint: one version in the workspace)`,
        );
      dependencies[name] = version;
    }
  };
  await visit(lib);

  // --- the addon and the worker, built by `bun run setup`
  const nativeDir = ws.get("@loralab/native")!;
  const native = bundled.get("@loralab/native");
  const triple = `${process.arch === "arm64" ? "aarch64" : "x86_64"}-unknown-linux-gnu`; // as sidecarPath() spells it
  const sidecarCpu = join("target", triple, "release", "loralab-sidecar");
  const sidecarCuda = join("dist", "cuda", "loralab-sidecar");
  const engine: string[] = [];
  const addonFiles = native
    ? readdirSync(nativeDir).filter((f) => f.endsWith(".node") || ["index.js", "index.d.ts", "sidecar.ts"].includes(f))
    : [];
  if (native) {
    if (!addonFiles.some((f) => f.endsWith(".node")) || !addonFiles.includes("index.js"))
      throw new Error(`pack: the addon is not built in ${nativeDir} (hint: \`bun run setup\`)`);
    if (!existsSync(join(root, sidecarCpu)))
      throw new Error(`pack: no CPU sidecar at ${sidecarCpu} (hint: \`bun run setup\` builds it)`);
  }

  // --- stage: outside the repository, so no .gitignore of ours (*.node, target/) applies
  const stage = mkdtempSync(join(tmpdir(), "loralab-pack-"));
  try {
    // a package's files as they are, but its own node_modules (workspace links) and package.json
    const copyPackage = (src: string, dst: string) =>
      cpSync(src, dst, {
        recursive: true,
        filter: (s) => !s.slice(src.length).split("/").includes("node_modules") && s !== join(src, "package.json"),
      });
    copyPackage(libDir, stage);
    for (const [name, p] of bundled) {
      const dst = join(stage, "node_modules", name);
      const src = ws.get(name)!;
      mkdirSync(dst, { recursive: true });
      if (name === "@loralab/native") {
        for (const f of addonFiles) cpSync(join(src, f), join(dst, "crates/node", f));
        engine.push(...addonFiles.filter((f) => f.endsWith(".node")).map((f) => join("crates/node", f)));
        for (const bin of [sidecarCpu, sidecarCuda])
          if (existsSync(join(root, bin))) {
            cpSync(join(root, bin), join(dst, bin));
            chmodSync(join(dst, bin), 0o755);
            engine.push(bin);
          }
        await Bun.write(join(dst, "package.json"), `${JSON.stringify(bundledManifest(p, "crates/node"), null, 2)}\n`);
      } else {
        copyPackage(src, dst);
        await Bun.write(join(dst, "package.json"), `${JSON.stringify(bundledManifest(p), null, 2)}\n`);
      }
    }
    const manifest = {
      name: lib.name,
      version: lib.version,
      description: "Train the same model by full fine-tuning and LoRA, measure what each learned and forgot, and why",
      type: lib.type ?? "module",
      exports: lib.exports,
      dependencies: Object.fromEntries(Object.entries(dependencies).sort()),
      bundleDependencies: [...bundled.keys()].sort(),
      engines: { bun: ">=1.4" },
    };
    await Bun.write(join(stage, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);

    // --- the tarball
    mkdirSync(outDir, { recursive: true });
    const tarball = join(outDir, `${lib.name}-${lib.version}.tgz`);
    rmSync(tarball, { force: true });
    const p = Bun.spawnSync(
      [
        process.execPath,
        "pm",
        "pack",
        "--quiet",
        "--ignore-scripts",
        "--gzip-level",
        String(o.gzipLevel ?? 6),
        "--destination",
        outDir,
      ],
      { cwd: stage, stdout: "pipe", stderr: "pipe" },
    );
    if (p.exitCode !== 0 || !existsSync(tarball))
      throw new Error(`pack: \`bun pm pack\` failed (exit ${p.exitCode}): ${p.stderr.toString().trim()}`);
    return {
      tarball,
      bytes: statSync(tarball).size,
      bundled: manifest.bundleDependencies,
      dependencies: manifest.dependencies,
      engine,
    };
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: { out: { type: "string" }, "gzip-level": { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(
      "usage: bun run pack [--out dist] [--gzip-level 6]\n  writes <out>/loralab-<version>.tgz: install it with `bun add path/to/loralab-<version>.tgz`",
    );
    process.exit(0);
  }
  try {
    const t0 = performance.now();
    const r = await pack(resolve(values.out ?? join(root, "dist")), {
      gzipLevel: values["gzip-level"] === undefined ? undefined : Number(values["gzip-level"]),
    });
    console.log(
      `${r.tarball} (${(r.bytes / 2 ** 20).toFixed(1)} MiB, ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    console.log(`  bundled: ${r.bundled.join(", ")}`);
    console.log(`  engine: ${r.engine.join(", ")}`);
    console.log(
      `  from the registry: ${Object.entries(r.dependencies)
        .map(([n, v]) => `${n}@${v}`)
        .join(", ")}`,
    );
    console.log(`install it: bun add ${r.tarball}`);
  } catch (e) {
    console.error((e as Error).message);
    process.exit(1);
  }
}
