"""loralab sandbox init: runs as root, PID 1 of the fresh PID, network, mount, IPC and UTS
namespaces `unshare` made (packages/eval/src/sandbox.ts starts it). It never runs untrusted
code itself: it confines the namespace, starts the candidate and the checker as two
unprivileged processes, waits for them, and writes the verdict on fd 3, which nothing else in
the namespace holds. When it exits, the kernel kills everything left in the namespace.

  init (root in these namespaces, holds fd 3: the verdict)
   |- candidate: uid A in a user namespace of its own, runs candidate.py + the program
   '- checker:   uid B, a fork of init (no exec), runs the test against a proxy of the program

The verdict is "passed" only if the checker exits 0, which it does only if the program's top
level ended and (for a check) check(candidate) returned in the checker's own interpreter.
The candidate cannot reach the checker (another uid: no signals, ptrace or /proc/<pid>/mem),
init or fd 3; all it can do to the checker is answer calls with values (wire.py).

Steps (a failure exits 125 with "loralab-sandbox: <step> failed: ..." on stderr and in the
verdict; the harness then refuses to run anything, it never runs code unconfined):
 1. the whole filesystem read-only (mount_setattr, Linux >= 5.12); a private tmpfs on /tmp
    bounded in bytes and inodes, holding the empty working directory /tmp/work; empty
    read-only tmpfs over /run, /var/tmp and /dev/shm (where host sockets live); a fresh /proc
 2. each process: rlimits (CPU, address space, processes, file size, open files, no core),
    its own uid/gid with no groups, a fresh session keyring, no_new_privs, SIGKILL when init
    dies, a seccomp filter (no AF_UNIX sockets, no keyrings, no io_uring, native syscalls only)
 3. the candidate also: its own session, a user namespace mapping only its uid, every other fd
    closed, a scrubbed environment, exec python3 -I -c <wire.py + candidate.py>; then it is
    moved into the execution's memory cgroup (if the harness made one) before it gets its
    program, so the bound covers everything the program does
Every execution starts three interpreters' worth of work, so this file and wire.py import only
modules that load fast, and the three sources are compiled once into a root-only cache.
"""
import ctypes, fcntl, os, resource, select, sys, time

sys.dont_write_bytecode = True  # this runs from the repository: leave no __pycache__ there
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {}  # read_sources(): name -> code
VERDICT_FD = 3
ERR_FD = 5  # where each child keeps its setup-error pipe
CANDIDATE_EXIT_GRACE_S = 1.0  # after the checker's verdict: time to flush output and exit
CHECKER_GRACE_S = 0.5  # after the candidate died: time for the checker to see it
SIGKILL = 9

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class SetupError(Exception):
    """Confinement could not be set up: nothing runs."""


def failed(step, err=None):
    return SetupError(f"{step} failed: {err or os.strerror(ctypes.get_errno())}")


def check(ret, step):
    if ret != 0:
        raise failed(step)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR, SYS_OPEN_TREE, OPEN_TREE_CLONE = -100, 0x8000, 442, 428, 1
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
KEYCTL_JOIN_SESSION_KEYRING = 1
AF_UNIX, EPERM, ENOSYS = 1, 1, 38

# (audit arch, syscall numbers) of the native ABI; anything else (x32, i386) kills the process
SYSCALLS = {
    "x86_64": (0xC000003E, {"socket": 41, "socketpair": 53, "add_key": 248, "request_key": 249, "keyctl": 250, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}),
    "aarch64": (0xC00000B7, {"socket": 198, "socketpair": 199, "add_key": 217, "request_key": 218, "keyctl": 219, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}),
}
MACHINE = os.uname().machine


def seccomp_program():
    """BPF: native arch only; keyrings and io_uring (which could open sockets past this
    filter) refused; socket()/socketpair() refused for AF_UNIX, which is how a program would
    reach a host's pathname sockets (abstract ones are per network namespace: none here)."""
    if MACHINE not in SYSCALLS:
        raise failed("seccomp filter", f"no syscall table for {MACHINE}")
    arch, nr = SYSCALLS[MACHINE]
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    KILL, ERRNO, ALLOW = 0x80000000, 0x00050000 | EPERM, 0x7FFF0000
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    if MACHINE == "x86_64":
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, KILL)]  # the x32 ABI's numbers
    for name in ("add_key", "request_key", "keyctl", "io_uring_setup", "io_uring_enter", "io_uring_register"):
        prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, ERRNO)]
    prog += [
        (JEQ, 1, 0, nr["socket"]),
        (JEQ, 0, 3, nr["socketpair"]),
        (LD, 0, 0, 16),  # args[0] (the domain), low 32 bits
        (JEQ, 0, 1, AF_UNIX),
        (RET, 0, 0, ERRNO),
        (RET, 0, 0, ALLOW),
    ]
    return (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])


