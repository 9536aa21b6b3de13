// What keeps an endpoint that can start training and code execution from being anyone's:
// a token always (generated and kept in the user's config dir when not given), compared in
// constant time; Host against an allow-list and Origin against the server's own (DNS rebinding,
// cross-site and cross-port requests to a loopback server); every path in a submitted config
// normalised once (~/, relative, symlinks) and confined to the configured roots; artifact
// downloads confined to their run directory (no "..", no encoded dots, no absolute paths, no
// symlink escape).
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve, sep } from "node:path";

export interface Token {
  token: string;
  /** Where a generated token is kept (empty when it came from LORALAB_TOKEN). */
  file: string;
  /** Created just now: print it once. */
  generated: boolean;
}

export function configDir(): string {
  return join(process.env.XDG_CONFIG_HOME ?? join(homedir(), ".config"), "loralab");
}

/** LORALAB_TOKEN, else the token kept in the config dir, else a new one written there (0600). */
export function loadToken(env = process.env): Token {
  if (env.LORALAB_TOKEN) return { token: env.LORALAB_TOKEN, file: "", generated: false };
  const file = join(configDir(), "token");
  if (existsSync(file)) return { token: readFileSync(file, "utf8").trim(), file, generated: false };
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const token = randomBytes(32).toString("base64url");
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return { token, file, generated: true };
}

