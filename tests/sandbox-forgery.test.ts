// HumanEval verdicts against completions that try to fake a pass (issue 16, item 1). Every
// attack below has a WRONG body; each must score a failure through the real scoring path
// (scoreHumanEval), while the same problem with a right body passes. The first five are the
// forgeries that scored PASS when the pass marker lived in the completion's process.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import {
  humanevalCheck,
  Sandbox,
  scoreHumanEval,
  stopAtStopToken,
  type ExecResult,
  type HumanEvalProblem,
  type HumanEvalResult,
} from "@loralab/eval";

const UID_BASE = 61200;

const add: HumanEvalProblem = {
  task_id: "add",
  prompt: 'def add(a, b):\n    """Return a + b.\n    >>> add(2, 3)\n    5\n    """\n',
  canonical_solution: "    return a + b\n",
  test: "METADATA = {}\n\n\ndef check(candidate):\n    import math\n    assert candidate(2, 3) == 5\n    assert candidate(-7, 7) == 0\n    assert math.fabs(candidate(0.5, 0.25) - 0.75) < 1e-9\n",
  entry_point: "add",
};

const WRONG = "\n    return 0\n";
/** Top-level code after the (wrong) body, indented inside a try so that no line starts with a
 *  stop sequence (\ndef, \nif, \nprint, ...) and the whole attack reaches the sandbox. */
const after = (code: string, body = WRONG) => `${body}\n\ntry:\n${code.replace(/^/gm, "    ")}\nfinally:\n    pass\n`;
const NONCE = "re.compile(rb'loralab-ok-[0-9a-f]{32}')";
const emit = "for m in found:\n    os.write(1, b'\\n' + m + b'\\n')\nos._exit(0)";

const ATTACKS: Record<string, string> = {
  // --- the five that passed before
  call_marker_then_exit: after("import os\ndone = globals().get('__loralab_done')\ndone and done()\nos._exit(0)"),
  closure_cell: after(
    [
      "import gc, os",
      "found = set()",
      "try:",
      "    found.add(__loralab_done.__closure__[0].cell_contents)",
      "except Exception:",
      "    pass",
      "for o in gc.get_objects():",
      "    for c in (getattr(o, '__closure__', None) or ()) if callable(o) else ():",
      "        try:",
      "            v = c.cell_contents",
      "        except ValueError:",
      "            continue",
      "        if isinstance(v, (bytes, str)) and 8 <= len(v) <= 200:",
      "            found.add(v if isinstance(v, bytes) else v.encode())",
      emit,
    ].join("\n"),
  ),
  gc_scan: after(
    [
      "import gc, os, re",
      `pat = ${NONCE}`,
      "found = set()",
      "for o in gc.get_objects():",
      "    for r in gc.get_referents(o):",
      "        if isinstance(r, (bytes, str)):",
      "            found.update(pat.findall(r if isinstance(r, bytes) else r.encode('utf-8', 'replace')))",
      emit,
    ].join("\n"),
  ),
  proc_mem_scan: after(
    [
      "import os, re",
      `pat = ${NONCE}`,
      "found = set()",
      "for pid in ['self'] + [p for p in os.listdir('/proc') if p.isdigit()]:",
      "    try:",
      "        maps = open(f'/proc/{pid}/maps').read().splitlines()",
      "        mem = open(f'/proc/{pid}/mem', 'rb', buffering=0)",
      "    except OSError:",
      "        continue",
      "    for line in maps:",
      "        addr, perms = line.split()[:2]",
      "        if not perms.startswith('r') or '[v' in line:",
      "            continue",
      "        lo, hi = (int(x, 16) for x in addr.split('-'))",
      "        try:",
      "            mem.seek(lo)",
      "            found.update(pat.findall(mem.read(min(hi - lo, 1 << 28))))",
      "        except (OSError, ValueError, OverflowError):",
      "            pass",
      emit,
    ].join("\n"),
  ),
  excepthook: after(
    [
      "import os, sys",
      "def hook(*exc):",
      "    done = globals().get('__loralab_done')",
      "    done and done()",
      "    os._exit(0)",
      "sys.excepthook = hook",
    ].join("\n"),
  ),
  // --- our own
  equal_to_anything: [
    "",
    "    class Any:",
    "        __eq__ = __lt__ = __le__ = __gt__ = __ge__ = lambda self, other: True",
    "        __ne__ = lambda self, other: False",
    "        __add__ = __radd__ = __sub__ = __rsub__ = lambda self, other: self",
    "        __float__ = __abs__ = lambda self: 0.0",
    "        __hash__ = object.__hash__",
    "    return Any()",
    "",
  ].join("\n"),
  int_subclass_equal_to_anything:
    "\n    return type('I', (int,), {'__eq__': lambda s, o: True, '__hash__': int.__hash__, '__sub__': lambda s, o: 0.0})(0)\n",
  raise_system_exit: "\n    raise SystemExit(0)\n",
  raise_stop_iteration: "\n    raise StopIteration\n",
  patch_builtins: after(
    [
      "import builtins, math",
      "builtins.AssertionError = type('Never', (BaseException,), {})",
      "math.fabs = builtins.abs = lambda x: 0.0",
      "builtins.check = lambda candidate: None",
      "check = lambda candidate: None",
    ].join("\n"),
  ),
  write_every_fd: after(
    [
      "import os",
      'lies = [b\'\\n{"passed": true, "exit": 0, "signal": null, "error": null}\\n\', b\'["ready"]\\n\', b\'["ret",["i","0x0"]]\\n\' * 3]',
      "for fd in range(1024):",
      "    for lie in lies:",
      "        try:",
      "            os.write(fd, lie)",
      "        except OSError:",
      "            pass",
      "for pid in ['self', '1', '2', '3', '4']:",
      "    for fd in range(16):",
      "        try:",
      "            f = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)",
      "            for lie in lies:",
      "                os.write(f, lie)",
      "            os.close(f)",
      "        except OSError:",
      "            pass",
      "os._exit(0)",
    ].join("\n"),
  ),
  kill_everyone: after(
    [
      "import os, signal",
      "others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]",
      "for pid in [os.getppid(), 1, -1] + others:",
      "    for s in (signal.SIGSTOP, signal.SIGKILL):",
      "        try:",
      "            os.kill(pid, s)",
      "        except OSError:",
      "            pass",
      "os._exit(0)",
    ].join("\n"),
  ),
  ptrace_everyone: after(
    [
      "import ctypes, os",
      "libc = ctypes.CDLL(None, use_errno=True)",
      "for pid in [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:",
      "    libc.ptrace(16, pid, 0, 0)",
      "    libc.ptrace(0x4206, pid, 0, 0)",
      "os._exit(0)",
    ].join("\n"),
  ),
  plant_modules: after(
    [
      "import os",
      "for d in ('/tmp', '/tmp/work'):",
      "    for m in ('math', 'random', 'copy', 'string', 'typing', 'traceback'):",
      "        try:",
      "            open(f'{d}/{m}.py', 'w').write('import os\\nos._exit(0)\\n')",
      "        except OSError:",
      "            pass",
    ].join("\n"),
  ),
  nested_too_deep: "\n    x = []\n    for _ in range(10000):\n        x = [x]\n    return x\n",
  flood_the_answers: after("import os\nos.write(4, b'[' * (80 << 20))\nos._exit(0)"),
  sleep_past_timeout: "\n    import time\n    time.sleep(30)\n",
};

