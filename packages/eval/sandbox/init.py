"""loralab sandbox init: runs as root inside the fresh PID, network, mount, IPC and UTS
namespaces `unshare` made (packages/eval/src/sandbox.ts starts it), confines itself, then
becomes the untrusted program (python3 reading its source from stdin), as PID 1 of the
namespace, so when it exits the kernel kills everything it left behind.

Steps (any failure exits 125 with "loralab-sandbox: <step> failed: ..." on stderr; the
harness then refuses to run anything, it never runs code unconfined):
 1. the whole filesystem read-only, recursively (mount_setattr, Linux >= 5.12)
 2. a private, size-limited tmpfs on /tmp with an empty working directory /tmp/work, a
    fresh /proc for the new PID namespace (nothing outside it is visible)
 3. the completion's sentinel on fd 3 (a pipe: never in argv, env or the source)
 4. rlimits: CPU seconds, address space, processes, file size, open files, no core dumps
 5. drop to the slot's unprivileged uid/gid, no supplementary groups, no_new_privs,
    SIGKILL when the harness-side parent dies
 6. a new user namespace mapping only that uid/gid
 7. every other fd closed, a scrubbed environment, exec python3 -I -
"""
import ctypes, json, os, resource, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def fail(step, err=None):
    sys.stderr.write(f"loralab-sandbox: {step} failed: {err or os.strerror(ctypes.get_errno())}\n")
    sys.stderr.flush()
    os._exit(125)


def check(ret, step):
    if ret != 0:
        fail(step)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = -100, 0x8000, 442
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
CLONE_NEWUSER = 0x10000000

try:
    cfg = json.loads(os.environ["LORALAB_SANDBOX"])
    uid, gid, nonce = int(cfg["uid"]), int(cfg["gid"]), cfg["nonce"].encode()
except Exception as e:  # noqa: BLE001
    fail("reading the harness's settings", repr(e))
if os.getpid() != 1:
    fail("PID namespace", f"init is pid {os.getpid()}, not 1")

# 1. read-only filesystem
attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)), "read-only remount of /")

# 2. private /tmp and a fresh /proc
check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, f"size={int(cfg['tmp_mb'])}m,mode=1777".encode()), "tmpfs on /tmp")
check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mounting /proc")
try:
    os.mkdir("/tmp/work", 0o700)
    os.chown("/tmp/work", uid, gid)
    os.chdir("/tmp/work")
except OSError as e:
    fail("working directory", e)

# 3. sentinel on fd 3
r, w = os.pipe()
os.write(w, nonce)
os.close(w)
if r != 3:
    os.dup2(r, 3)
    os.close(r)
os.set_inheritable(3, True)

# 4. limits (soft = hard: the program cannot raise them back)
try:
    for name, value in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))
except (OSError, ValueError, AttributeError) as e:
    fail("rlimits", e)

# 5. unprivileged
try:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
except OSError as e:
    fail("dropping privileges", e)
if os.getuid() == 0 or os.geteuid() == 0 or os.getgroups():
    fail("dropping privileges", "still root or in groups")
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "parent-death signal")  # cleared by setuid: set again
check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # so /proc/self/*_map are ours to write

# 6. user namespace
check(libc.unshare(CLONE_NEWUSER), "user namespace")
try:
    for f, text in [("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")]:
        with open(f"/proc/self/{f}", "w") as fh:
            fh.write(text)
except OSError as e:
    fail("user namespace maps", e)

# 7. exec the program
os.closerange(4, 1 << 16)
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp/work", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
try:
    os.execve(sys.executable, [sys.executable, "-I", "-"], env)
except OSError as e:
    fail("exec python3", e)
