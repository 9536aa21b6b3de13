// Models and datasets by Hub id, in the standard Hugging Face cache: `org/name[@revision]` and
// `hf://datasets/org/name[@revision]/path` resolve to a snapshot directory under $HF_HUB_CACHE
// (or $HF_HOME/hub): `models--org--name/{blobs,refs,snapshots}`, blobs named by their ETag (the
// LFS sha256, or the git blob id), snapshot entries relative symlinks to them. That is the
// layout `huggingface_hub` and `transformers` read and write, so a file either side downloaded
// is the other's too (tests/hub.test.ts proves it both ways).
//
// The Hub's API is spoken by `@huggingface/hub`, Hugging Face's own JavaScript client: repo info
// (the revision's commit sha) and the file tree (sizes, git oids, LFS sha256). It has no resume,
// checksum or offline mode, so the bytes are moved here, as huggingface_hub moves them: a HEAD
// on `resolve` (ETag and size from the Hub's own answer, X-Linked-* on an LFS redirect), then a
// GET that appends to `blobs/<etag>.incomplete` and resumes from its size with a Range request,
// checked against the tree's size and hash, then renamed into place, under the flock(2) that
// huggingface_hub's filelock takes for the same blob (<cache>/.locks/<repo>/<etag>.lock).
// Settings are huggingface_hub's environment variables: HF_ENDPOINT, HF_HUB_CACHE / HF_HOME,
// HF_TOKEN (or the token file `hf auth login` writes), HF_HUB_OFFLINE.
import { dlopen, FFIType, type Pointer, read } from "bun:ffi";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { lstat, mkdir, open, readFile, readlink, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import {
  datasetInfo,
  getRepoFolderName,
  HubApiError,
  type ListFileEntry,
  listFiles,
  modelInfo,
} from "@huggingface/hub";

export type RepoType = "model" | "dataset";

/** A reference to something on the Hub: a whole repo (`path` "") or a file or folder in it. */
export interface HubRef {
  type: RepoType;
  /** `org/name`. */
  repo: string;
  /** A branch, tag or commit sha; default "main". */
  revision: string;
  path: string;
}

/** Where the Hub and its cache are, from huggingface_hub's environment variables. */
export interface HubSettings {
  endpoint: string;
  cache: string;
  token?: string;
  offline: boolean;
  /** Seconds a request may wait for the Hub's answer, and a download for its next bytes
   *  (huggingface_hub's HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT; default 10). */
  timeoutS?: number;
}

/** A Hub failure the user can act on; `hint` says how. */
export class HubError extends Error {
  override name = "HubError";
  constructor(
    message: string,
    readonly hint = "",
  ) {
    super(hint ? `${message} (hint: ${hint})` : message);
  }
}

const TRUE = new Set(["1", "true", "yes", "on"]);

/** `~` and `$VAR` expanded, as huggingface_hub's expanduser / expandvars do. */
function expand(p: string, env: Record<string, string | undefined>): string {
  const v = p.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (m, k: string) => env[k] ?? m);
  return v === "~" || v.startsWith("~/") ? join(homedir(), v.slice(1)) : v;
}

export function hubSettings(env: Record<string, string | undefined> = process.env): HubSettings {
  const x = (k: string) => (env[k] ? expand(env[k]!, env) : undefined);
  const home = x("HF_HOME") ?? join(x("XDG_CACHE_HOME") ?? join(homedir(), ".cache"), "huggingface");
  const cache = x("HF_HUB_CACHE") ?? x("HUGGINGFACE_HUB_CACHE") ?? join(home, "hub");
  // a token has no whitespace: a stray newline (a file written by echo) never reaches a header
  const clean = (t: string | undefined) => t?.replace(/\s+/g, "") || undefined;
  let token = clean(env.HF_TOKEN) ?? clean(env.HUGGING_FACE_HUB_TOKEN);
  if (!token) {
    const file = x("HF_TOKEN_PATH") ?? join(home, "token");
    if (existsSync(file)) token = clean(readFileSync(file, "utf8"));
  }
  return {
    endpoint: (env.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, ""),
    cache,
    token,
    offline: TRUE.has((env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE ?? "").toLowerCase()),
    timeoutS: Number(env.HF_HUB_DOWNLOAD_TIMEOUT ?? env.HF_HUB_ETAG_TIMEOUT ?? "") || 10,
  };
}

const PART = "[A-Za-z0-9][A-Za-z0-9._-]*";
// a revision holds no "/" unless URL-encoded (%2F), but for the Hub's own refs/convert/parquet
// and refs/pr/N, as in huggingface_hub's HfFileSystem
const REV = "refs/convert/parquet|refs/pr/[0-9]+|[^/@]*";
const ID = new RegExp(`^(${PART}/${PART})(?:@(${REV}))?$`);
function rev(r: string | undefined): string {
  if (r === undefined) return "main";
  try {
    return decodeURIComponent(r);
  } catch {
    throw new HubError(`\`${r}\` is not a revision (a bad %-escape)`, "a branch, a tag or a commit sha; %2F for a /");
  }
}
const URI = new RegExp(`^hf://(?:(datasets|models)/)?(${PART}/${PART})(?:@(${REV}?))?(?:/(.*))?$`);