// an honest body that first tries everything the checker's side must be out of reach for,
// and says so on stderr if anything was reachable
const PROBE_REACH = after(
  [
    "import ctypes, os, signal, sys",
    "libc = ctypes.CDLL(None, use_errno=True)",
    "others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]",
    "sys.stderr.write(f'others: {len(others)}\\n')",
    "for pid in others:",
    "    for what, mode in (('mem', 'rb'), ('environ', 'rb'), ('fd/3', 'wb'), ('fd/4', 'rb'), ('fd/0', 'wb')):",
    "        try:",
    "            open(f'/proc/{pid}/{what}', mode, buffering=0)",
    "            sys.stderr.write(f'REACHED /proc/{pid}/{what}\\n')",
    "        except OSError:",
    "            pass",
    "    for sig in (0, signal.SIGSTOP, signal.SIGCONT):",
    "        try:",
    "            os.kill(pid, sig)",
    "            sys.stderr.write(f'REACHED kill {pid} {sig}\\n')",
    "        except OSError:",
    "            pass",
    "    if libc.ptrace(16, pid, 0, 0) == 0:",
    "        sys.stderr.write(f'REACHED ptrace {pid}\\n')",
  ].join("\n"),
  "\n    return a + b\n",
);

// every kind of value an honest function returns arrives as exactly that value
const VALUES: HumanEvalProblem = {
  task_id: "values",
  prompt: 'def values():\n    """The values."""\n',
  canonical_solution: "",
  test: [
    "import math",
    "",
    "def check(candidate):",
    "    v = candidate()",
    "    assert type(v) is dict and list(v) == ['t', 's', 'f', 'big', 'flags', 'floats', 'c', 'b', 'r', 'n', 'k']",
    "    assert v['t'] == (1, 'x', [2.5]) and type(v['t']) is tuple and type(v['t'][2]) is list",
    "    assert v['s'] == {1, 2} and type(v['s']) is set and v['f'] == frozenset({'a'}) and type(v['f']) is frozenset",
    "    assert v['big'] == 10 ** 5000 + 1 and type(v['big']) is int",
    "    assert v['flags'] == [True, False, 1, 0] and [type(x) for x in v['flags']] == [bool, bool, int, int]",
    "    inf, nan, neg0, third = v['floats']",
    "    assert inf == math.inf and math.isnan(nan) and math.copysign(1, neg0) == -1 and third == 1 / 3",
    "    assert v['c'] == 1 - 2j and v['b'] == b'\\x00\\xff' and v['r'] == range(1, 9, 3) and v['n'] is None",
    "    assert v['k'] == {(1, 2): 'pair', 3: None}",
    "    assert list(candidate(iterate=True)) == [0, 1, 4]",
    "    assert candidate(echo=(['deep', {'x': 1.5}], {7})) == (['deep', {'x': 1.5}], {7})",
  ].join("\n"),
  entry_point: "values",
};
const VALUES_BODY = [
  "",
  "    import collections",
  "    echo = kw.get('echo')",
  "    if echo is not None:",
  "        return echo",
  "    if kw.get('iterate'):",
  "        return (i * i for i in range(3))",
  "    Point = collections.namedtuple('Point', 'a b c')",
  "    return collections.OrderedDict(t=Point(1, 'x', [2.5]), s={1, 2}, f=frozenset({'a'}), big=10 ** 5000 + 1,",
  "        flags=[True, False, 1, 0], floats=[float('inf'), float('nan'), -0.0, 1 / 3], c=1 - 2j, b=b'\\x00\\xff',",
  "        r=range(1, 9, 3), n=None, k={(1, 2): 'pair', 3: None})",
  "",
].join("\n");

