// The engine out of process (the addon, index.js, is the engine in process). The sidecar's Bun side: spawn the worker process (sidecar/, loralab-sidecar), speak its
// line-delimited JSON protocol (docs/sidecar-protocol.md) and supervise it. Runs on
// `device = "cuda"` go here so the Bun process never loads CUDA and a GPU crash only
// kills the worker: every pending request then rejects with SidecarCrashed, and a
// training run's directory is marked interrupted, resumable from its last checkpoint.
import { existsSync } from "node:fs";
import { join } from "node:path";

export const PROTOCOL = 2;

/** What the sidecar says first: its protocol, version and the device kinds it was built for. */
export interface Ready {
  protocol: number;
  version: string;
  pid: number;
  devices: string[];
}

/** A failure the sidecar reported for one request (loralab_core::api::Failure); `code` is
 *  config | oom | engine | interrupted | internal | protocol. @loralab/engine turns it into its typed errors. */
export class SidecarError extends Error {
  override name = "SidecarError";
  constructor(
    message: string,
    readonly code: string,
    readonly field = "",
    readonly config?: unknown,
    readonly hint = "",
  ) {
    super(message);
  }
}

/** The sidecar process died or stopped speaking the protocol; `stderr` is its last words. */
export class SidecarCrashed extends Error {
  override name = "SidecarCrashed";
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly stderr: string,
  ) {
    super(message);
  }
}

export interface SidecarOptions {
  /** The binary (default: $LORALAB_SIDECAR, else the CUDA build in dist/cuda, else the CPU build in target/). */
  path?: string;
  /** How long to wait for its `ready` line (CUDA initialisation can take seconds). Default 60 s. */
  startTimeoutMs?: number;
  env?: Record<string, string | undefined>;
  /** Called once the process is up (for supervision by the caller: its pid, kill()). */
  onStart?: (s: Sidecar) => void;
}

const root = new URL("../..", import.meta.url).pathname;

/** Where the sidecar binary is, for a device kind ("cuda" prefers the CUDA build). */
export function sidecarPath(device = "cuda"): string {
  if (process.env.LORALAB_SIDECAR) return process.env.LORALAB_SIDECAR;
  const cuda = join(root, "dist/cuda/loralab-sidecar");
  const cpu = join(
    root,
    "target",
    `${process.arch === "arm64" ? "aarch64" : "x86_64"}-unknown-linux-gnu`,
    "release",
    "loralab-sidecar",
  );
  if (device.startsWith("cuda") && existsSync(cuda)) return cuda;
  return existsSync(cpu) ? cpu : cuda;
}

interface Pending {
  op: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  onProgress?: (data: unknown) => void;
}

const STDERR_KEEP = 8192;

/** One sidecar process. Requests run in order on its one worker; `cancel` and `shutdown` act at once. */
export class Sidecar {
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private dead: SidecarCrashed | null = null;
  private closing = false;
  readonly exited: Promise<number | null>;

  private constructor(
    private readonly proc: Bun.Subprocess<"pipe", "pipe", "pipe">,
    readonly ready: Ready,
    readonly path: string,
    private readonly stderr: { text: string },
  ) {
    this.exited = proc.exited;
  }