def confine(uid, limits, dumpable):
    """Step 2, in a freshly forked child, still root."""
    try:
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))  # soft = hard
    except (OSError, ValueError, AttributeError) as e:
        raise failed("rlimits", e) from None
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise failed("dropping privileges", e) from None
    if os.getuid() == 0 or os.geteuid() == 0 or os.getgroups():
        raise failed("dropping privileges", "still root or in groups")
    # a session keyring of its own: the harness's (and whatever an earlier run added) is out of reach
    if libc.syscall(SYSCALLS[MACHINE][1]["keyctl"], KEYCTL_JOIN_SESSION_KEYRING, None) < 0 and ctypes.get_errno() not in (EPERM, ENOSYS):
        raise failed("fresh session keyring")  # EPERM / ENOSYS: no keyrings here at all
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "parent-death signal")  # cleared by setuid: set again
    check(libc.prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0), "dumpable")


def install_seccomp(filt):
    prog = SockFprog(len(filt), ctypes.cast(filt, ctypes.c_void_p))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp filter")


def keep_fds(wanted):
    """Leave the process exactly the file descriptors `wanted` ({target: current})."""
    high = {t: fcntl.fcntl(c, fcntl.F_DUPFD, 100) for t, c in wanted.items()}  # above every target
    for t, c in high.items():
        os.dup2(c, t)
    for fd in range(max(wanted) + 1):
        if fd not in wanted:
            try:
                os.close(fd)
            except OSError:
                pass
    os.closerange(max(wanted) + 1, 1 << 16)


def fork_confined(fds, body):
    """Fork a child left with exactly `fds` ({target: current}) plus ERR_FD, and run body()
    there; it never returns here. A failure is written on ERR_FD, a pipe that a successful
    exec (O_CLOEXEC) or body closes unwritten, and exits 125."""
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(err_w)
        return pid, err_r
    err = err_w
    try:
        keep_fds({**fds, ERR_FD: err_w})
        err = ERR_FD
        os.set_inheritable(ERR_FD, False)
        body()
    except BaseException as e:  # noqa: BLE001 - whatever broke, nothing unconfined runs
        msg = str(e) if isinstance(e, SetupError) else f"starting a process failed: {e!r}"
        try:
            os.write(err, msg.encode()[:4000])
        except OSError:
            pass
    os._exit(125)


def candidate_body(cfg, filt):
    def body():
        os.setsid()  # its kill(0, ...) and SIGCONT reach only its own processes
        uid = cfg["uid_candidate"]
        os.chdir("/tmp/work")
        confine(uid, cfg["candidate"], 1)  # dumpable: so /proc/self/*_map are ours to write
        check(libc.unshare(CLONE_NEWUSER), "user namespace")
        try:
            for f, text in [("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{uid} {uid} 1")]:
                with open(f"/proc/self/{f}", "w") as fh:
                    fh.write(text)
        except OSError as e:
            raise failed("user namespace maps", e) from None
        install_seccomp(filt)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp/work", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            os.execve(sys.executable, [sys.executable, "-I", "-c", candidate_stub()], env)
        except OSError as e:
            raise failed("exec python3", e) from None

    return body


def checker_body(cfg, job, filt):
    def body():
        load("wire")
        checker = load("checker")
        os.chdir("/")
        confine(cfg["uid_checker"], cfg["checker"], 0)  # not dumpable: no one may trace it
        install_seccomp(filt)
        os.close(ERR_FD)  # confined
        ok = False
        try:
            ok = checker.run(job, 3, 4)
        finally:  # a checker that breaks fails the program, it never passes it
            os._exit(0 if ok else 1)

    return body


CODE_CACHE = "/run/loralab-sandbox"  # the harness's root-only lock directory, hidden in here by /run's tmpfs


