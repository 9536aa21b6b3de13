// Runs untrusted Python (model completions) confined, and scores it where it cannot reach the
// verdict. scoreHumanEval (humaneval.ts) calls check(); the probe and tests call run().
//
// Why the verdict cannot be forged. A completion shares a process with whatever runs in that
// process: any marker, nonce or channel there is the completion's too (a closure cell, a
// gc.get_objects() scan, /proc/self/mem, a hooked sys.excepthook, os._exit(0) all reach it),
// and so is what the asserts rely on (a returned object can claim __eq__, a patched math.fabs
// can agree with anything).
// So nothing the verdict depends on lives in the completion's process. Each execution has
// three (sandbox/init.py):
//   init       root inside fresh PID, network, mount, IPC and UTS namespaces; holds fd 3, the
//              only way out for the verdict; runs no untrusted code
//   candidate  uid A in a user namespace of its own: the prompt + completion as __main__
//   checker    uid B: the problem's prompt and test code, with `candidate` a proxy whose
//              calls go to the candidate process and come back as plain values (wire.py)
// The asserts run in the checker, on values only Python's own types can be built from; the
// candidate can return wrong values, crash, hang or lie, and each of those fails. It cannot
// signal, ptrace or read the checker or init (other uids, not dumpable), nor hold fd 3. The
// checker's exit status, seen only by init, is the verdict. Chosen over an exit-status or
// nonce protocol (forgeable from inside: os._exit, memory scans), over running the program
// twice (both runs are the completion's), and over ptrace (the tracee shares the secret's
// address space with the code being judged, and a tracer must interpret every syscall).
//
// Confinement of each execution: an unprivileged uid pair leased under a lock (two instances
// never share a process limit), no groups, no_new_privs, a seccomp filter (no AF_UNIX sockets:
// no host pathname sockets; no keyrings), a fresh session keyring, CPU / address-space /
// process / file-size limits, a memory cgroup for the whole execution where the machine has
// one (else only each process's address space bounds it: memoryMb × maxProcesses), a
// read-only filesystem, a private /tmp bounded in bytes and inodes holding its empty working
// directory, empty /run, /var/tmp, /dev/shm, a scrubbed environment. The harness reads at
// most `maxOutputBytes` of output and kills the namespace's PID 1 — and with it everything
// inside — at the wall-clock timeout. If confinement cannot be set up, nothing runs.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";

const INIT = new URL("../sandbox/init.py", import.meta.url).pathname;
const LEASES = "/run/loralab-sandbox"; // uid-<n>.lock, flock'd while an execution runs as n and n+1
const MAX_LEASES = 512; // uid pairs scanned from uidBase

export interface SandboxOptions {
  /** Executions at once. */
  parallel?: number;
  /** Wall-clock limit per execution, seconds (bigcode: 3). */
  timeoutS?: number;
  /** Memory of the whole execution, MiB: a memory cgroup where the machine has one (see
   *  `memoryBound`), and an address-space limit on each process in any case. */
  memoryMb?: number;
  /** Processes (threads included) the program's uid may have. */
  maxProcesses?: number;
  /** Largest file it may write, MiB. */
  maxFileMb?: number;
  /** Size of its private /tmp, MiB. */
  tmpMb?: number;
  /** Files and directories its private /tmp may hold. */
  tmpInodes?: number;
  /** stdout + stderr kept; more kills the program. */
  maxOutputBytes?: number;
  /** Lowest uid an execution runs as: each takes the first free pair from here up (the
   *  program's and the checker's), locked across instances and processes for its duration. */
  uidBase?: number;
}

/** A program judged by trusted test code: HumanEval's prompt + completion as `module`, its
 *  prompt again as `prelude` (the test's helpers, e.g. `poly`, come from this trusted copy),
 *  its `test` (defining check), and the entry point that check(...) is given. */
export interface CheckJob {
  module: string;
  prelude: string;
  test: string;
  entryPoint: string;
}

export type ExecStatus = "passed" | "failed" | "timeout" | "output_limit";

export interface ExecResult {
  /** check(): the checker saw check(candidate) return. run(): the program's top level ran to
   *  its end (its own process says so: a hostile program can claim it; judge those with check). */
  passed: boolean;
  status: ExecStatus;
  /** The program's exit status or signal. */
  exitCode: number | null;
  signal: string | null;
  /** Output, at most maxOutputBytes (the program's and the checker's). */
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
  tmpInodes: 1024, // HumanEval writes no files; 98k of them took 2.6 s without a bound
  maxOutputBytes: 64 * 1024,
  uidBase: 61000,
};

