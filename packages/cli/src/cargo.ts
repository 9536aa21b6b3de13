// How Bun scripts call cargo so every build shares one set of compiled dependencies:
// napi-rs builds the addon with an explicit --target, which puts artifacts under
// target/<host triple>/; tests and benches pass the same --target and package set.
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/** rustup's bin directory, when there is one. */
function rustupBin(): string | undefined {
  const bin = join(process.env.CARGO_HOME ?? join(homedir(), ".cargo"), "bin");
  return existsSync(join(bin, "cargo")) ? bin : undefined;
}

/** Put rustup's toolchain first on PATH for what this process starts. Another Rust on PATH
 *  (Debian's rustc-web, which the wasm build installs) shadows it wherever /usr/bin comes
 *  first, as it does under `npx`; mixing the two compilers in one target directory fails
 *  ("compiled by an incompatible version of rustc"). The PATH is what matters, not the cargo
 *  binary: cargo runs the `rustc` it finds there. Bun's spawn keeps the environment the
 *  process started with unless given `env`, so spawns after this pass `env: process.env`.
 *  For the build, test and bench commands. */
export function preferRustup(): void {
  const bin = rustupBin();
  const path = process.env.PATH ?? "";
  if (bin && !path.startsWith(`${bin}:`)) process.env.PATH = `${bin}:${path}`;
}

export function hostTriple(): string {
  const out = Bun.spawnSync(["rustc", "-vV"], { stdout: "pipe" }).stdout.toString();
  const host = /^host: (\S+)/m.exec(out)?.[1];
  if (!host) throw new Error("cannot read the host triple from `rustc -vV` (hint: is Rust installed?)");
  return host;
}

/** `cargo <cmd> --release --target <host> -p loralab-core -p loralab-node -p loralab-sidecar ...rest` */
export function cargoArgs(cmd: "test" | "build" | "clippy", rest: string[] = []): string[] {
  return [
    "cargo",
    cmd,
    "--release",
    "--target",
    hostTriple(),
    "-p",
    "loralab-core",
    "-p",
    "loralab-node",
    "-p",
    "loralab-sidecar",
    ...rest,
  ];
}
