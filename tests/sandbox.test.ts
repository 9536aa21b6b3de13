// The HumanEval sandbox against hostile completions. This suite runs as root (CI and dev
// machines do), where rlimits alone would contain nothing: each escape must be contained,
// scored as a failure, leave the harness running and leave nothing behind.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { Sandbox, type ExecResult } from "@loralab/eval";

const repo = new URL("..", import.meta.url).pathname;
const store = join(repo, `.sandbox-test-store-${process.pid}`);
const repoCanary = join(repo, `.sandbox-test-canary-${process.pid}`);
const secret = `s3cr3t-${Math.random().toString(36).slice(2)}`;
const UID_BASE = 61100;

let sb: Sandbox;
let results: Record<string, ExecResult>;
let server: Bun.TCPSocketListener<undefined>;
let connections = 0;
let witness: ReturnType<typeof Bun.spawn>;

/** Live processes of the sandbox's uids. */
function sandboxProcesses(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
      if (uid >= UID_BASE && uid < UID_BASE + 64) out.push(pid); // executions lease uid pairs from UID_BASE up
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

// each program "passes" (its top level runs to the end) only if its escape worked
const PROGRAMS: Record<string, string> = {
  benign: "assert sum(range(10)) == 45",
  infinite_loop: "while True:\n    pass",
  fork_bomb: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
  allocate_50gb: "x = bytearray(50 * 2**30)\nx[-1] = 1",
  write_outside: [
    "ok = False",
    `for p in [${JSON.stringify(join(store, "owned"))}, ${JSON.stringify(repoCanary)}, ${JSON.stringify(join(repo, "package.json"))}]:`,
    "    try:",
    "        open(p, 'a').write('owned')",
    "        ok = True",
    "    except OSError:",
    "        pass",
    "assert ok",
  ].join("\n"),
  read_secret: [
    "import os, glob",
    `s = ${JSON.stringify(secret)}`,
    "found = s in str(os.environ)",
    "for f in glob.glob('/proc/*/environ'):",
    "    try:",
    "        found = found or s in open(f, 'rb').read().decode('latin-1')",
    "    except OSError:",
    "        pass",
    "assert found",
  ].join("\n"),
  open_socket: "import socket\ns = socket.create_connection(('127.0.0.1', PORT), timeout=1)\ns.sendall(b'escaped')",
  kill_everything:
    "import os, time\nfor pid in (-1, 0, os.getppid()):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass\ntime.sleep(60)",
  raise_rlimits: [
    "import resource",
    "for r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE):",
    "    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
  ].join("\n"),
  print_1gb: "import sys\nchunk = 'x' * 2**16\nfor _ in range(2**14):\n    sys.stdout.write(chunk)",
  background_child: "import subprocess\nsubprocess.Popen(['sleep', '600'])\nassert False",
  // the exit code is not the verdict: these end with status 0 without reaching the checks' end
  sys_exit_0: "import sys\nsys.exit(0)\nassert False",
  atexit_exit_0: "import atexit, os\natexit.register(lambda: os._exit(0))\nraise AssertionError('failed check')",
  forged_sentinel: "print('\\nloralab-ok-' + '0' * 32)\nimport os\nos._exit(0)",
};

beforeAll(async () => {
  mkdirSync(store, { recursive: true });
  chmodSync(store, 0o777); // even a world-writable run store must be out of reach
  server = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open() {
        connections++;
      },
      data() {},
    },
  });
  // a root process holding the secret in its environment: the sandbox must not read it via /proc
  witness = Bun.spawn(["sleep", "120"], { env: { PATH: "/usr/bin:/bin", LORALAB_TEST_SECRET: secret } });
  sb = await Sandbox.open({ parallel: 6, timeoutS: 3, uidBase: UID_BASE });
  const entries = await Promise.all(
    Object.entries(PROGRAMS).map(async ([k, p]) => [k, await sb.run(p.replace("PORT", String(server.port)))] as const),
  );
  results = Object.fromEntries(entries);
}, 120_000);

