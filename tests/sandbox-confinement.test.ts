// The sandbox's reach beyond its own namespace (issue 16, items 5, 6 and 11): the host's unix
// sockets and keyrings, another instance's process limit, and the bounds of one execution as
// a whole (files in its /tmp, memory over all its processes). Each program "passes" only if
// the escape worked.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { Sandbox } from "@loralab/eval";

const repo = new URL("..", import.meta.url).pathname;
const tag = `loralab-test-${process.pid}`;
const SOCKETS = [`/var/tmp/${tag}.sock`, join(repo, `.${tag}.sock`)];
const DGRAM = `/var/tmp/${tag}.dgram`;

let sb: Sandbox;

beforeAll(async () => {
  sb = await Sandbox.open({ parallel: 2, timeoutS: 5, uidBase: 61300 });
});

afterAll(() => {
  for (const p of [...SOCKETS, DGRAM]) rmSync(p, { force: true });
});

describe("host unix sockets and keyrings", () => {
  test("world-writable pathname sockets (stream and datagram, under /var/tmp and elsewhere) and abstract ones reach nothing", async () => {
    // a root listener outside the sandbox, reporting anything it receives
    const listener = Bun.spawn(
      [
        "python3",
        "-c",
        [
          "import os, select, socket, sys",
          "socks = []",
          `for path in ${JSON.stringify(SOCKETS)}:`,
          "    s = socket.socket(socket.AF_UNIX); s.bind(path); os.chmod(path, 0o777); s.listen(); socks.append(s)",
          `d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind(${JSON.stringify(DGRAM)}); os.chmod(${JSON.stringify(DGRAM)}, 0o777); socks.append(d)`,
          `a = socket.socket(socket.AF_UNIX); a.bind('\\0${tag}'); a.listen(); socks.append(a)`,
          "print('ready', flush=True)",
          "while True:",
          "    for s in select.select(socks, [], [])[0]:",
          "        data = s.recv(100) if s.type == socket.SOCK_DGRAM else s.accept()[0].recv(100)",
          "        print('GOT', s.getsockname(), data, flush=True)",
        ].join("\n"),
      ],
      { stdout: "pipe", stderr: "inherit" },
    );
    const reader = listener.stdout.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    expect(first).toContain("ready");
    const r = await sb.run(
      [
        "import socket",
        "reached = []",
        `for path in ${JSON.stringify(SOCKETS)} + ['\\0${tag}']:`,
        "    try:",
        "        s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(path); s.sendall(b'escaped'); reached.append(path)",
        "    except OSError as e:",
        "        print(path, e)",
        "try:",
        `    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'escaped', ${JSON.stringify(DGRAM)}); reached.append('dgram')`,
        "except OSError as e:",
        "    print('dgram', e)",
        "try:",
        `    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); a.sendto(b'escaped', ${JSON.stringify(DGRAM)}); reached.append('socketpair')`,
        "except OSError as e:",
        "    print('socketpair', e)",
        "assert reached, 'nothing reached'",
      ].join("\n"),
    );
    await Bun.sleep(300);
    listener.kill();
    const rest = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest.push(new TextDecoder().decode(value));
    }
    expect(rest.join("")).not.toContain("GOT");
    expect(r.passed).toBe(false);
    expect(r.stderr).toContain("nothing reached");
  });

  test("the harness's session keyring is out of reach, and a key one execution adds is gone for the next", async () => {
    const secret = `root-secret-${Math.random().toString(36).slice(2)}`;
    const keyctl = (body: string) =>
      [
        "import ctypes, platform",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "libc.syscall.restype = ctypes.c_long",
        "ADD_KEY, KEYCTL = {'x86_64': (248, 250), 'aarch64': (217, 219)}[platform.machine()]",
        "SESSION, USER, USER_SESSION = -3, -4, -5",
        "def find(desc):",
        "    for ring in (SESSION, USER, USER_SESSION):",
        "        k = libc.syscall(KEYCTL, 10, ring, b'user', desc, 0)",
        "        if k > 0:",
        "            buf = ctypes.create_string_buffer(256)",
        "            n = libc.syscall(KEYCTL, 11, k, buf, 256)",
        "            return buf.raw[:max(n, 0)]",
        body,
      ].join("\n");
    // the harness (root) joins a session keyring holding a secret, then opens a sandbox
    const script = [
      `import { Sandbox } from ${JSON.stringify(join(repo, "packages/eval/src/index.ts"))};`,
      "const sb = await Sandbox.open({ parallel: 1, uidBase: 61500 });",
      `const read = await sb.run(${JSON.stringify(keyctl(`v = find(b'${tag}-root')\nassert v, v`))});`,
      `const plant = await sb.run(${JSON.stringify(keyctl(`for ring in (SESSION, USER, USER_SESSION):\n    libc.syscall(ADD_KEY, b'user', b'${tag}-planted', b'planted', 7, ring)\nassert find(b'${tag}-planted')`))});`,
      `const next = await sb.run(${JSON.stringify(keyctl(`assert find(b'${tag}-planted')`))});`,
      "console.log(JSON.stringify({ read: read.passed, readOut: read.stderr.slice(-300), plant: plant.passed, next: next.passed }));",
    ].join("\n");
    const wrapper = keyctl(
      [
        "import os, sys",
        `ring = libc.syscall(KEYCTL, 1, b'${tag}')`, // join a fresh named session keyring
        "ring > 0 or sys.exit(77)  # no keyrings on this machine (e.g. a container's seccomp profile)",
        `assert libc.syscall(ADD_KEY, b'user', b'${tag}-root', b'${secret}', ${secret.length}, SESSION) > 0`,
        `assert find(b'${tag}-root') == b'${secret}'`,
        "os.execv(sys.argv[1], [sys.argv[1], '-e', sys.argv[2]])",
      ].join("\n"),
    );
    const p = Bun.spawnSync(["python3", "-c", wrapper, process.execPath, script], {
      cwd: repo,
      stdout: "pipe",
      stderr: "pipe",
    });
    const out = p.stdout.toString();
    if (p.exitCode === 77) {
      console.warn("no keyrings on this machine: nothing for a sandbox to leak");
      return;
    }
    expect([p.exitCode, p.stderr.toString().slice(-500)]).toEqual([0, ""]);
    const r = JSON.parse(out.trim().split("\n").pop()!) as {
      read: boolean;
      readOut: string;
      plant: boolean;
      next: boolean;
    };
    expect(r.readOut).not.toContain(secret);
    expect({ read: r.read, plant: r.plant, next: r.next }).toEqual({ read: false, plant: false, next: false });
  }, 30_000);
});