/** What init.py reads on stdin: a line of UTF-8 byte lengths, then the texts themselves
 *  (the program alone for run(); module, prelude, test and entry point for check()). */
export function wrapProgram(...texts: string[]): Buffer {
  const parts = texts.map((t) => Buffer.from(t, "utf8"));
  return Buffer.concat([Buffer.from(`${parts.map((p) => p.length).join(" ")}\n`), ...parts]);
}

export class Sandbox {
  readonly opts: Required<SandboxOptions>;
  /** How memoryMb is enforced on this machine. */
  readonly memoryBound: "cgroup v2" | "cgroup v1" | "rlimit per process";
  private readonly cgroupParent: string | null;
  private free: number[];
  private waiting: ((slot: number) => void)[] = [];

  private constructor(opts: SandboxOptions, cgroup: MemoryCgroup | null) {
    this.opts = { ...DEFAULTS, ...opts };
    this.free = Array.from({ length: this.opts.parallel }, (_, i) => i);
    this.cgroupParent = cgroup?.dir ?? null;
    this.memoryBound = cgroup ? `cgroup ${cgroup.version}` : "rlimit per process";
  }

  /** A sandbox that has proved it can confine: it runs a probe that must see itself as an
   * unprivileged child of a PID namespace's init with no network and no unix sockets, checked
   * by the checker. Throws SandboxUnavailable (with the reason) otherwise. */
  static async open(opts: SandboxOptions = {}): Promise<Sandbox> {
    if (process.platform !== "linux")
      throw new SandboxUnavailable(`code execution needs Linux namespaces; this is ${process.platform}`);
    if (process.getuid?.() !== 0)
      throw new SandboxUnavailable(
        "code execution needs root to set up namespaces and unprivileged uids for each program (hint: run the evaluation as root, e.g. in a container)",
      );
    for (const bin of ["/usr/bin/unshare", "/usr/bin/python3"])
      if (!existsSync(bin))
        throw new SandboxUnavailable(`${bin} is missing (hint: apt-get install util-linux python3)`);
    const sb = new Sandbox(opts, memoryCgroup());
    const probe = await sb.check(
      {
        module: [
          "import os, socket",
          "assert os.getppid() == 1 and os.getuid() != 0 and os.getgroups() == [], (os.getppid(), os.getuid())",
          "assert len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3, os.listdir('/proc')",
          "assert os.getcwd() == '/tmp/work' and os.listdir('.') == []",
          "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=0.5); raise SystemExit('network reachable')\nexcept OSError:\n    pass",
          "try:\n    socket.socket(socket.AF_UNIX); raise SystemExit('unix sockets allowed')\nexcept PermissionError:\n    pass",
          "def probe(x):\n    return [x, os.getuid()]",
        ].join("\n"),
        prelude: "",
        test: "import os\n\ndef check(candidate):\n    got, uid = candidate(41)\n    assert got == 41 and uid != os.getuid() and os.getuid() != 0\n",
        entryPoint: "probe",
      },
      { timeoutS: 10 },
    );
    if (!probe.passed) {
      const why =
        probe.stderr.match(/loralab-sandbox: .*/)?.[0] ?? (probe.stderr.trim().split("\n").pop() || probe.status);
      throw new SandboxUnavailable(
        `the sandbox could not confine a probe program, so nothing will be executed: ${why}`,
      );
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

  /** Run a Python program; it passes if its top level runs to the end. */
  async run(program: string, override: { timeoutS?: number } = {}): Promise<ExecResult> {
    return this.limited(wrapProgram(program), override);
  }

  /** Run job.module in the sandbox and job.test against it in the checker; passes only if
   *  check(entry point) returns there. */
  async check(job: CheckJob, override: { timeoutS?: number } = {}): Promise<ExecResult> {
    return this.limited(wrapProgram(job.module, job.prelude, job.test, job.entryPoint), override);
  }

  private async limited(input: Buffer, override: { timeoutS?: number }): Promise<ExecResult> {
    const slot = await this.slot();
    try {
      const lease = await leaseUids(this.opts.uidBase);
      try {
        return await this.exec(input, lease.uid, override.timeoutS ?? this.opts.timeoutS);
      } finally {
        closeSync(lease.fd);
      }
    } finally {
      this.release(slot);
    }
  }

  private async exec(input: Buffer, uid: number, timeoutS: number): Promise<ExecResult> {
    const o = this.opts;
    const limits = {
      RLIMIT_CPU: Math.ceil(timeoutS) + 1,
      RLIMIT_AS: o.memoryMb * 2 ** 20,
      RLIMIT_NPROC: o.maxProcesses,
      RLIMIT_FSIZE: o.maxFileMb * 2 ** 20,
      RLIMIT_NOFILE: 64,
      RLIMIT_CORE: 0,
    };
    // the checker runs trusted code that neither forks nor writes files
    const checker = { ...limits, RLIMIT_NPROC: 1, RLIMIT_FSIZE: 0 };
    // init moves the program's process into the cgroup (Bun.spawn's `cgroup` would block this
    // event loop for the migration's RCU grace period, ~15 ms, on every execution)
    const cgroup = this.cgroupParent ? makeCgroup(this.cgroupParent, o.memoryMb * 2 ** 20) : undefined;
    const cfg = [
      `uid_candidate=${uid} uid_checker=${uid + 1} tmp_mb=${o.tmpMb} tmp_inodes=${o.tmpInodes}`,
      ...(cgroup ? [`cgroup=${Buffer.from(cgroup).toString("hex")}`] : []),
      ...Object.entries(limits).map(([k, v]) => `candidate.${k}=${v}`),
      ...Object.entries(checker).map(([k, v]) => `checker.${k}=${v}`),
    ].join(" ");
    const t0 = performance.now();
    let proc: Bun.Subprocess<"pipe", "pipe", "pipe">;
    try {
      proc = Bun.spawn(
        [
          "/usr/bin/unshare",
          "--fork",
          "--pid",
          "--kill-child",
          "--net",
          "--ipc",
          "--mount",
          "--uts",
          "--propagation",
          "private",
          "--mount-proc",
          "/usr/bin/python3",
          "-I",
          "-S",
          "-B",
          INIT,
        ],
        { stdio: ["pipe", "pipe", "pipe", "pipe"], env: { PATH: "/usr/bin:/bin", LORALAB_SANDBOX: cfg } },
      );
    } catch (e) {
      if (cgroup) removeCgroup(cgroup);
      throw e;
    }
    const verdictFd = proc.stdio[3]; // read once the namespace is gone: nothing can write it then
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
      proc.stdin.write(input);
      await proc.stdin.end();
    } catch {
      // it died before reading its job: the verdict (or its absence) says why
    }
    const [out, err] = await Promise.all([read(proc.stdout), read(proc.stderr)]);
    const exitCode = await proc.exited;
    clearTimeout(timer);
    const verdict = readVerdict(verdictFd);
    if (cgroup) removeCgroup(cgroup);
    const dec = (parts: Uint8Array[]) => new TextDecoder().decode(Buffer.concat(parts));
    const passed = verdict?.passed === true && status === null;
    const ran = verdict !== null && verdict.error === null; // else unshare's own status says what happened
    return {
      passed,
      status: status ?? (passed ? "passed" : "failed"),
      exitCode: ran ? verdict.exit : proc.signalCode ? null : exitCode,
      signal: ran
        ? verdict.signal === null
          ? null
          : signalName(verdict.signal)
        : proc.signalCode === null
          ? null
          : String(proc.signalCode),
      stdout: dec(out),
      stderr: dec(err),
      ms: performance.now() - t0,
    };
  }
}

interface Verdict {
  passed: boolean;
  /** The program's exit status or signal number (null: it never started). */
  exit: number | null;
  signal: number | null;
  /** Confinement failed: nothing ran. */
  error: string | null;
}

/** init.py's one line on fd 3, or null if it wrote none (killed, or never started). */
function readVerdict(fd: number | null | undefined): Verdict | null {
  if (typeof fd !== "number") return null;
  try {
    const buf = Buffer.alloc(4096);
    let n = 0;
    while (n < buf.length) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r <= 0) break;
      n += r;
    }
    const v = JSON.parse(buf.subarray(0, n).toString().split("\n")[0] ?? "") as Partial<Verdict>;
    const intOrNull = (x: unknown) => (x === null || Number.isInteger(x) ? (x as number | null) : null);
    return {
      passed: v.passed === true,
      exit: intOrNull(v.exit),
      signal: intOrNull(v.signal),
      error: typeof v.error === "string" ? v.error : null,
    };
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

function signalName(n: number): string {
  return Object.entries(os.constants.signals).find(([, v]) => v === n)?.[0] ?? String(n);
}

// ------------------------------------------------------------------ uid leases

let flock: ((fd: number, op: number) => number) | null = null;

/** The first free pair of uids from `base` up, held (flock on /run/loralab-sandbox/uid-<n>.lock)
 *  until `fd` is closed; the harness closes it once the execution's namespace is gone, so its
 *  processes no longer count against the uids' process limit. A crashed harness's locks go
 *  with it. Waits while every pair is taken. */
async function leaseUids(base: number): Promise<{ uid: number; fd: number }> {
  if (!flock) {
    const { dlopen, FFIType } = await import("bun:ffi");
    for (const name of ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1"]) {
      try {
        flock = dlopen(name, { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } }).symbols.flock;
        break;
      } catch {
        // not this libc
      }
    }
    if (!flock)
      throw new SandboxUnavailable(
        "the sandbox locks its uids with flock(2) and found no libc to call it from (hint: glibc or musl)",
      );
  }
  mkdirSync(LEASES, { recursive: true, mode: 0o700 });
  const LOCK_EX_NB = 2 | 4;
  for (let waited = 0; ; waited++) {
    for (let i = 0; i < MAX_LEASES; i++) {
      const uid = base + 2 * i;
      const fd = openSync(join(LEASES, `uid-${uid}.lock`), "a", 0o600);
      if (flock(fd, LOCK_EX_NB) === 0) return { uid, fd };
      closeSync(fd);
    }
    if (waited > 600)
      throw new Error(
        `sandbox: all ${MAX_LEASES} uid pairs from ${base} are in use (hint: fewer evaluations at once, or another uidBase)`,
      );
    await Bun.sleep(50);
  }
}

