// A real PostgreSQL server for the store tests: $LORALAB_TEST_DATABASE_URL when given,
// otherwise Debian's postgresql package (installed with apt-get when missing) started in a
// throwaway directory on a free port, one per test process, stopped when it exits.
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

let started: Promise<string> | undefined;
let stop: (() => void) | undefined;

/** Stop the server this process started, if any (after the last test). */
export function stopPostgres(): void {
  stop?.();
  stop = undefined;
  started = undefined;
}

function sh(cmd: string[], what: string, env: Record<string, string> = {}): string {
  const p = spawnSync(cmd[0]!, cmd.slice(1), { encoding: "utf8", env: { ...process.env, ...env } });
  if (p.status !== 0)
    throw new Error(`postgres for the tests: ${what} failed (${cmd.join(" ")}): ${p.stderr || p.stdout}`);
  return p.stdout;
}

function binDir(): string | undefined {
  const base = "/usr/lib/postgresql";
  if (!existsSync(base)) return undefined;
  const v = readdirSync(base)
    .filter((d) => existsSync(join(base, d, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a))[0];
  return v ? join(base, v, "bin") : undefined;
}

export function postgresUrl(): Promise<string> {
  started ??= (async () => {
    if (process.env.LORALAB_TEST_DATABASE_URL) return process.env.LORALAB_TEST_DATABASE_URL;
    let bin = binDir();
    if (!bin) {
      const env = { DEBIAN_FRONTEND: "noninteractive" };
      const install = spawnSync("apt-get", ["install", "-y", "-q", "postgresql"], {
        encoding: "utf8",
        env: { ...process.env, ...env },
      });
      if (install.status !== 0) {
        sh(["apt-get", "update", "-q"], "apt-get update", env);
        sh(["apt-get", "install", "-y", "-q", "postgresql"], "apt-get install postgresql", env);
      }
      bin = binDir();
      if (!bin) throw new Error("postgres for the tests: initdb not found after installing postgresql");
    }
    const dir = mkdtempSync(join(tmpdir(), "loralab-pg-"));
    const root = process.getuid?.() === 0;
    // initdb refuses to run as root: the cluster belongs to the postgres user
    const as = (cmd: string[]) => (root ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd);
    if (root) {
      const pw = sh(["id", "-u", "postgres"], "id postgres").trim();
      const gr = sh(["id", "-g", "postgres"], "id postgres").trim();
      chownSync(dir, Number(pw), Number(gr));
      chmodSync(dir, 0o700);
    }
    const data = join(dir, "data");
    sh(as([join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]), "initdb");
    const port = 20000 + Math.floor(Math.random() * 20000);
    sh(
      as([
        join(bin, "pg_ctl"),
        "-D",
        data,
        "-l",
        join(dir, "log"),
        "-w",
        "-o",
        `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off`,
        "start",
      ]),
      "pg_ctl start",
    );
    // stopped after the last test (tests/teardown.ts, a preload: a test process's "exit" is
    // not heard), or on exit where it is
    stop = () => {
      spawnSync(
        as([join(bin!, "pg_ctl"), "-D", data, "-m", "immediate", "stop"])[0]!,
        as([join(bin!, "pg_ctl"), "-D", data, "-m", "immediate", "stop"]).slice(1),
      );
      rmSync(dir, { recursive: true, force: true });
    };
    process.on("exit", stopPostgres);
    sh([join(bin, "createdb"), "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "loralab_test"], "createdb");
    return `postgres://postgres@127.0.0.1:${port}/loralab_test`;
  })();
  return started;
}

/** A fresh database on that server for one test, so tests do not see each other's rows. */
export async function freshPostgresUrl(label: string): Promise<string> {
  const url = await postgresUrl();
  const postgres = (await import("postgres")).default;
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  const name = `t_${label}_${Math.random().toString(36).slice(2, 8)}`.replace(/[^a-z0-9_]/g, "_");
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.end();
  return url.replace(/\/[^/]*$/, `/${name}`);
}
