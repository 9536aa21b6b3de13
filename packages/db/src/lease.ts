// The store's lease: one process works a store's queue and recovers its interrupted runs. Taken
// by `loralab serve` (createServer) before it does either; a second server on the same store is
// refused with the holder named. SQLite: an OS lock (flock) on `<db>.lock` beside the database,
// which the kernel drops when the holder dies however it dies. Postgres: a session-level advisory
// lock on a connection of its own, dropped when that session ends; a heartbeat re-takes it.
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import postgres from "postgres";

export interface StoreLease {
  /** Who holds it (what, pid, host, since). */
  readonly holder: string;
  release(): Promise<void>;
}

/** Another process holds the store's lease. */
export class StoreBusy extends Error {
  override name = "StoreBusy";
  constructor(
    readonly where: string,
    readonly holder: string,
  ) {
    super(
      `run store ${where} is in use by another loralab server (${holder}) (hint: stop that server first, or give this one its own store: --db FILE, or another DATABASE_URL)`,
    );
  }
}

const holderText = (what: string) => `${what}, pid ${process.pid} on ${hostname()}, since ${new Date().toISOString()}`;

// ------------------------------------------------------------------ SQLite: flock on <db>.lock

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

let flockFn: ((fd: number, op: number) => number) | undefined;

/** libc's flock(2) through bun:ffi (node:fs has no file locks). */
async function flock(): Promise<(fd: number, op: number) => number> {
  if (flockFn) return flockFn;
  const { dlopen, FFIType } = await import("bun:ffi");
  const names = process.platform === "darwin" ? ["libSystem.B.dylib"] : ["libc.so.6", "libc.so"];
  let last: unknown;
  for (const name of names) {
    try {
      const lib = dlopen(name, { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
      flockFn = (fd, op) => lib.symbols.flock(fd, op) as number;
      return flockFn;
    } catch (e) {
      last = e;
    }
  }
  throw new Error(
    `the store's lock file needs flock(2) from the C library: ${(last as Error).message} (hint: a glibc or macOS system)`,
  );
}

/** Lock `<db>.lock` for this process's life. The file stays when released: removing it would let
 *  a waiter lock an unlinked inode while a newcomer locks a new file. */
export async function leaseFile(dbPath: string, what: string): Promise<StoreLease> {
  const lockPath = `${dbPath}.lock`;
  const f = await flock();
  // Bun opens with O_CLOEXEC: a spawned sidecar does not inherit the lock and outlive us with it
  const fd = openSync(lockPath, "a+", 0o644);
  if (f(fd, LOCK_EX | LOCK_NB) !== 0) {
    let holder = "holder unknown";
    try {
      holder = readFileSync(lockPath, "utf8").trim() || holder;
    } catch {}
    closeSync(fd);
    throw new StoreBusy(dbPath, holder);
  }
  const holder = holderText(what);
  ftruncateSync(fd, 0);
  writeSync(fd, `${holder}\n`, 0);
  let held = true;
  return {
    holder,
    async release() {
      if (!held) return;
      held = false;
      f(fd, LOCK_UN);
      closeSync(fd);
    },
  };
}

// ------------------------------------------------------------------ Postgres: advisory lock

/** pg_try_advisory_lock(int, int): "lora" "lab" as two int4 keys, the store's one lock in its database. */
const KEY1 = 0x6c6f7261;
const KEY2 = 0x6c6162;
const HEARTBEAT_MS = 15_000;

export async function leasePostgres(
  url: string,
  where: string,
  what: string,
  onLost: (why: string) => void,
): Promise<StoreLease> {
  const holder = holderText(what);
  // its own connection (one session): the lock lives exactly as long as it; the holder's name
  // rides along as application_name, so a refused server can say who holds the store
  const sql = postgres(url, {
    max: 1,
    idle_timeout: 0,
    onnotice: () => {},
    connection: { application_name: holder.slice(0, 63) },
  });
  const take = async () =>
    ((await sql`select pg_try_advisory_lock(${KEY1}::int, ${KEY2}::int) as ok`)[0] as { ok: boolean }).ok;
  let ok: boolean;
  try {
    ok = await take();
  } catch (e) {
    await sql.end({ timeout: 1 });
    throw e;
  }
  if (!ok) {
    const rows = await sql`
      select a.application_name as name, a.client_addr::text as addr, a.backend_start as since
      from pg_locks l join pg_stat_activity a on a.pid = l.pid
      where l.locktype = 'advisory' and l.granted and l.classid = ${KEY1}::oid and l.objid = ${KEY2}::oid and l.objsubid = 2
        and l.database = (select oid from pg_database where datname = current_database())`.catch(() => []);
    await sql.end({ timeout: 1 });
    const r = rows[0] as { name?: string; addr?: string | null } | undefined;
    throw new StoreBusy(where, r?.name ? `${r.name}${r.addr ? ` from ${r.addr}` : ""}` : "holder unknown");
  }
  // advisory locks are re-entrant in a session: re-taking one held only counts it again (all of it
  // goes when the session ends), and takes it anew on the session postgres.js opens after a lost
  // connection; refused then, another server has it, and this one must stop working the queue
  let released = false;
  const beat = setInterval(() => {
    take().then(
      (still) => {
        if (still || released) return;
        released = true;
        clearInterval(beat);
        void sql.end({ timeout: 1 });
        onLost("another server took the store's lease while this one's connection to Postgres was lost");
      },
      () => {}, // Postgres unreachable for now: the next beat tries again
    );
  }, HEARTBEAT_MS);
  beat.unref?.();
  return {
    holder,
    async release() {
      if (released) return;
      released = true;
      clearInterval(beat);
      await sql.end({ timeout: 5 });
    },
  };
}