/** Constant-time comparison (of digests, so lengths never leak through an early return). */
export function sameSecret(a: string, b: string): boolean {
  const h = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

/** The session cookie's value: derived from the token, never the token itself. */
export function sessionValue(token: string): string {
  return createHash("sha256").update(`loralab-session:${token}`).digest("base64url");
}

/** A Host header (or an allow-list entry) split into its name and port, or null when it is not
 * `name[:port]` (RFC 9110's uri-host [ ":" port ]): `localhost:abc`, `127.0.0.1:1@evil.example`
 * and `a b` are no hosts. Names are lower-cased; the port is undefined when absent. */
export function parseHost(host: string): { name: string; port: number | undefined } | null {
  const m = /^(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::(\d{1,5}))?$/i.exec(host);
  if (!m) return null;
  const port = m[2] === undefined ? undefined : Number(m[2]);
  if (port !== undefined && port > 65535) return null;
  return { name: m[1]!.toLowerCase(), port };
}

/** Is `host` (a Host header) one we serve? Names match case-insensitively, with any port unless
 * the allow-list entry names one; anything that does not parse as `name[:port]` is refused. */
export function hostAllowed(host: string | undefined, allowed: string[]): boolean {
  const h = host === undefined ? null : parseHost(host);
  if (!h) return false;
  return allowed.some((entry) => {
    const a = parseHost(entry);
    return a !== null && a.name === h.name && (a.port === undefined || a.port === h.port);
  });
}

/** An origin as browsers send it (`scheme://host[:port]`, default port dropped), or null when
 * `s` is not an http(s) origin: no path, query, credentials or fragment. */
export function normalOrigin(s: string): string | null {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return null;
  }
  if (
    (u.protocol !== "http:" && u.protocol !== "https:") ||
    u.username ||
    u.password ||
    u.search ||
    u.hash ||
    (u.pathname !== "/" && u.pathname !== "")
  )
    return null;
  if (!/^https?:\/\/[^/?#]+\/?$/i.test(s)) return null; // "http://x/" is an origin, "http://x/." is not
  return u.origin;
}

/** A browser's Origin must be this server exactly: the scheme and Host (name and port) the request
 * came in on, or one of `extra` (--allow-origin). A page on another port of localhost is another
 * origin, and one that browsers let send the session cookie (same site): its requests are refused.
 * No Origin: a same-origin navigation or a client that is no browser. */
export function originAllowed(
  origin: string | undefined,
  self: { scheme: string; host: string },
  extra: string[] = [],
): boolean {
  if (origin === undefined) return true;
  const o = normalOrigin(origin);
  if (o === null) return false;
  return o === normalOrigin(`${self.scheme}//${self.host}`) || extra.includes(o);
}

/** An absolute path with symlinks resolved on the part of it that exists. */
export function realPath(p: string): string {
  let cur = resolve(p);
  const rest: string[] = [];
  while (!existsSync(cur)) {
    const parent = dirname(cur);
    if (parent === cur) break;
    rest.unshift(cur.slice(parent.length + (parent.endsWith(sep) ? 0 : 1)));
    cur = parent;
  }
  try {
    return join(realpathSync(cur), ...rest);
  } catch {
    return join(cur, ...rest); // unreadable on the way (EACCES): nothing to follow
  }
}

/** A config path as the engine opens it, made absolute: a leading `~/` is $HOME (what the engine's
 * `expand_home` does to the config's paths), a relative path is from `cwd`, `.` and `..` are
 * gone. The server checks this path (through its symlinks: realPath) against its roots and hands
 * the engine this same string, so what is checked is what is opened. Symlinks stay in it: a
 * `train.jsonl` that links to a content-addressed blob (the Hugging Face cache) keeps the name
 * the engine reads its format from. */
export function enginePath(p: string, cwd = process.cwd(), home = process.env.HOME): string {
  const expanded = p.startsWith("~/") && home !== undefined ? `${home}/${p.slice(2)}` : p;
  return resolve(cwd, expanded);
}

/** Is `p` the directory `root` or under it (both as realPath gives them)? */
export function inside(p: string, root: string): boolean {
  return p === root || p.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** The file paths of a run config, as [section, key]: every string field the engine or the library
 * opens, reads or writes (packages/engine/src/config.gen.ts). `out_dir` is not among them: the
 * server sets it. */
export const CONFIG_PATH_FIELDS = [
  ["model", "path"],
  ["model", "config"],
  ["model", "tokenizer"],
  ["data", "train"],
  ["data", "source"],
  ["data", "cache_dir"],
  ["data", "validation"],
  ["train", "resume_from"],
  ["tracking", "tensorboard_dir"],
  ["tracking", "wandb_dir"],
] as const;

/** A submitted config with every path made absolute by `enginePath` and confined to `roots` (as
 * realPath gives them): the config to run, or the first field whose path, symlinks followed, is
 * outside every root. Fields that are absent, empty or not strings are left to the engine. */
export function confineConfig(
  cfg: Record<string, unknown>,
  roots: string[],
  cwd = process.cwd(),
): { config: Record<string, unknown> } | { field: string; path: string } {
  const out: Record<string, unknown> = { ...cfg };
  for (const [section, key] of CONFIG_PATH_FIELDS) {
    const s = out[section];
    if (typeof s !== "object" || s === null || Array.isArray(s)) continue;
    const v = (s as Record<string, unknown>)[key];
    if (typeof v !== "string" || !v) continue;
    const abs = enginePath(v, cwd);
    const real = realPath(abs);
    if (!roots.some((r) => inside(real, r))) return { field: `${section}.${key}`, path: v };
    out[section] = { ...(s as Record<string, unknown>), [key]: abs };
  }
  // train.eval_data: a map of task → file or dataset directory, each confined the same way
  const t = out.train;
  const data = t && typeof t === "object" && !Array.isArray(t) ? (t as Record<string, unknown>).eval_data : undefined;
  if (data && typeof data === "object" && !Array.isArray(data)) {
    const confined: Record<string, unknown> = {};
    for (const [task, v] of Object.entries(data as Record<string, unknown>)) {
      if (typeof v !== "string" || !v) {
        confined[task] = v;
        continue;
      }
      const abs = enginePath(v, cwd);
      if (!roots.some((r) => inside(realPath(abs), r))) return { field: `train.eval_data.${task}`, path: v };
      confined[task] = abs;
    }
    out.train = { ...(t as Record<string, unknown>), eval_data: confined };
  }
  return { config: out };
}

/** The file an artifact request names inside `runDir`, or null when it escapes or is no file.
 * `raw` is the still-encoded path after `/artifacts/`. */
export function artifactFile(runDir: string, raw: string): string | null {
  let rel: string;
  try {
    rel = decodeURIComponent(raw);
  } catch {
    return null;
  }
  if (
    !rel ||
    rel.includes("\0") ||
    isAbsolute(rel) ||
    rel.includes("\\") ||
    rel.split("/").some((s) => s === ".." || s === ".")
  )
    return null;
  if (!existsSync(runDir)) return null;
  const root = realpathSync(runDir);
  const p = join(root, rel);
  if (!existsSync(p)) return null;
  const r = realpathSync(p); // a symlink is followed and must still land inside the run
  if (!r.startsWith(root + sep) || !statSync(r).isFile()) return null;
  return r;
}