afterAll(() => {
  server?.stop(true);
  witness?.kill();
  rmSync(store, { recursive: true, force: true });
  rmSync(repoCanary, { force: true });
});

describe("sandbox", () => {
  test("a benign program passes, confined: in its own PID namespace, unprivileged, empty private cwd, no network", () => {
    expect(results.benign!.passed).toBe(true);
    expect(results.benign!.status).toBe("passed");
  });

  test("an infinite loop is killed at the wall-clock timeout", () => {
    const r = results.infinite_loop!;
    expect([r.passed, r.status]).toEqual([false, "timeout"]);
    expect(r.ms).toBeGreaterThan(3000);
    expect(r.ms).toBeLessThan(8000);
  });

  test("a fork bomb is capped by the process limit and killed with its namespace", () => {
    const r = results.fork_bomb!;
    expect(r.passed).toBe(false);
    expect(r.ms).toBeLessThan(8000);
  });

  test("allocating 50 GB fails inside the address-space limit", () => {
    const r = results.allocate_50gb!;
    expect([r.passed, r.status]).toEqual([false, "failed"]);
    expect(r.stderr).toContain("MemoryError");
  });

  test("writing into the run store or the repo fails; nothing appears there", () => {
    expect(results.write_outside!.passed).toBe(false);
    expect(readdirSync(store)).toEqual([]);
    expect(existsSync(repoCanary)).toBe(false);
    expect(readFileSync(join(repo, "package.json"), "utf8")).not.toContain("owned");
  });

  test("a parent's environment secret is not readable, directly or via /proc", () => {
    expect(witness.exitCode).toBeNull(); // the witness holding the secret was alive throughout
    expect(results.read_secret!.passed).toBe(false);
    expect(results.read_secret!.stderr).toContain("AssertionError");
  });

  test("a socket reaches nothing", () => {
    expect(results.open_socket!.passed).toBe(false);
    expect(results.open_socket!.stderr).toMatch(/OSError|unreachable|refused/i);
    expect(connections).toBe(0);
  });

  test("kill(-1, 9), kill(0, 9) and killing its parent reach nothing outside; the harness runs on", () => {
    expect(results.kill_everything!.passed).toBe(false);
    expect(witness.exitCode).toBeNull();
    expect(results.benign!.passed).toBe(true); // ran at the same time, in its own namespace
  });

  test("raising its own rlimits is refused", () => {
    expect(results.raise_rlimits!.passed).toBe(false);
    expect(results.raise_rlimits!.stderr).toMatch(/not allowed|Operation not permitted|ValueError/);
  });

  test("printing 1 GB is cut at the output limit", () => {
    const r = results.print_1gb!;
    expect([r.passed, r.status]).toEqual([false, "output_limit"]);
    expect(r.stdout.length + r.stderr.length).toBeLessThanOrEqual(sb.opts.maxOutputBytes);
    expect(r.ms).toBeLessThan(3000);
  });

  test("a background child holding the output pipe dies with the program", () => {
    const r = results.background_child!;
    expect([r.passed, r.status]).toEqual([false, "failed"]);
    expect(r.ms).toBeLessThan(3000); // neither the child's 600 s nor the timeout
  });

  test("exit status 0 is not a pass: sys.exit(0), an atexit os._exit(0), a forged pass marker", () => {
    for (const k of ["sys_exit_0", "atexit_exit_0", "forged_sentinel"]) {
      expect([k, results[k]!.passed, results[k]!.exitCode]).toEqual([k, false, 0]);
    }
  });

  test("nothing is left behind: no process of a sandbox uid survives", async () => {
    await Bun.sleep(200);
    expect(sandboxProcesses()).toEqual([]);
  });

  test("a sandbox that cannot confine refuses to run anything", async () => {
    // uid 0 as the "unprivileged" uid: init.py refuses to go on as root
    const bad = Sandbox.open({ uidBase: 0, parallel: 1 });
    await expect(bad).rejects.toThrow(/could not confine|dropping privileges/);
  });
});