/** A revision names a file under refs/: no empty, `.` or `..` part. */
function checkRevision(spec: string, r: string): void {
  if (r.split("/").some((p) => p === "" || p === "." || p === ".."))
    throw new HubError(`${spec}: \`${r}\` is not a revision`, "a branch, a tag or a commit sha");
}

/** `hf://[datasets/]org/name[@rev][/path]` always; `org/name[@rev]` (a model) only when no file
 *  or directory of that name exists, so a local path is never taken for an id. Null otherwise. */
export function parseHubRef(spec: string): HubRef | null {
  const u = URI.exec(spec);
  if (!u && spec.startsWith("hf://"))
    throw new HubError(
      `${spec}: not a Hub reference`,
      "hf://org/name[@revision][/path] or hf://datasets/org/name[@revision][/path]",
    );
  if (u && !u[1] && /^(datasets|models|spaces)\//.test(u[2]!))
    throw new HubError(
      `${spec}: not a Hub reference`,
      "hf://org/name[@revision][/path] or hf://datasets/org/name[@revision][/path]",
    );
  if (u) {
    const type: RepoType = u[1] === "datasets" ? "dataset" : "model";
    const repo = u[2]!;
    let path = u[4] ?? "";
    if (u[3] === "") throw new HubError(`${spec}: empty revision after @`, "org/name@main or @<commit sha>");
    checkRevision(spec, rev(u[3]));
    path = path.replace(/^\/+|\/+$/g, "");
    if (path.split("/").some((p) => p === ".." || p === "."))
      throw new HubError(`${spec}: a path in a repo cannot hold . or .. parts`);
    return { type, repo, revision: rev(u[3]), path };
  }
  if (existsSync(spec)) return null;
  const m = ID.exec(spec);
  if (m && m[2] === "") throw new HubError(`${spec}: empty revision after @`, "org/name@main or @<commit sha>");
  if (m) checkRevision(spec, rev(m[2]));
  return m ? { type: "model", repo: m[1]!, revision: rev(m[2]), path: "" } : null;
}

/** What resolve() made local. */
export interface Resolved {
  /** The snapshot directory: `<cache>/<type>s--org--name/snapshots/<sha>`. */
  snapshot: string;
  /** The file or folder asked for, inside the snapshot (the snapshot itself for a whole repo). */
  path: string;
  ref: HubRef;
  /** The commit the revision resolved to. */
  sha: string;
  /** The repo paths asked for (with `listOnly`, those that would be fetched). */
  files: string[];
  /** Answered by the cache alone (offline, or the Hub unreachable or down). */
  cached: boolean;
  /** `org/name@sha`: what to record to pin the input. */
  pinned: string;
}

export interface ResolveOptions {
  settings?: HubSettings;
  /** Which repo paths to fetch (default: all under `ref.path`). */
  include?: (path: string) => boolean;
  /** Bytes of one file so far; default: a line per file on stderr. */
  onProgress?: (file: string, done: number, total: number) => void;
  signal?: AbortSignal;
  /** Point refs/<revision> at the commit once its files are in (default true); false for a
   *  caller that fetches a repo in parts and moves the ref after the last. */
  writeRef?: boolean;
  /** Name the commit and the files, fetch nothing: a caller that streams a large dataset
   *  fetches them one by one (resolveRef with the sha and each path). */
  listOnly?: boolean;
}

const SHA = /^[0-9a-f]{40}$/;

function repoDir(s: HubSettings, ref: HubRef): string {
  return join(s.cache, getRepoFolderName({ type: ref.type, name: ref.repo }));
}

function pageOf(s: HubSettings, ref: HubRef): string {
  return `${s.endpoint}/${ref.type === "dataset" ? "datasets/" : ""}${ref.repo}`;
}

function describe(ref: HubRef): string {
  return `${ref.type === "dataset" ? "dataset " : ""}${ref.repo}@${ref.revision}`;
}

/** The commit `ref.revision` names in the cache (refs/<revision>, or the sha itself), if any. */
function cachedSha(s: HubSettings, ref: HubRef): string | undefined {
  if (SHA.test(ref.revision))
    return existsSync(join(repoDir(s, ref), "snapshots", ref.revision)) ? ref.revision : undefined;
  const file = join(repoDir(s, ref), "refs", ref.revision);
  if (!existsSync(file)) return undefined;
  const sha = readFileSync(file, "utf8").trim();
  return SHA.test(sha) ? sha : undefined;
}

function fromCache(s: HubSettings, ref: HubRef, why: string): Resolved {
  const sha = cachedSha(s, ref);
  const snapshot = sha ? join(repoDir(s, ref), "snapshots", sha) : "";
  const path = ref.path ? join(snapshot, ref.path) : snapshot;
  if (!sha || !existsSync(path))
    throw new HubError(
      `${why}, and ${describe(ref)}${ref.path ? `/${ref.path}` : ""} is not in the cache at ${s.cache}`,
      "run once with the network (HF_HUB_OFFLINE unset), or point HF_HUB_CACHE at a cache that has it",
    );
  // the files of the asked-for path the snapshot has, in repo paths
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else files.push(relative(snapshot, p));
    }
  };
  if (statSync(path).isDirectory()) walk(path);
  else files.push(relative(snapshot, path));
  files.sort();
  return { snapshot, path, ref, sha, files, cached: true, pinned: `${ref.repo}@${sha}` };
}