// ------------------------------------------------------------------ memory cgroup

interface MemoryCgroup {
  dir: string;
  version: "v1" | "v2";
}

/** Where per-execution memory cgroups can be made: under this process's own cgroup, if its
 *  memory controller is there for children (v2: enabled in its subtree_control, as a delegated
 *  cgroup has it; v1: the memory hierarchy, writable by root). Null otherwise: then memoryMb
 *  bounds each process (RLIMIT_AS) and the uid's process count bounds how many. */
function memoryCgroup(): MemoryCgroup | null {
  try {
    const lines = readFileSync("/proc/self/cgroup", "utf8").trim().split("\n");
    const v2 = lines.find((l) => l.startsWith("0::"))?.slice(3);
    if (v2 !== undefined && existsSync("/sys/fs/cgroup/cgroup.controllers")) {
      const dir = join("/sys/fs/cgroup", v2);
      if (readFileSync(join(dir, "cgroup.subtree_control"), "utf8").split(/\s+/).includes("memory") && usable(dir))
        return { dir, version: "v2" };
    }
    const v1 = lines.map((l) => l.split(":")).find((f) => f[1]?.split(",").includes("memory"));
    if (v1?.[2] !== undefined) {
      const dir = join("/sys/fs/cgroup/memory", v1[2]);
      if (existsSync(join(dir, "memory.limit_in_bytes")) && usable(dir)) return { dir, version: "v1" };
    }
  } catch {
    // no cgroup filesystem here
  }
  return null;
}

