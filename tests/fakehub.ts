// A fake Hugging Face Hub on 127.0.0.1 for the tests: the API and file routes that
// @huggingface/hub (loralab's client) and Python's huggingface_hub use, over in-memory repos
// shaped like real ones. Routes (https://huggingface.co/docs/hub/api):
//   GET  /api/{models|datasets}/{org}/{name}/revision/{rev}        repo info with its commit sha
//   GET  /api/{models|datasets}/{org}/{name}/tree/{rev}[/{path}]   files: size, git oid, LFS sha256
//   HEAD|GET /[datasets/]{org}/{name}/resolve/{rev}/{path}        the file: ETag, X-Repo-Commit,
//        X-Linked-Etag / X-Linked-Size for LFS files, Range requests (206); a plain (non-LFS)
//        file answers, as the real Hub does, with a 307 to a relative
//        /api/resolve-cache/{models|datasets}/{org}/{name}/{sha}/{path}, whose Content-Length is
//        that of its own short body, and the file is served there
// and the Hub's refusals: 401 without a token on a gated repo (403 with a wrong one), 404 with
// X-Error-Code RepositoryNotFound / RevisionNotFound / EntryNotFound. Faults for the tests: a
// file that breaks off after N bytes on its first download, one served with different bytes than
// its hash, one whose ETag differs from the tree's.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

export interface FakeFile {
  bytes: Uint8Array;
  /** Stored in LFS (its ETag the sha256); default: *.safetensors, *.parquet, *.gguf. */
  lfs?: boolean;
  /** The first download sends this many bytes, then the connection breaks. */
  breakAt?: number;
  /** The first download sends this many bytes, then nothing more (the connection stays open). */
  stallAt?: number;
  /** Served with one byte changed (its hash no longer matches). */
  corrupt?: boolean;
  /** Served under a different ETag than the tree lists. */
  wrongEtag?: boolean;
  /** Answers a Range request with the whole file (200), as some mirrors do. */
  ignoreRange?: boolean;
  /** `resolve` redirects (302, the X-Linked-* headers on it) to the fake CDN on another origin,
   *  whose own ETag is not the file's hash, as S3's is not. */
  viaCdn?: boolean;
}

export interface FakeRepo {
  type: "model" | "dataset";
  repo: string;
  files: Record<string, FakeFile>;
  /** Needs the token `hf_fake_good`. */
  gated?: boolean;
  /** Branch or tag → commit sha; "main" is made from the files. */
  refs?: Record<string, string>;
}

export const GOOD_TOKEN = "hf_fake_good";
/** A valid token whose account has not accepted the gated repo's licence. */
export const NO_ACCESS_TOKEN = "hf_fake_noaccess";

function sha1Git(b: Uint8Array): string {
  return createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");
}
function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

export interface Logged {
  method: string;
  path: string;
  range: string | null;
  auth: string | null;
}

export class FakeHub {
  readonly url: string;
  readonly log: Logged[] = [];
  private repos = new Map<string, FakeRepo & { sha: string }>();
  private broken = new Set<string>();
  /** Requests the fake CDN saw. */
  readonly cdnLog: Logged[] = [];
  private server: ReturnType<typeof Bun.serve>;
  private cdn: ReturnType<typeof Bun.serve>;
  private cdnFiles = new Map<string, Uint8Array>();
  /** Every API call answers 503, as the Hub does in an outage. */
  down = false;

