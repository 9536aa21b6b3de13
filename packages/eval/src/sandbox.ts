// Runs untrusted Python (model completions) confined. The harness runs as root on CI and
// dev machines, so rlimits alone contain nothing: each program runs in its own python3 as
// PID 1 of fresh user, PID, network, mount, IPC and UTS namespaces, as an unprivileged uid
// with no groups and no_new_privs, with CPU / address-space / process / file-size limits,
// a read-only filesystem, a private /tmp holding its empty working directory, and a
// scrubbed environment (sandbox/init.py does the confining). The harness reads at most
// `maxOutputBytes` of its output and kills the namespace's PID 1 — and with it everything
// inside — at the wall-clock timeout. If confinement cannot be set up, nothing runs.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";

const INIT = new URL("../sandbox/init.py", import.meta.url).pathname;

export interface SandboxOptions {
  /** Executions at once (each its own uid, so process limits do not interfere). */
  parallel?: number;
  /** Wall-clock limit per execution, seconds (bigcode: 3). */
  timeoutS?: number;
  /** Address-space limit, MiB. */
  memoryMb?: number;
  /** Processes (threads included) the program's uid may have. */
  maxProcesses?: number;
  /** Largest file it may write, MiB. */
  maxFileMb?: number;
  /** Size of its private /tmp, MiB. */
  tmpMb?: number;
  /** stdout + stderr kept; more kills the program. */
  maxOutputBytes?: number;
  /** First uid/gid of the execution slots (slot i runs as uidBase + i). */
  uidBase?: number;
}

export type ExecStatus = "passed" | "failed" | "timeout" | "output_limit";

export interface ExecResult {
  /** The program ran to the harness's sentinel (printed after the checks, unforgeable). */
  passed: boolean;
  status: ExecStatus;
  exitCode: number | null;
  signal: string | null;
  /** Output with the sentinel removed, at most maxOutputBytes. */
  stdout: string;
  stderr: string;
  ms: number;
}

export class SandboxUnavailable extends Error {
  override name = "SandboxUnavailable";
}

const DEFAULTS: Required<SandboxOptions> = {
  parallel: Math.max(1, os.cpus().length),
  timeoutS: 3,
  memoryMb: 1024,
  maxProcesses: 16,
  maxFileMb: 16,
  tmpMb: 64,
  maxOutputBytes: 64 * 1024,
  uidBase: 61000,
};

/** The sentinel line the harness appends after the checks: it reads a nonce the program
 * never sees in its source, argv or environment (init.py hands it over on fd 3, which the
 * prologue reads and closes before any untrusted line runs). */
export function wrapProgram(program: string): string {
  return (
    "import os as __loralab_os\n" +
    "__loralab_done = (lambda n: lambda: __loralab_os.write(1, b'\\n' + n + b'\\n'))(__loralab_os.read(3, 64)); __loralab_os.close(3)\n" +
    program +
    "\n__loralab_done()\n"
  );
}

export class Sandbox {
  readonly opts: Required<SandboxOptions>;
  private free: number[];
  private waiting: ((slot: number) => void)[] = [];

  private constructor(opts: SandboxOptions) {
    this.opts = { ...DEFAULTS, ...opts };
    this.free = Array.from({ length: this.opts.parallel }, (_, i) => i);
  }