def read_sources():
    """The code of wire.py, candidate.py and checker.py: read before /tmp and /run are covered
    (the repository may live there) and as root (nothing need be readable by the sandbox's
    uids); compiled once per version of the files into a root-only cache (compiling them
    costs every execution ~4 ms of CPU)."""
    import marshal

    files = {name: os.path.join(HERE, f"{name}.py") for name in ("wire", "candidate", "checker")}
    key = "-".join(f"{st.st_ino:x}.{st.st_mtime_ns:x}.{st.st_size:x}" for st in map(os.stat, files.values()))
    path = os.path.join(CODE_CACHE, f"code-{sys.implementation.cache_tag}-{key}.marshal")
    try:
        st = os.stat(CODE_CACHE)
        cacheable = st.st_uid == 0 and st.st_mode & 0o077 == 0
    except OSError:
        cacheable = False
    if cacheable:
        try:
            with open(path, "rb") as f:
                return marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            pass
    codes = {}
    for name, file in files.items():
        with open(file) as f:
            codes[name] = compile(f.read(), file, "exec")
    if cacheable:
        tmp = f"{path}.{os.urandom(6).hex()}"
        try:
            with open(tmp, "wb") as f:
                marshal.dump(codes, f)
            os.replace(tmp, path)
        except OSError:
            pass
    return codes


def load(name):
    """A module from the code read_sources() kept."""
    mod = type(sys)(name)
    exec(SOURCES[name], mod.__dict__)
    sys.modules[name] = mod
    return mod


def candidate_stub():
    """The candidate's -c: candidate.py, with wire.py loaded as the module `wire`."""
    import marshal

    code = marshal.dumps((SOURCES["wire"], SOURCES["candidate"])).hex()
    return (
        "import marshal, sys\n"
        f"_wire, _candidate = marshal.loads(bytes.fromhex('{code}'))\n"
        "sys.modules['wire'] = wire = type(sys)('wire')\n"
        "exec(_wire, wire.__dict__)\n"
        "del marshal, sys, wire, _wire\n"
        "exec(_candidate)\n"
    )


def read_all(fd):
    out = b""
    while chunk := os.read(fd, 4096):
        out += chunk
    os.close(fd)
    return out.decode(errors="replace")


def settings():
    """LORALAB_SANDBOX: space-separated name=int (candidate.RLIMIT_* / checker.RLIMIT_* are
    limits), and cgroup=<hex of a path>: the memory cgroup the candidate is to run in."""
    cfg = {"candidate": {}, "checker": {}, "cgroup": None}
    for item in os.environ["LORALAB_SANDBOX"].split():
        name, value = item.split("=")
        who, _, limit = name.partition(".")
        if name == "cgroup":
            cfg[name] = bytes.fromhex(value)
        elif limit:
            cfg[who][limit] = int(value)
        else:
            cfg[name] = int(value)
    return cfg


def read_job():
    """stdin: a line of byte lengths, then the texts: module [prelude test entry_point]."""
    data = sys.stdin.buffer.read()
    head, _, rest = data.partition(b"\n")
    texts, at = [], 0
    for n in map(int, head.split()):
        texts.append(rest[at : at + n].decode())
        at += n
    if len(texts) == 1:
        return {"module": texts[0], "check": None}
    module, prelude, test, entry_point = texts
    return {"module": module, "check": {"prelude": prelude, "test": test, "entry_point": entry_point}}


