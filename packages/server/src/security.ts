// What keeps an endpoint that can start training and code execution from being anyone's:
// a token always (generated and kept in the user's config dir when not given), compared in
// constant time; Host and Origin against an allow-list (DNS rebinding, cross-site requests to a
// loopback server); every path in a submitted config under the configured roots; artifact
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
  writeFileSync(file, token + "\n", { mode: 0o600 });
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

/** Is `host` (a Host header, or an Origin's host) one we serve? Names match case-insensitively,
 * with any port unless the allow-list entry names one. */
export function hostAllowed(host: string | undefined, allowed: string[]): boolean {
  if (!host) return false;
  const h = host.toLowerCase();
  const name = h.startsWith("[") ? h.slice(0, h.indexOf("]") + 1) : h.split(":")[0]!;
  return allowed.some((a) => {
    const x = a.toLowerCase();
    return x === h || (!/:\d+$/.test(x) && x === name);
  });
}

export function originAllowed(origin: string | undefined, allowed: string[]): boolean {
  if (origin === undefined) return true; // same-origin navigations and non-browser clients
  try {
    const u = new URL(origin);
    return (u.protocol === "http:" || u.protocol === "https:") && hostAllowed(u.host, allowed);
  } catch {
    return false;
  }
}

/** resolve() plus symlinks resolved on the part of the path that exists. */
function real(p: string): string {
  let cur = resolve(p);
  const rest: string[] = [];
  while (!existsSync(cur)) {
    const parent = dirname(cur);
    if (parent === cur) break;
    rest.unshift(cur.slice(parent.length + (parent.endsWith(sep) ? 0 : 1)));
    cur = parent;
  }
  return join(realpathSync(cur), ...rest);
}

export function within(path: string, root: string): boolean {
  const r = real(root);
  const p = real(path);
  return p === r || p.startsWith(r.endsWith(sep) ? r : r + sep);
}

/** The file paths a run config names, with their field names. */
export function configPaths(cfg: Record<string, unknown>): [string, string][] {
  const get = (section: string, key: string) => {
    const v = (cfg[section] as Record<string, unknown> | undefined)?.[key];
    return typeof v === "string" && v ? v : undefined;
  };
  const fields: [string, string | undefined][] = [
    ["model.path", get("model", "path")],
    ["model.config", get("model", "config")],
    ["model.tokenizer", get("model", "tokenizer")],
    ["data.train", get("data", "train")],
    ["data.source", get("data", "source")],
    ["data.cache_dir", get("data", "cache_dir")],
    ["train.resume_from", get("train", "resume_from")],
  ];
  return fields.filter((f): f is [string, string] => f[1] !== undefined);
}

/** The first config path outside every root, or null. Relative paths are taken from `cwd`. */
export function pathOutsideRoots(cfg: Record<string, unknown>, roots: string[], cwd = process.cwd()): [string, string] | null {
  for (const [field, p] of configPaths(cfg)) {
    const abs = isAbsolute(p) ? p : resolve(cwd, p);
    if (!roots.some((r) => within(abs, r))) return [field, p];
  }
  return null;
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
  if (!rel || rel.includes("\0") || isAbsolute(rel) || rel.includes("\\") || rel.split("/").some((s) => s === ".." || s === ".")) return null;
  if (!existsSync(runDir)) return null;
  const root = realpathSync(runDir);
  const p = join(root, rel);
  if (!existsSync(p)) return null;
  const r = realpathSync(p); // a symlink is followed and must still land inside the run
  if (!r.startsWith(root + sep) || !statSync(r).isFile()) return null;
  return r;
}