  /** A sandbox that has proved it can confine: it runs a probe that must see itself as an
   * unprivileged PID 1 with no network. Throws SandboxUnavailable (with the reason) otherwise. */
  static async open(opts: SandboxOptions = {}): Promise<Sandbox> {
    if (process.platform !== "linux") throw new SandboxUnavailable(`code execution needs Linux namespaces; this is ${process.platform}`);
    if (process.getuid?.() !== 0)
      throw new SandboxUnavailable(
        "code execution needs root to set up namespaces and an unprivileged uid for each program (hint: run the evaluation as root, e.g. in a container)",
      );
    for (const bin of ["/usr/bin/unshare", "/usr/bin/python3"])
      if (!existsSync(bin)) throw new SandboxUnavailable(`${bin} is missing (hint: apt-get install util-linux python3)`);
    const sb = new Sandbox(opts);
    const probe = await sb.run(
      [
        "import os, socket",
        "assert os.getpid() == 1 and os.getuid() != 0 and os.getgroups() == [], (os.getpid(), os.getuid())",
        "assert os.getcwd() == '/tmp/work' and os.listdir('.') == []",
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=0.5); raise SystemExit('network reachable')\nexcept OSError:\n    pass",
      ].join("\n"),
      { timeoutS: 10 },
    );
    if (!probe.passed) {
      const why = probe.stderr.match(/loralab-sandbox: .*/)?.[0] ?? (probe.stderr.trim().split("\n").pop() || probe.status);
      throw new SandboxUnavailable(`the sandbox could not confine a probe program, so nothing will be executed: ${why}`);
    }
    return sb;
  }

  private async slot(): Promise<number> {
    const s = this.free.pop();
    if (s !== undefined) return s;
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(s: number) {
    const w = this.waiting.shift();
    if (w) w(s);
    else this.free.push(s);
  }

  /** Run a Python program; it passes only if it reaches the sentinel appended after it. */
  async run(program: string, override: { timeoutS?: number } = {}): Promise<ExecResult> {
    const slot = await this.slot();
    try {
      return await this.exec(program, slot, override.timeoutS ?? this.opts.timeoutS);
    } finally {
      this.release(slot);
    }
  }

  private async exec(program: string, slot: number, timeoutS: number): Promise<ExecResult> {
    const o = this.opts;
    const nonce = `loralab-ok-${randomBytes(16).toString("hex")}`;
    const uid = o.uidBase + slot;
    const cfg = {
      uid,
      gid: uid,
      nonce,
      tmp_mb: o.tmpMb,
      limits: {
        RLIMIT_CPU: Math.ceil(timeoutS) + 1,
        RLIMIT_AS: o.memoryMb * 2 ** 20,
        RLIMIT_NPROC: o.maxProcesses,
        RLIMIT_FSIZE: o.maxFileMb * 2 ** 20,
        RLIMIT_NOFILE: 64,
        RLIMIT_CORE: 0,
      },
    };
    const t0 = performance.now();
    const proc = Bun.spawn(
      ["/usr/bin/unshare", "--fork", "--pid", "--kill-child", "--net", "--ipc", "--mount", "--uts", "--propagation", "private", "--mount-proc", "/usr/bin/python3", "-I", "-S", INIT],
      { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { PATH: "/usr/bin:/bin", LORALAB_SANDBOX: JSON.stringify(cfg) } },
    );
    let status: ExecStatus | null = null;
    const kill = (why: ExecStatus) => {
      status ??= why;
      killNamespace(proc);
    };
    const timer = setTimeout(() => kill("timeout"), timeoutS * 1000 + 500);
    let budget = o.maxOutputBytes;
    const read = async (s: ReadableStream<Uint8Array>): Promise<Uint8Array[]> => {
      const kept: Uint8Array[] = [];
      for await (const chunk of s) {
        if (chunk.length > budget) {
          kept.push(chunk.subarray(0, budget));
          budget = 0;
          kill("output_limit");
          break;
        }
        budget -= chunk.length;
        kept.push(chunk);
      }
      return kept;
    };
    try {
      proc.stdin.write(wrapProgram(program));
      await proc.stdin.end();
    } catch {
      // it died before reading its source: the exit status says why
    }
    const [out, err] = await Promise.all([read(proc.stdout), read(proc.stderr)]);
    const exitCode = await proc.exited;
    clearTimeout(timer);
    const dec = (parts: Uint8Array[]) => new TextDecoder().decode(Buffer.concat(parts));
    let stdout = dec(out);
    const stderr = dec(err);
    const reached = stdout.includes(`\n${nonce}\n`);
    stdout = stdout.replace(`\n${nonce}\n`, "");
    const passed = reached && status === null;
    return {
      passed,
      status: status ?? (passed ? "passed" : "failed"),
      exitCode: proc.signalCode ? null : exitCode,
      signal: proc.signalCode === null ? null : String(proc.signalCode),
      stdout,
      stderr,
      ms: performance.now() - t0,
    };
  }
}

/** SIGKILL the namespace's PID 1 (the child of `unshare`): the kernel then kills every
 * process in the namespace, however it forked or daemonized, and unshare reaps it and exits.
 * unshare itself is killed only if it has not (killing it first would orphan a zombie). */
function killNamespace(proc: { pid: number; exitCode: number | null; signalCode: unknown; kill?: (s: number) => void }) {
  try {
    const children = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
    for (const c of children) process.kill(Number(c), "SIGKILL");
  } catch {
    // already gone
  }
  setTimeout(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill?.(9);
  }, 2000).unref();
}