/** A failure to reach the Hub at all (as opposed to the Hub refusing): a socket error's code, or
 *  no answer in time. A cancel is neither, nor is any other TypeError (a bug is not an outage). */
function unreachable(e: unknown): boolean {
  if (e instanceof HubApiError || e instanceof HubError) return false;
  const err = e as { name?: string; code?: string; cause?: { code?: string } };
  if (err?.name === "AbortError") return false;
  if (err?.name === "TimeoutError") return true;
  const code = err?.code ?? err?.cause?.code ?? "";
  return /^(ECONNREFUSED|ECONNRESET|ECONNABORTED|EPIPE|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENETDOWN|UND_ERR_SOCKET|UND_ERR_CONNECT_TIMEOUT|ConnectionRefused|ConnectionClosed|FailedToOpenSocket)$/.test(
    code,
  );
}

/** The user's words for a refused API call. */
function apiError(e: unknown, s: HubSettings, ref: HubRef): Error {
  if (e instanceof HubError || (e as { name?: string })?.name === "AbortError") return e as Error;
  if (!(e instanceof HubApiError)) {
    const msg = (e as Error).message ?? String(e);
    if (!unreachable(e)) return new HubError(`${describe(ref)}: ${msg}`);
    return new HubError(
      `cannot reach ${s.endpoint} for ${describe(ref)}: ${msg}`,
      "check the network or HF_ENDPOINT; with HF_HUB_OFFLINE=1 only the cache is used",
    );
  }
  const page = pageOf(s, ref);
  const said = ((e.data as { error?: string } | undefined)?.error ?? "").toLowerCase();
  const local = ref.type === "model" ? `; a local path named ${ref.repo} does not exist either` : "";
  // the Hub answers 401 for a missing repo without a token (it may be private), 404 with one
  if (/repository not found|repo not found/.test(said) || (e.statusCode === 404 && !/\brev(ision)?\b/.test(said)))
    return new HubError(
      `no ${ref.type} \`${ref.repo}\` on ${s.endpoint} (${e.statusCode})`,
      `check the id's spelling${local}${s.token ? "" : "; if it is private, set HF_TOKEN"}`,
    );
  if (e.statusCode === 404)
    return new HubError(`${describe(ref)}: no revision \`${ref.revision}\``, `see the branches and tags at ${page}`);
  if (e.statusCode === 401 && s.token && /invalid|expired|credentials/.test(said))
    return new HubError(
      `${describe(ref)}: the Hub refused the token (401)`,
      `HF_TOKEN (or the token file) is invalid or expired: make a new one at ${s.endpoint}/settings/tokens`,
    );
  if (e.statusCode === 401)
    return new HubError(
      `${describe(ref)} needs a login (401: gated or private)`,
      `if it is gated, accept its licence at ${page} and set HF_TOKEN (or run \`hf auth login\`)`,
    );
  if (e.statusCode === 403)
    return new HubError(
      `${describe(ref)}: your token has no access to it (403)`,
      `accept the licence at ${page} with the account the token belongs to, or request access there`,
    );
  if (e.statusCode >= 500 || e.statusCode === 429)
    return new HubError(
      `${describe(ref)}: the Hub answered ${e.statusCode}: ${e.message}`,
      "the Hub (or the mirror at HF_ENDPOINT) is down or busy: run again later; what is cached is used meanwhile",
    );
  return new HubError(`${describe(ref)}: the Hub answered ${e.statusCode}: ${e.message}`);
}

/** Resolve a Hub reference to local files in the cache, downloading what is missing.
 *  Offline (HF_HUB_OFFLINE=1), or when the Hub cannot be reached and the cache already has the
 *  revision, the cache alone answers. */