  /** Spawn and wait for `ready`. A binary that exits first, prints something else or says
   *  nothing within the timeout is killed and reported with its stderr. */
  static async start(o: SidecarOptions = {}): Promise<Sidecar> {
    const path = o.path ?? sidecarPath();
    if (!existsSync(path)) {
      throw new SidecarCrashed(
        `sidecar binary ${path} not found (hint: \`bun run setup\` builds the CPU sidecar; scripts/build-cuda-sidecar.sh the CUDA one; or set LORALAB_SIDECAR)`,
        null,
        null,
        "",
      );
    }
    const proc = Bun.spawn([path], {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, ...o.env },
    });
    const lines = readLines(proc.stdout);
    const stderr = { text: "" };
    const errPump = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of proc.stderr)
        stderr.text = (stderr.text + dec.decode(chunk, { stream: true })).slice(-STDERR_KEEP);
    })();
    const timeoutMs = o.startTimeoutMs ?? 60_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const first = await Promise.race([
      lines.next().then((r) => (r.done ? ("eof" as const) : r.value)),
      new Promise<"timeout">((res) => (timer = setTimeout(() => res("timeout"), timeoutMs))),
    ]);
    clearTimeout(timer);
    const fail = async (why: string): Promise<never> => {
      proc.kill("SIGKILL");
      const code = await proc.exited;
      await Promise.race([errPump, Bun.sleep(200)]);
      throw new SidecarCrashed(`sidecar ${path} ${why}${tail(stderr.text)}`, code, signalOf(proc), stderr.text);
    };
    if (first === "timeout")
      return fail(
        `said nothing within ${timeoutMs / 1000} s of starting (hint: a hung CUDA initialisation? check nvidia-smi)`,
      );
    if (first === "eof") {
      const code = await proc.exited;
      return fail(
        `exited at start (code ${code}${proc.signalCode ? `, ${proc.signalCode}` : ""}) before saying ready (hint: missing CUDA libraries? run it by hand to see)`,
      );
    }
    let hello: { event?: string; protocol?: number } & Partial<Ready>;
    try {
      hello = JSON.parse(first);
    } catch {
      return fail(
        `printed something that is not the protocol: ${JSON.stringify(first.slice(0, 200))} (hint: is LORALAB_SIDECAR the loralab-sidecar binary?)`,
      );
    }
    if (hello.event !== "ready")
      return fail(`began with ${JSON.stringify(first.slice(0, 200))} instead of a ready event`);
    if (hello.protocol !== PROTOCOL)
      return fail(
        `speaks protocol ${hello.protocol}, this package speaks ${PROTOCOL} (hint: rebuild the sidecar from this checkout)`,
      );
    const s = new Sidecar(
      proc,
      {
        protocol: hello.protocol,
        version: hello.version ?? "",
        pid: hello.pid ?? proc.pid,
        devices: hello.devices ?? [],
      },
      path,
      stderr,
    );
    void s.pump(lines);
    void proc.exited.then((code) => s.onExit(code));
    o.onStart?.(s);
    return s;
  }

  /** Send a request; resolves with its result, rejects with SidecarError or SidecarCrashed. */
  request<T = unknown>(
    op: string,
    params: Record<string, unknown> = {},
    onProgress?: (data: unknown) => void,
  ): { id: number; result: Promise<T> } {
    const id = this.nextId++;
    const result = new Promise<T>((resolve, reject) => {
      if (this.dead) return reject(this.dead);
      this.pending.set(id, { op, resolve: resolve as (v: unknown) => void, reject, onProgress });
      this.write({ v: PROTOCOL, id, op, ...params });
    });
    return { id, result };
  }

  /** Ask a running request (a train) to stop after its current step; it then checkpoints and resolves. */
  cancel(id: number): void {
    if (!this.dead) this.write({ v: PROTOCOL, id: this.nextId++, op: "cancel", target: id });
  }

  /** Stop the worker cleanly (a running train checkpoints first); kills it if it takes longer than `graceMs`. */
  async shutdown(graceMs = 30_000): Promise<void> {
    if (this.dead) return;
    this.closing = true;
    this.write({ v: PROTOCOL, id: this.nextId++, op: "shutdown" });
    const t = setTimeout(() => this.proc.kill("SIGKILL"), graceMs);
    await this.proc.exited;
    clearTimeout(t);
  }

  /** Kill the process at once (what a GPU crash looks like from here). */
  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    this.proc.kill(signal);
  }

  get alive(): boolean {
    return !this.dead;
  }

  private write(msg: object): void {
    try {
      this.proc.stdin.write(`${JSON.stringify(msg)}\n`);
      this.proc.stdin.flush();
    } catch {
      // the process is gone; onExit rejects what is pending
    }
  }

  private async pump(lines: AsyncGenerator<string>) {
    for await (const line of lines) {
      let ev: {
        id?: number | string | null;
        event?: string;
        data?: unknown;
        error?: { code: string; message: string; field?: string; hint?: string; config?: unknown };
      };
      try {
        ev = JSON.parse(line);
      } catch {
        this.die(
          `printed something that is not the protocol: ${JSON.stringify(line.slice(0, 200))}; its output cannot be trusted, so it was stopped`,
        );
        return;
      }
      const p = typeof ev.id === "number" ? this.pending.get(ev.id) : undefined;
      if (ev.event === "progress") p?.onProgress?.(ev.data);
      else if (ev.event === "result" && p) {
        this.pending.delete(ev.id as number);
        p.resolve(ev.data);
      } else if (ev.event === "error") {
        const e = ev.error ?? { code: "protocol", message: "error without a body" };
        const err = new SidecarError(e.message, e.code, e.field ?? "", e.config, e.hint ?? "");
        if (p) {
          this.pending.delete(ev.id as number);
          p.reject(err);
        } else console.error(`loralab-sidecar: ${e.message}`);
      }
    }
  }

  private die(why: string) {
    if (!this.dead) this.dead = new SidecarCrashed(`sidecar ${this.path} ${why}`, null, null, this.stderr.text);
    this.proc.kill("SIGKILL");
  }

  private onExit(code: number | null) {
    const signal = signalOf(this.proc);
    if (!this.dead) {
      const how = signal ? `was killed (${signal})` : `exited with code ${code}`;
      this.dead = new SidecarCrashed(
        `sidecar ${this.path} ${how}${this.closing ? " while shutting down" : ""}${tail(this.stderr.text)}`,
        code,
        signal,
        this.stderr.text,
      );
    }
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(
        new SidecarCrashed(`${this.dead.message} (during ${p.op}, request ${id})`, code, signal, this.stderr.text),
      );
    }
  }
}

/** The last lines of a process's stderr, for an error message. */
function tail(stderr: string): string {
  const t = stderr.trim().split("\n").slice(-5).join("\n");
  return t ? `; its stderr:\n${t}` : "";
}

/** Lines of a byte stream, without their newline. */
async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim()) yield line;
    }
  }
  if (buf.trim()) yield buf;
}

function signalOf(p: Bun.Subprocess): string | null {
  return p.signalCode ? String(p.signalCode) : null;
}