describe("two instances at once", () => {
  test("do not share a process limit: a correct program runs beside another instance's fork-holder", async () => {
    // both instances start from the same uid base, as two default-configured evaluations would
    const a = await Sandbox.open({ parallel: 1, timeoutS: 8, uidBase: 61600 });
    const b = await Sandbox.open({ parallel: 1, timeoutS: 8, uidBase: 61600 });
    const holder = a.run(
      [
        "import os, time",
        "print(os.getuid(), flush=True)",
        "while True:",
        "    try:",
        "        pid = os.fork()",
        "    except OSError:",
        "        break",
        "    if pid == 0:",
        "        time.sleep(60)",
        "        os._exit(0)",
        "time.sleep(5)",
      ].join("\n"),
    );
    await Bun.sleep(1500); // the holder has filled its uid's process limit by now
    const correct = [];
    for (let i = 0; i < 3; i++)
      correct.push(
        await b.run("import os, subprocess\nprint(os.getuid())\nassert subprocess.run(['true']).returncode == 0"),
      );
    const held = await holder;
    expect(correct.map((r) => [r.passed, r.stderr.slice(-200)])).toEqual(correct.map(() => [true, ""]));
    expect(held.passed).toBe(true);
    const holderUid = held.stdout.trim();
    for (const r of correct) expect(r.stdout.trim()).not.toBe(holderUid);
  }, 30_000);
});

describe("the bounds of one execution", () => {
  test("its /tmp holds a bounded number of files", async () => {
    const r = await sb.run("import os\nfor i in range(5000):\n    open(f'/tmp/work/f{i}', 'w').close()");
    expect(r.passed).toBe(false);
    expect(r.stderr).toContain("No space left on device");
  });

  test("its memory is bounded over all its processes, not per process", async () => {
    const small = await Sandbox.open({ parallel: 1, timeoutS: 8, memoryMb: 256, uidBase: 61400 });
    if (small.memoryBound === "rlimit per process") {
      console.warn("no memory cgroup on this machine: memory is bounded per process only (RLIMIT_AS × processes)");
      return;
    }
    // four processes of 160 MiB each: every one within the 256 MiB address-space limit
    const r = await small.run(
      [
        "import os, select, time",
        "r, w = os.pipe()",
        "for _ in range(4):",
        "    if os.fork() == 0:",
        "        block = b'\\x01' * (160 << 20)",
        "        os.write(w, b'k')",
        "        time.sleep(30)",
        "        os._exit(0)",
        "os.close(w)",
        "held = b''",
        "while len(held) < 4 and select.select([r], [], [], 1.5)[0]:",
        "    chunk = os.read(r, 4)",
        "    if not chunk:",
        "        break",
        "    held += chunk",
        "assert len(held) == 4, f'{len(held)} of 4 held their memory'",
      ].join("\n"),
    );
    expect(r.passed).toBe(false);
    expect(r.ms).toBeLessThan(8000);
    // and the execution's cgroup is gone afterwards
    const cg = readFileSync("/proc/self/cgroup", "utf8");
    const dirs = [
      join("/sys/fs/cgroup", cg.match(/^0::(.*)$/m)?.[1] ?? "/"),
      join("/sys/fs/cgroup/memory", cg.match(/^\d+:[^:]*\bmemory\b[^:]*:(.*)$/m)?.[1] ?? "/"),
    ];
    for (const d of dirs.filter(existsSync))
      expect(readdirSync(d).filter((n) => n.startsWith(`loralab-sandbox-${process.pid}-`))).toEqual([]);
  }, 30_000);
});