export async function resolveRef(ref: HubRef, opts: ResolveOptions = {}): Promise<Resolved> {
  const s = opts.settings ?? hubSettings();
  if (s.offline) return fromCache(s, ref, "HF_HUB_OFFLINE is set");
  const api = { hubUrl: s.endpoint, fetch: hubFetch(s, opts.signal) };
  let sha: string;
  try {
    const info =
      ref.type === "dataset"
        ? await datasetInfo({ ...api, name: ref.repo, revision: ref.revision, additionalFields: ["sha"] })
        : await modelInfo({ ...api, name: ref.repo, revision: ref.revision, additionalFields: ["sha"] });
    sha = (info as { sha?: string }).sha ?? "";
    if (!SHA.test(sha)) throw new HubError(`${describe(ref)}: the Hub's repo info has no commit sha`);
  } catch (e) {
    const err = apiError(e, s, ref);
    // unreachable or down (5xx, 429), not refused: the cache may still have the revision. A
    // refusal (401, 403, 404) is not papered over: the id, revision or token is wrong
    const down = e instanceof HubApiError && (e.statusCode >= 500 || e.statusCode === 429);
    if ((unreachable(e) || down) && cachedSha(s, ref)) {
      console.error(`hub: ${err.message.split(" (hint")[0]}; using the cached copy`);
      return fromCache(s, ref, down ? "the Hub is down" : "the Hub is unreachable");
    }
    throw err;
  }
  const dir = repoDir(s, ref);
  const snapshot = join(dir, "snapshots", sha);
  const entries: ListFileEntry[] = [];
  const under = ref.path;
  const list = async (path?: string) => {
    for await (const e of listFiles({
      ...api,
      repo: { type: ref.type, name: ref.repo },
      revision: sha,
      recursive: true,
      // @huggingface/hub puts the path into the URL as it is
      path: path?.split("/").map(encodeURIComponent).join("/"),
    }))
      if (e.type === "file") entries.push(e);
  };
  try {
    // a folder's own listing first (a dataset repo's whole tree can be thousands of pages); the
    // whole tree when `under` is a file, or when the Hub has no folder of that name
    if (under)
      await list(under).catch((e) => {
        // no folder of that name (a file, or nothing): the whole tree says which; any other
        // refusal or failure is the answer
        if (!(e instanceof HubApiError && (e.statusCode === 404 || e.statusCode === 400))) throw e;
        entries.length = 0;
      });
    if (!entries.length) await list();
  } catch (e) {
    throw apiError(e, s, ref);
  }
  const wanted = entries.filter(
    (e) => (!under || e.path === under || e.path.startsWith(`${under}/`)) && (opts.include?.(e.path) ?? true),
  );
  if (!wanted.length)
    throw new HubError(
      `${describe(ref)} has no ${under ? `file or folder \`${under}\`` : "files"}${opts.include ? " of the kind wanted" : ""} at ${sha.slice(0, 12)}`,
      `see ${pageOf(s, ref)}/tree/${sha}`,
    );
  const path = under ? join(snapshot, under) : snapshot;
  const pinned = `${ref.repo}@${sha}`;
  const files = wanted.map((e) => e.path);
  if (opts.listOnly) return { snapshot, path, ref, sha, files, cached: false, pinned };
  const progress = opts.onProgress ?? stderrProgress();
  for (const e of wanted) await fetchFile(s, ref, sha, e, progress, opts.signal);
  // the ref moves only once its snapshot is complete, so the cache never names a partial one
  if (opts.writeRef !== false) await pinRef(s, ref, sha);
  return { snapshot, path, ref, sha, files, cached: false, pinned };
}

/** Point refs/<ref.revision> at `sha` in the cache, for a caller that fetched a revision's
 *  files itself (resolveRef with `listOnly`, then file by file): done after the last, so the
 *  cache never names a commit whose files it lacks. */
export async function pinRevision(ref: HubRef, sha: string, settings: HubSettings = hubSettings()): Promise<void> {
  if (!SHA.test(sha)) throw new HubError(`${describe(ref)}: \`${sha}\` is not a commit sha`);
  await pinRef(settings, ref, sha);
}

/** refs/<revision> → `sha` (nothing for a revision that is itself a sha). */
async function pinRef(s: HubSettings, ref: HubRef, sha: string): Promise<void> {
  if (!SHA.test(ref.revision)) await writeIfChanged(join(repoDir(s, ref), "refs", ref.revision), sha);
}

/** Write `text` to `file` atomically, and not at all when it already says so (a read-only
 *  shared cache stays usable). */
async function writeIfChanged(file: string, text: string): Promise<void> {
  if ((await readFile(file, "utf8").catch(() => null)) === text) return;
  await mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

/** The controller of each response hubFetch made: a download aborts it when its bytes stall. */
const controllers = new WeakMap<Response, AbortController>();
/** Detaches a streamed response from the caller's signal once its body is read. */
const release = new WeakMap<Response, () => void>();

/** fetch for the Hub: the token only to the endpoint's origin, the caller's cancel, no content
 *  encoding (sizes and ranges are of the bytes), and a timeout on the Hub's answer: on its
 *  headers, and for an API call (small JSON) on its whole body; a download's body has its own
 *  clock between chunks (stalling). */
function hubFetch(s: HubSettings, signal?: AbortSignal): typeof fetch {
  const origin = new URL(s.endpoint).origin;
  const seconds = s.timeoutS ?? 10;
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const headers = new Headers(init?.headers);
    headers.delete("Authorization");
    if (s.token && url.origin === origin) headers.set("Authorization", `Bearer ${s.token}`);
    headers.set("Accept-Encoding", "identity");
    const ctl = new AbortController();
    const cancel = () => ctl.abort(signal?.reason);
    if (signal?.aborted) cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    const detach = () => signal?.removeEventListener("abort", cancel);
    const timer = setTimeout(() => ctl.abort(timedOut(url, seconds)), seconds * 1000);
    const api =
      url.origin === origin && url.pathname.startsWith("/api/") && !/^\/api\/resolve-cache\//.test(url.pathname);
    try {
      let resp = await fetch(input, { ...init, headers, signal: ctl.signal });
      if (api || init?.method === "HEAD" || !resp.body) {
        const empty = init?.method === "HEAD" || [204, 205, 304].includes(resp.status);
        const body = empty ? null : await resp.arrayBuffer();
        const whole = new Response(body, { status: resp.status, statusText: resp.statusText, headers: resp.headers });
        Object.defineProperty(whole, "url", { value: resp.url });
        resp = whole;
        detach();
      } else release.set(resp, detach);
      controllers.set(resp, ctl);
      return resp;
    } catch (e) {
      detach();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }) as typeof fetch;
}