function usable(parent: string): boolean {
  try {
    removeCgroup(makeCgroup(parent, 64 * 2 ** 20));
    return true;
  } catch {
    return false;
  }
}

let cgroups = 0;

/** A child cgroup of `parent` holding at most `bytes` of memory (swap included). */
function makeCgroup(parent: string, bytes: number): string {
  const dir = join(parent, `loralab-sandbox-${process.pid}-${cgroups++}`);
  mkdirSync(dir);
  try {
    if (existsSync(join(dir, "memory.max"))) {
      writeFileSync(join(dir, "memory.max"), String(bytes));
      if (existsSync(join(dir, "memory.swap.max"))) writeFileSync(join(dir, "memory.swap.max"), "0");
    } else {
      writeFileSync(join(dir, "memory.limit_in_bytes"), String(bytes));
      if (existsSync(join(dir, "memory.memsw.limit_in_bytes")))
        writeFileSync(join(dir, "memory.memsw.limit_in_bytes"), String(bytes));
    }
  } catch (e) {
    removeCgroup(dir);
    throw e;
  }
  return dir;
}

function removeCgroup(dir: string) {
  for (let i = 0; i < 50; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EBUSY") return;
      Bun.sleepSync(2); // its last tasks are still being released
    }
  }
}

/** SIGKILL the namespace's PID 1 (the child of `unshare`): the kernel then kills every
 * process in the namespace, however it forked or daemonized, and unshare reaps it and exits.
 * unshare itself is killed only if it has not (killing it first would orphan a zombie). */
function killNamespace(proc: {
  pid: number;
  exitCode: number | null;
  signalCode: unknown;
  kill?: (s: number) => void;
}) {
  try {
    const children = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean);
    for (const c of children) process.kill(Number(c), "SIGKILL");
  } catch {
    // already gone
  }
  setTimeout(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill?.(9);
  }, 2000).unref();
}