  constructor() {
    this.server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => this.handle(req) });
    this.url = `http://127.0.0.1:${this.server.port}`;
    // another origin (another port): what a token must never reach
    this.cdn = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => {
        const path = new URL(req.url).pathname;
        this.cdnLog.push({
          method: req.method,
          path,
          range: req.headers.get("range"),
          auth: req.headers.get("authorization"),
        });
        const bytes = this.cdnFiles.get(path);
        if (!bytes) return new Response("no such object", { status: 404 });
        return this.serveRange(req, bytes, { ETag: '"s3-md5-not-the-sha256"', "Accept-Ranges": "bytes" });
      },
    });
  }

  add(r: FakeRepo): string {
    const h = createHash("sha1");
    for (const [p, f] of Object.entries(r.files).sort()) h.update(p).update(f.bytes);
    const sha = h.digest("hex");
    this.repos.set(`${r.type}s/${r.repo}`, { ...r, sha });
    return sha;
  }

  stop(): void {
    this.server.stop(true);
    this.cdn.stop(true);
  }

  private isLfs(path: string, f: FakeFile): boolean {
    return f.lfs ?? /\.(safetensors|parquet|gguf)$/.test(path);
  }

  private entry(path: string, f: FakeFile, sha: string) {
    const lfs = this.isLfs(path, f);
    return {
      type: "file",
      oid: sha1Git(f.bytes),
      size: f.bytes.length,
      path,
      ...(lfs ? { lfs: { oid: sha256(f.bytes), size: f.bytes.length, pointerSize: 134 } } : {}),
      lastCommit: { id: sha, title: "fake", date: "2026-01-01T00:00:00.000Z" },
    };
  }

  private json(body: unknown, status = 200, code?: string): Response {
    return new Response(JSON.stringify(body), {
      status,
      headers: { "Content-Type": "application/json", ...(code ? { "X-Error-Code": code } : {}) },
    });
  }

  /** The repo and the commit `rev` names, or the Hub's refusal, as the Hub words them: a bad
   *  token is refused everywhere (401); a missing repo is 401 without a token (it could be
   *  private) and 404 with one; a gated repo's info and tree are public, its files are not. */
  private find(
    key: string,
    rev: string,
    auth: string | null,
    file = false,
  ): { repo: FakeRepo & { sha: string }; sha: string } | Response {
    if (auth && auth !== `Bearer ${GOOD_TOKEN}` && auth !== `Bearer ${NO_ACCESS_TOKEN}`)
      return this.json({ error: "Invalid credentials in Authorization header" }, 401);
    const repo = this.repos.get(key);
    if (!repo) return this.json({ error: "Repository not found" }, auth ? 404 : 401, "RepoNotFound");
    if (repo.gated && file) {
      if (!auth)
        return this.json(
          {
            error: `Access to ${key} is restricted. You must have access to it and be authenticated to access it. Please log in.`,
          },
          401,
          "GatedRepo",
        );
      if (auth !== `Bearer ${GOOD_TOKEN}`)
        return this.json(
          { error: `Access to ${key} is restricted and you are not in the authorized list.` },
          403,
          "GatedRepo",
        );
    }
    const shas = Object.values(repo.refs ?? {});
    const sha =
      rev === "main" || rev === "HEAD" || rev === repo.sha ? repo.sha : shas.includes(rev) ? rev : repo.refs?.[rev];
    if (!sha) return this.json({ error: `Invalid rev id: ${rev}` }, 404, "RevisionNotFound");
    return { repo, sha };
  }

  private handle(req: Request): Response {
    const u = new URL(req.url);
    const path = decodeURIComponent(u.pathname);
    const auth = req.headers.get("authorization");
    this.log.push({ method: req.method, path, range: req.headers.get("range"), auth });
    if (this.down) return this.json({ error: "Service Unavailable" }, 503);
    let m = /^\/api\/resolve-cache\/(models|datasets)\/([^/]+\/[^/]+)\/([0-9a-f]{40})\/(.+)$/.exec(path);
    if (m) {
      const f = this.find(`${m[1]}/${m[2]}`, m[3]!, auth, true);
      if (f instanceof Response) return f;
      const file = f.repo.files[m[4]!];
      if (!file || this.isLfs(m[4]!, file)) return this.json({ error: "Entry not found" }, 404, "EntryNotFound");
      return this.serveFile(req, `${m[2]}/${m[4]}`, m[4]!, file, f.sha);
    }
    m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path);
    if (m) {
      const f = this.find(`${m[1]}/${m[2]}`, m[3]!, auth);
      if (f instanceof Response) return f;
      return this.json({
        _id: f.sha.slice(0, 24),
        id: m[2],
        sha: f.sha,
        private: false,
        gated: f.repo.gated ? "manual" : false,
        downloads: 0,
        likes: 0,
        lastModified: "2026-01-01T00:00:00.000Z",
        tags: [],
        siblings: Object.keys(f.repo.files).map((rfilename) => ({ rfilename })),
      });
    }
    m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/tree\/([^/]+(?:\/convert\/parquet)?)(?:\/(.*))?$/.exec(path);
    if (m) {
      const f = this.find(`${m[1]}/${m[2]}`, m[3]!, auth);
      if (f instanceof Response) return f;
      const under = (m[4] ?? "").replace(/\/$/, "");
      const recursive = u.searchParams.get("recursive") === "true" || u.searchParams.get("recursive") === "True";
      const files = Object.entries(f.repo.files).filter(([p]) => !under || p.startsWith(`${under}/`));
      const dirs = new Set<string>();
      const out: unknown[] = [];
      for (const [p, file] of files) {
        const rest = under ? p.slice(under.length + 1) : p;
        const parts = rest.split("/");
        for (let i = 1; i < parts.length; i++) dirs.add((under ? `${under}/` : "") + parts.slice(0, i).join("/"));
        if (recursive || parts.length === 1) out.push(this.entry(p, file, f.sha));
      }
      for (const d of dirs)
        if (recursive || !d.slice(under ? under.length + 1 : 0).includes("/"))
          out.push({ type: "directory", oid: sha1Git(new TextEncoder().encode(d)), size: 0, path: d });
      return this.json(out);
    }
    m = /^\/(datasets\/)?([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40}|main|refs\/convert\/parquet|[^/]+)\/(.+)$/.exec(path);
    if (m) {
      const f = this.find(`${m[1] ? "datasets" : "models"}/${m[2]}`, m[3]!, auth, true);
      if (f instanceof Response) return f;
      const file = f.repo.files[m[4]!];
      if (!file) return this.json({ error: "Entry not found" }, 404, "EntryNotFound");
      if (!this.isLfs(m[4]!, file) && !file.viaCdn) {
        const to = `/api/resolve-cache/${m[1] ? "datasets" : "models"}/${m[2]}/${f.sha}/${m[4]!.split("/").map(encodeURIComponent).join("/")}`;
        const body = `Temporary Redirect. Redirecting to ${to}`;
        return new Response(req.method === "HEAD" ? null : body, {
          status: 307,
          headers: { Location: to, "X-Repo-Commit": f.sha, "Content-Length": String(body.length) },
        });
      }
      return this.serveFile(req, `${m[2]}/${m[4]}`, m[4]!, file, f.sha);
    }
    return this.json({ error: `no route ${req.method} ${path}` }, 404);
  }

  private serveFile(req: Request, key: string, path: string, f: FakeFile, sha: string): Response {
    const lfs = this.isLfs(path, f);
    let etag = lfs ? sha256(f.bytes) : sha1Git(f.bytes);
    if (f.wrongEtag) etag = sha256(new TextEncoder().encode(`other ${etag}`));
    let bytes = f.bytes;
    if (f.corrupt) {
      bytes = new Uint8Array(f.bytes);
      bytes[bytes.length >> 1]! ^= 0xff;
    }
    const headers: Record<string, string> = {
      ETag: `"${etag}"`,
      "X-Repo-Commit": sha,
      "Accept-Ranges": "bytes",
      "Content-Type": "application/octet-stream",
    };
    if (lfs) {
      headers["X-Linked-Etag"] = `"${etag}"`;
      headers["X-Linked-Size"] = String(bytes.length);
    }
    if (f.viaCdn) {
      const obj = `/objects/${sha256(f.bytes)}`;
      this.cdnFiles.set(obj, bytes);
      return new Response(null, {
        status: 302,
        headers: { ...headers, Location: `http://127.0.0.1:${this.cdn.port}${obj}`, "Content-Length": "0" },
      });
    }
    const range = f.ignoreRange ? null : req.headers.get("range");
    // a full download that breaks off or stalls: the first GET of the body
    const cut = f.breakAt ?? f.stallAt;
    if (cut !== undefined && req.method === "GET" && !this.broken.has(key)) {
      const start = Number(/^bytes=(\d+)-/.exec(range ?? "")?.[1] ?? 0);
      if (bytes.length - start > 1) {
        this.broken.add(key);
        const part = bytes.subarray(start, Math.max(start, cut));
        const stall = f.stallAt !== undefined;
        const stream = new ReadableStream({
          start(c) {
            c.enqueue(part);
            if (!stall) c.close();
          },
        });
        const status = range ? 206 : 200;
        return new Response(stream, {
          status,
          headers: {
            ...headers,
            "Content-Length": String(bytes.length - start),
            ...(range ? { "Content-Range": `bytes ${start}-${bytes.length - 1}/${bytes.length}` } : {}),
          },
        });
      }
    }
    return this.serveRange(
      new Request(req.url, { method: req.method, headers: range ? { range } : {} }),
      bytes,
      headers,
    );
  }

  private serveRange(req: Request, bytes: Uint8Array, base: Record<string, string>): Response {
    const headers = { ...base };
    const total = bytes.length;
    let start = 0;
    let end = total - 1;
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.get("range") ?? "");
    if (range && total > 0) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), total - 1) : total - 1;
      if (start > end) return new Response(null, { status: 416, headers: { "Content-Range": `bytes */${total}` } });
      status = 206;
      headers["Content-Range"] = `bytes ${start}-${end}/${total}`;
    }
    headers["Content-Length"] = String(end - start + 1);
    if (req.method === "HEAD") return new Response(null, { status, headers });
    return new Response(bytes.subarray(start, end + 1) as Uint8Array<ArrayBuffer>, { status, headers });
  }
}