function timedOut(url: URL, seconds: number): Error {
  const e = new Error(`no answer from ${url.origin} in ${seconds} s`);
  e.name = "TimeoutError";
  return e;
}

/** What a repo path's blob is called and must hash to. */
function blobOf(e: ListFileEntry): { etag: string; size: number; algo: "sha256" | "git" } {
  if (e.lfs) return { etag: e.lfs.oid, size: e.lfs.size, algo: "sha256" };
  return { etag: e.oid ?? "", size: e.size, algo: "git" };
}

/** Download one repo file into blobs/ (resuming a partial one) and link it into the snapshot. */
async function fetchFile(
  s: HubSettings,
  ref: HubRef,
  sha: string,
  e: ListFileEntry,
  progress: (file: string, done: number, total: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const dir = repoDir(s, ref);
  const { etag, size, algo } = blobOf(e);
  if (!/^[0-9a-f]{40,64}$/.test(etag))
    throw new HubError(`${describe(ref)}: ${e.path} has a malformed hash \`${etag}\``);
  const blob = join(dir, "blobs", etag);
  const pointer = join(dir, "snapshots", sha, e.path);
  if (!resolve(pointer).startsWith(`${resolve(dir, "snapshots", sha)}/`))
    throw new HubError(`${describe(ref)}: the Hub listed a path outside the repo: ${e.path}`);
  await mkdir(dirname(blob), { recursive: true });
  if (!(await sizeIs(blob, size))) {
    // the lock file huggingface_hub takes for this blob (<cache>/.locks/<repo>/<etag>.lock)
    const lock = join(s.cache, ".locks", getRepoFolderName({ type: ref.type, name: ref.repo }), `${etag}.lock`);
    await withLock(
      lock,
      async () => {
        if (!(await sizeIs(blob, size))) await download(s, ref, sha, e, blob, { etag, size, algo }, progress, signal);
      },
      signal,
    );
  }
  await mkdir(dirname(pointer), { recursive: true });
  const target = relative(dirname(pointer), blob);
  const current = await readlink(pointer).catch(() => null);
  if (current !== target) {
    // made aside and renamed over: two processes linking the same file do not collide
    const tmp = `${pointer}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    await symlink(target, tmp);
    await rename(tmp, pointer);
  }
}

async function sizeIs(path: string, size: number): Promise<boolean> {
  const st = await stat(path).catch(() => null);
  return st?.isFile() === true && st.size === size;
}

async function download(
  s: HubSettings,
  ref: HubRef,
  sha: string,
  e: ListFileEntry,
  blob: string,
  want: { etag: string; size: number; algo: "sha256" | "git" },
  progress: (file: string, done: number, total: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const incomplete = `${blob}.incomplete`;
  const hf = hubFetch(s, signal);
  const info = await fileInfo(s, ref, sha, e.path, hf);
  if (info.etag !== want.etag || info.size !== want.size)
    throw new HubError(
      `${describe(ref)}: ${e.path} changed between listing and download (listed ${want.etag.slice(0, 12)}…, ${want.size} B; served ${info.etag.slice(0, 12)}…, ${info.size} B)`,
      "run again; if it persists the mirror at HF_ENDPOINT is inconsistent",
    );
  // a partial file is a regular file of ours; anything else there (a link, a device) is not resumed
  const partial = await lstat(incomplete).catch(() => null);
  let have = partial?.isFile() ? partial.size : 0;
  // (an empty one too: it is opened anew, exclusively)
  if (partial && (!partial.isFile() || have > want.size || have === 0)) {
    await rm(incomplete, { force: true });
    have = 0;
  }
  const hash = createHash(want.algo === "sha256" ? "sha256" : "sha1");
  if (want.algo === "git") hash.update(`blob ${want.size}\0`);
  if (have > 0) for await (const chunk of createReadStream(incomplete)) hash.update(chunk as Buffer);
  const headers: Record<string, string> = {};
  if (have > 0) headers.Range = `bytes=${have}-`;
  let resp: Response | undefined;
  if (have < want.size || want.size === 0) {
    // redirects followed here, not by fetch, so that the token goes only to the endpoint's
    // origin (hubFetch decides per request): never to a CDN, however the Hub points there
    for (let url = info.url, hop = 0; ; hop++) {
      try {
        resp = await hf(url, { headers, redirect: "manual" });
      } catch (err) {
        throw apiError(err, s, ref);
      }
      const location = resp.status >= 300 && resp.status < 400 ? resp.headers.get("Location") : null;
      if (!location) break;
      await resp.body?.cancel().catch(() => {});
      if (hop >= 10) throw new HubError(`${describe(ref)}: ${e.path} redirects more than 10 times`);
      url = new URL(location, url).href;
    }
    if (!resp.ok) throw apiError(await HubApiErrorFrom(resp), s, ref);
    if (have > 0 && resp.status !== 206) {
      // the server ignored the range: start over from the first byte
      await resp.body?.cancel();
      await rm(incomplete, { force: true });
      return download(s, ref, sha, e, blob, want, progress, signal);
    }
  }
  const fh = await open(incomplete, have > 0 ? "a" : "wx");
  let done = have;
  try {
    if (resp?.body)
      for await (const chunk of stalling(resp, s.timeoutS ?? 10)) {
        if (done + chunk.length > want.size)
          throw new HubError(`${describe(ref)}: ${e.path} is longer than the ${want.size} B the Hub listed`);
        // a write may be short (a filling disk): the rest is written, or the error raised
        for (let off = 0; off < chunk.length; ) {
          const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
          if (bytesWritten <= 0) throw Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
          off += bytesWritten;
        }
        hash.update(chunk);
        done += chunk.length;
        progress(e.path, done, want.size);
      }
  } catch (err) {
    await resp?.body?.cancel().catch(() => {});
    // the caller's cancel is theirs, not a broken download
    if (signal?.aborted) throw signal.reason ?? err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOSPC" || code === "EDQUOT")
      throw new HubError(
        `disk full${code === "EDQUOT" ? " (quota)" : ""} writing ${e.path} of ${describe(ref)} into ${s.cache} (${done} of ${want.size} B written)`,
        `free ${want.size - done} B there, or set HF_HUB_CACHE to a larger disk; the partial file resumes`,
      );
    if (err instanceof HubError) throw err;
    throw new HubError(
      `${describe(ref)}: download of ${e.path} broke off at ${done} of ${want.size} B: ${(err as Error).message}`,
      "run again: it resumes from there",
    );
  } finally {
    await fh.close();
  }
  if (done !== want.size)
    throw new HubError(
      `${describe(ref)}: download of ${e.path} ended at ${done} of ${want.size} B`,
      "run again: it resumes from there",
    );
  const onDisk = (await stat(incomplete)).size;
  if (onDisk !== want.size)
    throw new HubError(
      `${describe(ref)}: ${e.path} has ${onDisk} of ${want.size} B on disk after its download`,
      "run again: it resumes from there",
    );
  const got = hash.digest("hex");
  if (got !== want.etag) {
    await rm(incomplete, { force: true });
    throw new HubError(
      `${describe(ref)}: ${e.path} does not match the Hub's ${want.algo === "sha256" ? "sha256" : "git blob id"} (expected ${want.etag}, got ${got}); the download was discarded`,
      "run again; if it persists the file or the mirror at HF_ENDPOINT is corrupt",
    );
  }
  await rename(incomplete, blob);
}