def setup():
    if os.getpid() != 1:
        raise failed("PID namespace", f"init is pid {os.getpid()}, not 1")
    try:
        os.fstat(VERDICT_FD)
    except OSError:
        raise failed("verdict channel", "fd 3 is not open") from None
    os.set_inheritable(VERDICT_FD, False)
    try:
        cfg, job = settings(), read_job()
    except (KeyError, ValueError) as e:
        raise failed("reading the harness's settings", repr(e)) from None
    global SOURCES
    try:
        SOURCES = read_sources()
    except OSError as e:
        raise failed("reading the sandbox's sources", e) from None
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # the memory cgroup, as a detached copy of its mount: the read-only remount leaves it
    # writable, for init alone (see attach)
    if cfg["cgroup"] is not None:
        cfg["cgroup_tree"] = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, cfg["cgroup"], OPEN_TREE_CLONE | os.O_CLOEXEC)
        if cfg["cgroup_tree"] < 0:
            raise failed("opening the memory cgroup")

    # 1. filesystem
    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)), "read-only remount of /")
    tmp = f"size={cfg['tmp_mb']}m,nr_inodes={cfg['tmp_inodes']},mode=1777".encode()
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, tmp), "tmpfs on /tmp")
    for d in ("/run", "/var/tmp", "/dev/shm"):
        if os.path.isdir(d) and not os.path.islink(d):
            check(libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,nr_inodes=8,mode=755"), f"empty tmpfs on {d}")
    check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mounting /proc")
    try:
        os.mkdir("/tmp/work", 0o700)
        os.chown("/tmp/work", cfg["uid_candidate"], cfg["uid_candidate"])
    except OSError as e:
        raise failed("working directory", e) from None
    return cfg, job


def attach(cfg, pid):
    """Move the candidate into the execution's memory cgroup. It is started first and waits for
    its program on stdin, so this write (a cgroup migration waits out an RCU grace period,
    ~15 ms) overlaps its interpreter's start-up, and nothing of the program runs outside."""
    if cfg["cgroup"] is None:
        return
    try:
        fd = os.open("cgroup.procs", os.O_WRONLY, dir_fd=cfg["cgroup_tree"])
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise failed("joining the memory cgroup", e) from None


def start(cfg, job):
    """The candidate (first: its start-up is the longer) and the checker, confined and
    connected; their pids."""
    filt = seccomp_program()
    source = job["module"].encode()
    source_r, source_w = os.pipe()
    calls_r, calls_w = os.pipe()
    answers_r, answers_w = os.pipe()
    candidate, c_err = fork_confined({0: source_r, 1: 1, 2: 2, 3: calls_r, 4: answers_w}, candidate_body(cfg, filt))
    for fd in (source_r, calls_r, answers_w):
        os.close(fd)
    checker_pid, k_err = fork_confined({0: 0, 1: 1, 2: 2, 3: calls_w, 4: answers_r}, checker_body(cfg, job, filt))
    for fd in (calls_w, answers_r):
        os.close(fd)
    try:
        attach(cfg, candidate)
    except SetupError as e:
        os.close(source_w)
        raise SetupError(read_all(c_err) or str(e)) from None  # a candidate that failed to start says why first
    try:
        if len(source) > 60000:
            fcntl.fcntl(source_w, fcntl.F_SETPIPE_SZ, len(source))  # root may exceed pipe-max-size
        view = memoryview(source)
        while view:
            view = view[os.write(source_w, view) :]
    except BrokenPipeError:
        pass  # it died before reading its program: its setup error or exit status says why
    except OSError as e:
        raise failed("handing over the program", e) from None
    os.close(source_w)
    for err in (read_all(c_err), read_all(k_err)):
        if err:
            raise SetupError(err)
    return candidate, checker_pid


def wait(candidate, checker_pid):
    """Reap every child (orphans come to init) until the checker's verdict and the candidate's
    exit are known; a candidate slow to exit after the verdict, or a checker still waiting on a
    dead candidate (a grandchild may hold its channel), is killed after a grace."""
    poll, pidfds = select.poll(), {}
    for pid in (candidate, checker_pid):
        pidfds[pid] = os.pidfd_open(pid)
        poll.register(pidfds[pid], select.POLLIN)
    status, since = {}, {}
    while True:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid in pidfds:
                status[pid] = st
                poll.unregister(pidfds[pid])  # else it stays readable and this loop spins
        if candidate in status and checker_pid in status:
            return status
        now = time.monotonic()
        for gone, other, grace in ((checker_pid, candidate, CANDIDATE_EXIT_GRACE_S), (candidate, checker_pid, CHECKER_GRACE_S)):
            if gone in status and other not in status and now - since.setdefault(other, now) > grace:
                try:
                    os.kill(other, SIGKILL)
                except ProcessLookupError:
                    pass
        poll.poll(50)  # a pidfd is readable once its process has exited


def report(passed, code, sig, error, exit_code):
    """The verdict line on fd 3 (hand-made JSON: json is not imported here)."""
    n = lambda v: "null" if v is None else str(int(v))  # noqa: E731
    printable = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "?" for ch in error or "")
    err = "null" if error is None else f'"{printable}"'
    line = f'{{"passed": {"true" if passed else "false"}, "exit": {n(code)}, "signal": {n(sig)}, "error": {err}}}\n'
    try:
        os.write(VERDICT_FD, line.encode())
    except OSError:
        pass
    if error:
        sys.stderr.write(f"loralab-sandbox: {error}\n")
        sys.stderr.flush()
    os._exit(exit_code)


def main():
    try:
        cfg, job = setup()
        candidate, checker_pid = start(cfg, job)
    except SetupError as e:
        report(False, None, None, str(e), 125)
    except Exception as e:  # noqa: BLE001
        report(False, None, None, f"setup failed: {e!r}", 125)
    status = wait(candidate, checker_pid)
    c, k = status[candidate], status[checker_pid]
    passed = os.WIFEXITED(k) and os.WEXITSTATUS(k) == 0
    code = os.WEXITSTATUS(c) if os.WIFEXITED(c) else None
    sig = os.WTERMSIG(c) if os.WIFSIGNALED(c) else None
    report(passed, code, sig, None, code if code is not None else 128 + (sig or SIGKILL))


if __name__ == "__main__":
    main()
