// How Bun scripts call cargo so every build shares one set of compiled dependencies:
// napi-rs builds the addon with an explicit --target, which puts artifacts under
// target/<host triple>/; tests and benches pass the same --target and package set.
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