/** A response's body, chunk by chunk, aborted when no byte comes for `seconds`. */
async function* stalling(resp: Response, seconds: number): AsyncGenerator<Uint8Array> {
  const ctl = controllers.get(resp);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ctl?.abort(timedOut(new URL(resp.url || "http://hub"), seconds)), seconds * 1000);
  };
  try {
    arm();
    for await (const chunk of resp.body as unknown as AsyncIterable<Uint8Array>) {
      // the clock runs while waiting for the Hub, not while the chunk is written
      clearTimeout(timer);
      yield chunk;
      arm();
    }
  } finally {
    clearTimeout(timer);
    release.get(resp)?.();
  }
}

/** A file's ETag, size and where its bytes are, as huggingface_hub reads them: a HEAD on
 *  `resolve`, following the Hub's own redirects (a plain file's 307 to /api/resolve-cache/… on
 *  the same origin) but not one to another origin: an LFS file's headers are on the Hub's 302,
 *  X-Linked-Etag and X-Linked-Size, not on the CDN's answer. A redirect's Content-Length is the
 *  length of its own body, never the file's size. */
async function fileInfo(
  s: HubSettings,
  ref: HubRef,
  sha: string,
  path: string,
  hf: typeof fetch,
): Promise<{ etag: string; size: number; url: string }> {
  const enc = path.split("/").map(encodeURIComponent).join("/");
  const origin = new URL(s.endpoint).origin;
  let url = `${s.endpoint}/${ref.type === "dataset" ? "datasets/" : ""}${ref.repo}/resolve/${sha}/${enc}`;
  const bad = (what: string) =>
    new HubError(
      `${describe(ref)}: the Hub's answer for ${path} ${what}`,
      "run again; if it persists the mirror at HF_ENDPOINT does not speak the Hub's protocol",
    );
  for (let hop = 0; ; hop++) {
    let head: Response;
    try {
      head = await hf(url, { method: "HEAD", redirect: "manual" });
    } catch (err) {
      throw apiError(err, s, ref);
    }
    const h = head.headers;
    const redirect = head.status >= 300 && head.status < 400;
    if (!(head.ok || redirect)) {
      // a HEAD has no body: the refusal's words come from the same request as a GET
      const get = await hf(url, { headers: { Range: "bytes=0-0" } }).catch((err) => {
        throw apiError(err, s, ref);
      });
      throw apiError(await HubApiErrorFrom(get), s, ref);
    }
    const location = redirect ? h.get("Location") : null;
    if (redirect && !location) throw bad(`is a ${head.status} redirect without a Location`);
    const next = location ? new URL(location, url) : null;
    if (next && next.origin === origin && !h.has("X-Linked-Etag")) {
      if (hop >= 10) throw bad("redirects more than 10 times");
      url = next.href;
      continue;
    }
    const etag = (h.get("X-Linked-Etag") ?? h.get("ETag") ?? "").replace(/^W\//, "").replace(/"/g, "");
    const sized = h.get("X-Linked-Size") ?? (redirect ? null : h.get("Content-Length"));
    if (!etag) throw bad(`has no ${redirect ? "X-Linked-Etag" : "ETag"} header`);
    if (sized === null || !/^\d+$/.test(sized))
      throw bad(`has no ${redirect ? "X-Linked-Size" : "Content-Length"} header`);
    return { etag, size: Number(sized), url: next ? next.href : url };
  }
}

async function HubApiErrorFrom(resp: Response): Promise<HubApiError> {
  const err = new HubApiError(resp.url, resp.status, resp.headers.get("X-Request-Id") ?? undefined);
  const text = await resp.text().catch(() => "");
  try {
    err.data = JSON.parse(text);
  } catch {
    err.data = { error: text };
  }
  err.message = `${resp.status} ${text.slice(0, 200)}`;
  return err;
}

/** One downloader per blob at a time: an flock(2) on the lock file huggingface_hub's filelock
 *  takes for the same blob, so loralab processes and Python ones exclude each other (on one host;
 *  the kernel releases it when its process dies). Polled without blocking the event loop, and
 *  given up on the caller's cancel. Where the file system has no flock (ENOLCK, EOPNOTSUPP) or
 *  libc cannot be opened, the download goes on unlocked, with a warning. */
async function withLock<T>(file: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  await mkdir(dirname(file), { recursive: true });
  const fh = await open(file, "a", 0o664);
  let locked = false;
  try {
    const lib = libc();
    for (let i = 0; lib; i++) {
      if (lib.flock(fh.fd, LOCK_EX | LOCK_NB) === 0) {
        locked = true;
        break;
      }
      const errno = lib.errno();
      if (!BUSY.has(errno)) {
        console.error(`hub: cannot lock ${file} (errno ${errno}); downloading without the lock`);
        break;
      }
      if (i === 0) console.error(`hub: waiting for another process downloading the same file (${file})`);
      if (signal?.aborted) throw signal.reason;
      await Bun.sleep(200);
    }
    return await fn();
  } finally {
    if (locked) libc()?.flock(fh.fd, LOCK_UN);
    await fh.close();
  }
}

const [LOCK_EX, LOCK_NB, LOCK_UN] = [2, 4, 8];
/** flock's "held by another" (EWOULDBLOCK = EAGAIN) and EINTR, on Linux and on macOS. */
const BUSY = new Set(process.platform === "darwin" ? [35, 4] : [11, 4]);
type Libc = { flock: (fd: number, op: number) => number; errno: () => number };
let libcHandle: Libc | null | undefined;
function libc(): Libc | null {
  if (libcHandle === undefined) {
    try {
      const errnoAt = process.platform === "darwin" ? "__error" : "__errno_location";
      const lib = dlopen(process.platform === "darwin" ? "libc.dylib" : "libc.so.6", {
        flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        [errnoAt]: { args: [], returns: FFIType.ptr },
      });
      const at = lib.symbols[errnoAt] as () => Pointer | null;
      libcHandle = {
        flock: (fd, op) => lib.symbols.flock(fd, op) as number,
        errno: () => {
          const p = at();
          return p ? read.i32(p) : -1;
        },
      };
    } catch (e) {
      console.error(`hub: no flock (${(e as Error).message}); downloads are not locked against other processes`);
      libcHandle = null;
    }
  }
  return libcHandle;
}

function bytes(n: number): string {
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

/** A line per file on stderr: redrawn in place on a terminal, once when done otherwise. */
export function stderrProgress(): (file: string, done: number, total: number) => void {
  const tty = process.stderr.isTTY;
  let last = 0;
  return (file, done, total) => {
    const line = `hub: ${file} ${bytes(done)} / ${bytes(total)} (${total ? Math.floor((100 * done) / total) : 100} %)`;
    if (tty) {
      const now = Date.now();
      if (done === total || now - last > 100) {
        process.stderr.write(`\r${line}\x1b[K${done === total ? "\n" : ""}`);
        last = now;
      }
    } else if (done === total) process.stderr.write(`${line}\n`);
  };
}

// ------------------------------------------------------------------ inputs by kind

/** The files of a model or adapter other than its weights. */
const MODEL_META =
  /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|chat_template\.(jinja|json)|adapter_config\.json|model\.safetensors\.index\.json)$/;
/** Weights when there is no index (one file) or for an adapter. */
const SINGLE_WEIGHTS = /^(model|adapter_model)\.safetensors$/;

/** A model input (`model.path`, `--model`, `--adapter`, `--base`): a local path as it is, else
 *  a Hub id resolved to its snapshot: config, tokenizer and the safetensors weights the index
 *  names (not `.bin`, ONNX or a second copy such as Mistral's consolidated.safetensors), or a
 *  PEFT adapter's two files; a `.gguf` by its path, hf://org/name/FILE.gguf. `pinned` is "" for
 *  a local path, `org/name@sha[/path]` otherwise. */
export async function resolveModel(spec: string, opts: ResolveOptions = {}): Promise<{ path: string; pinned: string }> {
  const ref = parseHubRef(spec);
  if (!ref) return { path: spec, pinned: "" };
  if (ref.type !== "model") throw new HubError(`${spec}: a dataset, where a model is expected`);
  if (ref.path) {
    const r = await resolveRef(ref, opts);
    return { path: r.path, pinned: `${r.pinned}/${ref.path}` };
  }
  const gguf = new HubError(
    `${spec}: no config.json or adapter_config.json with safetensors weights in the repo`,
    "a GGUF repo: name its file, hf://org/name/FILE.gguf",
  );
  let meta: Resolved;
  try {
    // refs/<revision> moves after the weights, so it never names a snapshot without them
    meta = await resolveRef(ref, { ...opts, include: (p) => MODEL_META.test(p), writeRef: false });
  } catch (e) {
    if (e instanceof HubError && /of the kind wanted/.test(e.message)) throw gguf;
    throw e;
  }
  const has = (f: string) => existsSync(join(meta.path, f));
  if (!has("config.json") && !has("adapter_config.json")) throw gguf;
  // the weights: the files the index maps tensors to, else model.safetensors / adapter_model.safetensors
  let weights = (p: string) => SINGLE_WEIGHTS.test(p);
  let named: string[] = [];
  if (has("model.safetensors.index.json")) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(readFileSync(join(meta.path, "model.safetensors.index.json"), "utf8"));
    } catch (e) {
      throw new HubError(`${spec}: model.safetensors.index.json is not JSON: ${(e as Error).message}`);
    }
    const files = new Set(Object.values(index.weight_map ?? {}).filter((f) => typeof f === "string"));
    weights = (p: string) => files.has(p);
    named = [...files];
  }
  if (meta.cached) {
    // from the cache (offline or the Hub unreachable): a snapshot another tool left without its
    // weights (huggingface_hub writes refs/ before the files) is not a model
    const missing = named.length
      ? named.filter((f) => !has(f))
      : ["model.safetensors", "adapter_model.safetensors"].some(has)
        ? []
        : ["model.safetensors"];
    if (missing.length)
      throw new HubError(
        `${describe(ref)} is in the cache at ${meta.snapshot} without its weights (${missing.slice(0, 3).join(", ")}${missing.length > 3 ? ", …" : ""} missing)`,
        "run once with the network (HF_HUB_OFFLINE unset) to complete it",
      );
    return { path: meta.path, pinned: meta.pinned };
  }
  const r = await resolveRef({ ...ref, revision: meta.sha }, { ...opts, include: weights }).catch((e) => {
    if (e instanceof HubError && /of the kind wanted/.test(e.message)) throw gguf;
    throw e;
  });
  await pinRef(opts.settings ?? hubSettings(), ref, meta.sha);
  return { path: r.path, pinned: r.pinned };
}

/** The Hub pin of a path inside a cache snapshot (`…/models--org--name/snapshots/<sha>[/path]`):
 *  `org/name@sha[/path]`, or "" for any other path. A config that names a snapshot keeps its
 *  provenance without the Hub id. */
export function pinnedOfCachePath(path: string): string {
  const m = /(?:^|\/)(models|datasets)--([^/]+?)--([^/]+)\/snapshots\/([0-9a-f]{40})(?:\/(.+?))?\/?$/.exec(
    resolve(path),
  );
  return m ? `${m[2]}/${m[3]}@${m[4]}${m[5] ? `/${m[5]}` : ""}` : "";
}

/** A data input (`data.train`, `--data`): a local path as it is, else hf://datasets/... resolved
 *  to the file or folder it names. */
export async function resolveData(spec: string, opts: ResolveOptions = {}): Promise<{ path: string; pinned: string }> {
  if (!spec.startsWith("hf://")) return { path: spec, pinned: "" };
  const ref = parseHubRef(spec)!;
  const r = await resolveRef(ref, opts);
  return { path: r.path, pinned: `${r.pinned}${ref.path ? `/${ref.path}` : ""}` };
}