// ------------------------------------------------------------------ repos

/** The files of a model directory, with model.safetensors split into two shards and an index
 *  (the layout of any model above the Hub's 5 GB shard size). */
export function shardedModelFiles(dir: string): Record<string, FakeFile> {
  const out: Record<string, FakeFile> = {};
  // (not loralab's own manifest: a repo on the Hub has none)
  for (const name of readdirSync(dir))
    if (statSync(join(dir, name)).isFile() && !["model.safetensors", "loralab_manifest.json"].includes(name))
      out[name] = { bytes: new Uint8Array(readFileSync(join(dir, name))) };
  const st = new Uint8Array(readFileSync(join(dir, "model.safetensors")));
  const n = Number(new DataView(st.buffer, st.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(st.subarray(8, 8 + n))) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const data = st.subarray(8 + n);
  const names = Object.keys(header)
    .filter((k) => k !== "__metadata__")
    .sort();
  const halves = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)];
  const weightMap: Record<string, string> = {};
  let total = 0;
  halves.forEach((group, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const h: Record<string, unknown> = { __metadata__: { format: "pt" } };
    const chunks: Uint8Array[] = [];
    let off = 0;
    for (const k of group) {
      const t = header[k]!;
      const b = data.subarray(t.data_offsets[0], t.data_offsets[1]);
      h[k] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + b.length] };
      chunks.push(b);
      off += b.length;
      total += b.length;
      weightMap[k] = file;
    }
    let hj = JSON.stringify(h);
    hj += " ".repeat((8 - (hj.length % 8)) % 8);
    const hb = new TextEncoder().encode(hj);
    const buf = new Uint8Array(8 + hb.length + off);
    new DataView(buf.buffer).setBigUint64(0, BigInt(hb.length), true);
    buf.set(hb, 8);
    let at = 8 + hb.length;
    for (const c of chunks) {
      buf.set(c, at);
      at += c.length;
    }
    out[file] = { bytes: buf };
  });
  out["model.safetensors.index.json"] = {
    bytes: new TextEncoder().encode(
      JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
    ),
  };
  out["README.md"] = { bytes: new TextEncoder().encode("---\nlicense: apache-2.0\n---\n# a tiny test model\n") };
  return out;
}