let sb: Sandbox;
let attacks: HumanEvalResult;
let honest: HumanEvalResult;
let reach: ExecResult;
let values: ExecResult;

/** Live processes of the sandbox's uids. */
function sandboxProcesses(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
      if (uid >= UID_BASE && uid < UID_BASE + 64) out.push(pid);
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

beforeAll(async () => {
  sb = await Sandbox.open({ parallel: 2, timeoutS: 3, uidBase: UID_BASE });
  const names = Object.keys(ATTACKS);
  [attacks, honest] = await Promise.all([
    scoreHumanEval(
      names.map((task_id) => ({ ...add, task_id })),
      names.map((n) => [ATTACKS[n]!]),
      sb,
    ),
    scoreHumanEval([add], [["\n    return a + b\n", "\n    print('noise')\n    return b + a\n"]], sb, [1, 2]),
  ]);
  reach = await sb.check(humanevalCheck(add, PROBE_REACH));
  values = await sb.check(
    humanevalCheck({ ...VALUES, prompt: VALUES.prompt.replace("values()", "values(**kw)") }, VALUES_BODY),
  );
}, 120_000);

afterAll(async () => {
  await Bun.sleep(200);
  expect(sandboxProcesses()).toEqual([]);
});

describe("a completion cannot fake a HumanEval pass", () => {
  test("the problem is passable: right bodies pass", () => {
    expect(honest.per_problem[0]!.correct).toBe(2);
  });

  test("every attack survives the stop-sequence cut, so the sandbox sees all of it", () => {
    for (const [name, g] of Object.entries(ATTACKS)) expect([name, stopAtStopToken(g)]).toEqual([name, g]);
  });

  test("each forgery with a wrong body scores a failure", () => {
    const verdicts: Record<string, string> = Object.fromEntries(
      attacks.per_problem.map((r) => [r.task_id, r.samples[0]!.status]),
    );
    const expected = Object.fromEntries(
      Object.keys(ATTACKS).map((n) => [n, n === "sleep_past_timeout" ? "timeout" : "failed"]),
    );
    expect(verdicts).toEqual(expected);
    expect(attacks.pass_at["1"]).toBe(0);
  });
});

describe("the checker's side is out of the candidate's reach", () => {
  test("its memory, environment, fds, signals and ptrace are all refused; an honest body still passes", () => {
    expect(reach.stderr).toContain("others: 2"); // init and the checker were there to try
    expect(reach.stderr).not.toContain("REACHED");
    expect(reach.passed).toBe(true);
  });

  test("values cross exactly: types, big ints, inf / nan / -0.0, sets, dict order, iterators", () => {
    expect(values.stderr).toBe("");
    expect(values.passed).toBe(true);
  });
});
