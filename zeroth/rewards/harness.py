"""Sandbox harness for zeroth's code rewards: runs one untrusted program, isolated.

A standalone script, standard library only, run by its own interpreter (`python -s -S
harness.py`, or forked from a long-lived `harness.py --zygote FD` server that has already paid
for the imports). Never imported by zeroth. Three processes per run:

  H  reads the job, enters new pid, mount, network, IPC and UTS namespaces (plus a user
     namespace when not root), forks I and waits for it.
  I  pid 1 of the new pid namespace, trusted: builds a private root (a size-limited tmpfs with
     read-only binds of the system and the Python standard library, /dev/null and friends, a
     fresh /proc, /tmp and the work dir; nothing else of the host), forks P, then runs the
     trusted side: the dataset's test code (call mode) or the stdin feeding (stdio mode).
  P  the untrusted program: its own unprivileged uid, no_new_privs, rlimits (CPU, address
     space, processes, file size, open files, no core), only its own pipes as file
     descriptors. It never sees the test code, which I reads only after forking P.

In call mode the test code calls `candidate(...)`, a proxy that sends the arguments to P and
gets the return value back, both encoded with a strict codec for plain data only (exact
None/bool/int/float/complex/str/bytes/list/tuple/dict/set/frozenset, bounded depth and size):
no object of the program ever reaches the trusted process. Each executed `assert` of the test
code (rewritten by zeroth into `_zeroth_record(...)`) is counted. When I exits, the kernel kills
every process left in the namespace, so nothing the program started outlives the run.

Wire format: zeroth writes two frames on stdin (4-byte big-endian length + JSON): the job
(program, mode, limits, uid, work dir), then the payload (test code, or the stdin of each
case); the result is one JSON document on stdout.
"""

import sys

if sys.path and sys.path[0] and not sys.path[0].endswith(".zip"):
    sys.path.pop(0)  # the script's folder holds zeroth modules: never importable from here

import builtins
import ctypes
import fcntl
import gc
import json
import os
import platform
import random
import resource
import select
import signal
import socket
import struct
import time
import traceback

MAX_FRAME = 16 << 20  # bytes of one message from the program
MAX_DEPTH = 200  # nesting of containers in one value
MAX_INT_BITS = 1 << 20
MAX_ITEMS = 1 << 20  # containers' items in one value

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
NAMESPACES = {"mount_namespace": CLONE_NEWNS, "pid_namespace": CLONE_NEWPID,
              "net_namespace": CLONE_NEWNET, "ipc_namespace": CLONE_NEWIPC,
              "uts_namespace": CLONE_NEWUTS}
# seccomp: system calls a program under test never needs, refused with EPERM (audit arch,
# clone, clone3, then the denied ones in DENIED's order). clone3 gets ENOSYS so the C library
# falls back to clone, whose flags a filter can read: no clone may create namespaces.
DENIED = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace",
          "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "bpf",
          "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
          "io_uring_enter", "io_uring_register", "init_module", "finit_module", "delete_module",
          "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fspick", "open_tree",
          "move_mount", "mount_setattr", "swapon", "swapoff", "reboot", "syslog", "acct",
          "quotactl")
SECCOMP = {
    "x86_64": (0xC000003E, 56, 435, (272, 308, 165, 166, 155, 161, 101, 310, 311, 246, 320, 321,
                                     298, 250, 248, 249, 323, 425, 426, 427, 175, 313, 176, 304,
                                     303, 430, 432, 433, 428, 429, 442, 167, 168, 169, 103, 163,
                                     179)),
    "aarch64": (0xC00000B7, 220, 435, (97, 268, 40, 39, 41, 51, 117, 270, 271, 104, 294, 280,
                                       241, 219, 217, 218, 282, 425, 426, 427, 105, 273, 106,
                                       265, 264, 430, 432, 433, 428, 429, 442, 224, 225, 142,
                                       116, 89, 60)),
}
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "random", "urandom")

_LIBC = ctypes.CDLL(None, use_errno=True)


class ProgramError(Exception):
    """The program failed in a way with no builtin exception to stand for it."""


class Unsupported(BaseException):
    """The test code passed the program something that is not plain data (the test's fault)."""


class Deadline(BaseException):
    """The run's time is up (raised into the test code by a timer; asserts do not catch it)."""


# ---------------------------------------------------------------- codec for plain data


def _enc(x, depth, count):
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        if x.bit_length() > MAX_INT_BITS:
            raise ValueError("integer too large")
        return x if -(1 << 62) < x < (1 << 62) else ["i", hex(x)]
    if t is float:
        return ["f", x.hex()]
    if t is complex:
        return ["c", x.real.hex(), x.imag.hex()]
    if t is bytes:
        return ["b", x.hex()]
    count[0] += 1
    if depth >= MAX_DEPTH or count[0] > MAX_ITEMS:
        raise ValueError("value nested too deeply or too large")
    tag = {list: "l", tuple: "t", set: "s", frozenset: "F", dict: "d"}.get(t)
    if tag is None:
        raise TypeError(f"not plain data: {t.__name__}")
    if t is dict:
        items = [v for pair in dict.items(x) for v in pair]
    else:
        items = list(x) if t is not list else x
    count[0] += len(items)
    return [tag] + [_enc(v, depth + 1, count) for v in items]


def encode(value) -> bytes:
    """JSON text for a plain value; TypeError/ValueError for anything else."""
    return json.dumps(_enc(value, 0, [0]), allow_nan=False).encode()


def _dec(v, depth, count):
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return v
    if t is not list or not v or type(v[0]) is not str or depth >= MAX_DEPTH:
        raise ValueError("malformed value")
    tag, rest = v[0], v[1:]
    if tag in ("i", "f", "c", "b") and not all(type(s) is str and len(s) < 1 << 20 for s in rest):
        raise ValueError("malformed scalar")
    scalars = {"i": lambda: int(rest[0], 16), "f": lambda: float.fromhex(rest[0]),
               "c": lambda: complex(float.fromhex(rest[0]), float.fromhex(rest[1])),
               "b": lambda: bytes.fromhex(rest[0])}
    if tag in scalars:
        if len(rest) != (2 if tag == "c" else 1):
            raise ValueError("malformed scalar")
        return scalars[tag]()
    count[0] += 1 + len(rest)
    if count[0] > MAX_ITEMS:
        raise ValueError("value too large")
    items = [_dec(x, depth + 1, count) for x in rest]
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "F":
        return frozenset(items)
    if tag == "d" and len(items) % 2 == 0:
        return dict(zip(items[::2], items[1::2]))
    raise ValueError(f"unknown tag {tag!r}")


def _no_constant(name):
    raise ValueError(f"bare {name} is not allowed")


def decode(data: bytes):
    """The plain value in `data`; ValueError (or TypeError, RecursionError) when malformed.
    Each container or tagged scalar is one `[`: more than MAX_ITEMS of them (counted before
    parsing, strings included) is refused, so that a 16 MiB frame of `["l"]` cannot cost the
    trusted side gigabytes and seconds."""
    if data.count(b"[") > MAX_ITEMS + 8:
        raise ValueError("value too large")
    raw = json.loads(data.decode("utf-8"), parse_float=_no_constant, parse_constant=_no_constant,
                     object_pairs_hook=lambda pairs: _no_constant("object"))
    return _dec(raw, 0, [0])


# ---------------------------------------------------------------- frames on pipes


def _write_all(fd, data, deadline=None):
    """Write everything, waiting at most until `deadline` (monotonic); False on timeout/EOF."""
    view = memoryview(data)
    while view:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([], [fd], [], wait)[1]:
            return False
        try:
            view = view[os.write(fd, view[:1 << 16]):]
        except (BrokenPipeError, BlockingIOError):
            return False
    return True


def _read_exact(fd, n, deadline=None):
    """Exactly n bytes, or None on EOF or timeout."""
    chunks, got = [], 0
    while got < n:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([fd], [], [], wait)[0]:
            return None
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd, deadline=None, limit=MAX_FRAME):
    """One length-prefixed frame; None on EOF/timeout; ValueError when over `limit`."""
    head = _read_exact(fd, 4, deadline)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > limit:
        raise ValueError(f"message of {size} bytes is over the limit")
    return _read_exact(fd, size, deadline)


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# ---------------------------------------------------------------- system calls


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text):
    return None if text is None else os.fsencode(text)


def prctl(option, value, arg=0):
    _LIBC.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    _check(_LIBC.prctl(option, value, arg, 0, 0), f"prctl({option})")


def mount(source, target, fstype=None, flags=0, data=None):
    _LIBC.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    _check(_LIBC.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {target}")


def umount(target):
    _LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    _check(_LIBC.umount2(_b(target), MNT_DETACH), f"umount {target}")


def unshare(flags):
    _LIBC.unshare.argtypes = [ctypes.c_int]
    _check(_LIBC.unshare(flags), "unshare")


def drop_capabilities():
    """Empty the effective, permitted and inheritable capability sets (capset v3)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_LIBC.capset(header, data), "capset")


def _filter_program():
    """The classic-BPF seccomp program: (code, jt, jf, k) per instruction."""
    arch, clone, clone3, denied = SECCOMP[platform.machine()]
    deny = -1  # placeholder: jump to the final "refuse" instruction
    code = [(0x20, 0, 0, 4), (0x15, 1, 0, arch), (0x06, 0, 0, 0x80000000),  # other ABI: kill
            (0x20, 0, 0, 0)]  # the system call number
    if platform.machine() == "x86_64":
        code.append((0x35, deny, 0, 0x40000000))  # x32 numbers
    code += [(0x15, deny, 0, nr) for nr in denied]
    code += [(0x15, 0, 1, clone3), (0x06, 0, 0, 0x50000 | 38),  # ENOSYS
             (0x15, 0, 2, clone), (0x20, 0, 0, 16), (0x45, deny, 0, NAMESPACE_FLAGS),
             (0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x50000 | 1)]  # allow; EPERM
    last = len(code) - 1
    return [(c, last - i - 1 if jt == deny else jt, jf, k) for i, (c, jt, jf, k) in enumerate(code)]


def syscall_filter():
    """Install the seccomp filter on this process (needs no_new_privs or privilege)."""
    if platform.machine() not in SECCOMP:
        raise OSError(f"no system call table for {platform.machine()}")
    program = _filter_program()
    data = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(data, len(data))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    prctl(22, 2, ctypes.addressof(fprog_buffer))  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def probe_syscall_filter() -> bool:
    """Whether this kernel takes the filter: tried in a throwaway child."""
    pid = os.fork()
    if pid == 0:
        try:
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            syscall_filter()
            os._exit(0 if unshare_refused() else 1)
        finally:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def unshare_refused() -> bool:
    _LIBC.unshare.argtypes = [ctypes.c_int]
    return _LIBC.unshare(CLONE_NEWUSER) != 0 and ctypes.get_errno() == 1


# ---------------------------------------------------------------- namespaces and the root


def enter_namespaces(features):
    """unshare into new namespaces (all at once; else one by one, keeping what works)."""
    user, uid, gid = os.geteuid() != 0, os.getuid(), os.getgid()  # (after unshare: 65534)
    wanted = sum(NAMESPACES.values()) | (CLONE_NEWUSER if user else 0)
    try:
        unshare(wanted)
        got = list(NAMESPACES)
    except OSError as exc:
        features["namespace_error"] = str(exc)
        got = []
        if not user:
            for name, flag in NAMESPACES.items():
                try:
                    unshare(flag)
                    got.append(name)
                except OSError:
                    pass
    for name in NAMESPACES:
        features[name] = name in got
    features["user_namespace"] = user and bool(got)
    if features["user_namespace"]:
        for path, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                           ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{path}", "w") as f:
                f.write(text)


def _bind_ro(source, target):
    """A read-only, nosuid, nodev bind of `source` at `target` (flags the source has kept)."""
    mount(source, target, None, MS_BIND)
    have = os.statvfs(source).f_flag
    keep = (have & (MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (MS_RELATIME if have & 4096 else 0)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def _python_dirs():
    """Standard library folders and files on sys.path (this interpreter runs with -S)."""
    return [p for p in sys.path if p and os.path.exists(p)]


def _populate(root):
    """Read-only system and standard library folders, device files, and hidden site-packages."""
    bound = []
    for path in list(SYSTEM_DIRS) + _python_dirs():
        target = root + path
        if os.path.islink(path) and path in SYSTEM_DIRS:  # /bin -> usr/bin and the like
            os.symlink(os.readlink(path), target)
            continue
        real = os.path.realpath(path)
        if any(real == b or real.startswith(b + "/") for b in bound) or not os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "w").close()
        _bind_ro(path, target)
        bound.append(real)
    for path in _python_dirs():
        site = os.path.join(path, "site-packages")
        if os.path.isdir(site) and os.path.isdir(root + site):
            mount("tmpfs", root + site, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    os.makedirs(root + "/dev/shm")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")


def private_root(root, work, owner, features):
    """Make a fresh tmpfs at `root` the whole file system of this process and its children."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,nr_inodes=16384,mode=755")
    _populate(root)
    os.makedirs(root + "/proc")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    try:
        mount("proc", root + "/proc", "proc", flags, "hidepid=2")
        features["proc_hidepid"] = True
    except OSError:
        mount("proc", root + "/proc", "proc", flags)
        features["proc_hidepid"] = False
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        os.makedirs(root + path, exist_ok=True)
        os.chmod(root + path, 0o1777)
    os.makedirs(root + work, exist_ok=True)
    os.chown(root + work, owner, owner)
    os.chmod(root + work, 0o700)
    os.chdir(root)
    try:
        if SYS_PIVOT_ROOT is None:
            raise OSError("pivot_root: unknown system call number")
        _check(_LIBC.syscall(ctypes.c_long(SYS_PIVOT_ROOT), b".", b"."), "pivot_root")
        umount(".")  # the old root, stacked under the new one
    except OSError:
        mount(root, "/", None, MS_MOVE)
        os.chroot(".")
    os.chdir(work)


# ---------------------------------------------------------------- becoming the program


def _adopt_fds(sources):
    """Make `sources` the descriptors 0, 1, 2, ... in order and close every other one."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 256) for fd in sources]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(high), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def become_program(job, sources):
    """In the forked child: keep only `sources` as fds, set limits, drop every privilege."""
    _adopt_fds(sources)
    limits, uid = job["limits"], job["uid"]
    cpu = int(limits["timeout_s"]) + 2
    memory = limits["memory_mb"] << 20
    for which, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                         (resource.RLIMIT_NPROC, limits["processes"]),
                         (resource.RLIMIT_FSIZE, limits["file_mb"] << 20),
                         (resource.RLIMIT_NOFILE, limits["open_files"]),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_MEMLOCK, 0),
                         (resource.RLIMIT_MSGQUEUE, 0)):
        resource.setrlimit(which, (value, value))
    os.setpgid(0, 0)
    if job["drop_uid"]:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif job["drop_caps"]:
        drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if job["syscall_filter"]:
        syscall_filter()
    random.seed(0)
    sys.setrecursionlimit(1000)


def _load(program, name):
    namespace = {"__name__": name, "__builtins__": builtins}
    exec(compile(program, "<program>", "exec"), namespace)  # noqa: S102 — P is the sandbox
    return namespace


def _error_reply(tag, seq, exc):
    try:
        message = str(exc)[:1000]
    except BaseException:  # noqa: BLE001 — a hostile __str__
        message = "<unprintable>"
    return [tag, seq, type(exc).__name__, message]


def _send(fd, message):
    try:
        data = encode(message)
    except BaseException as exc:  # noqa: BLE001 — unencodable result: tell the harness why
        data = encode(_error_reply("err", message[1], exc))
    if len(data) > MAX_FRAME:
        data = encode(["err", message[1], "ValueError", "result too large"])
    _write_all(fd, frame(data))


def serve(program):
    """P in call mode: load the program, then answer calls on fd 3 with replies on fd 4."""
    try:
        namespace = _load(program, "solution")
        names = [k for k, v in list(namespace.items()) if type(k) is str and callable(v)]
        _send(4, ["ready", 0, names[:1000]])
    except BaseException as exc:  # noqa: BLE001 — whatever the program raised while loading
        _send(4, _error_reply("load_error", 0, exc))
        os._exit(1)
    while True:
        seq = -1
        try:
            data = read_frame(3)
            if data is None:
                os._exit(0)
            _, seq, name, args, kwargs = decode(data)
            reply = ["ok", seq, namespace[name](*args, **kwargs)]
        except BaseException as exc:  # noqa: BLE001 — reported to the harness, never raised
            reply = _error_reply("err", seq, exc)
        _send(4, reply)


def run_main(program):
    """P in stdio mode: run the program as __main__ on fds 0/1/2, then exit with its status."""
    text = {"encoding": "utf-8", "closefd": False}
    sys.stdin = open(0, errors="surrogateescape", **text)  # noqa: SIM115 — lives until exit
    sys.stdout = open(1, "w", errors="surrogateescape", **text)  # noqa: SIM115
    sys.stderr = open(2, "w", errors="replace", **text)  # noqa: SIM115
    status = 0
    try:
        _load(program, "__main__")
    except SystemExit as exc:
        status = exc.code if type(exc.code) is int else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 — the program's own failure: its exit status says so
        status = 1
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001
        status = status or 1
    os._exit(status & 255)


def spawn(job, sources, body, *args):
    """Fork P: in the child set it up and run `body`, never returning; the parent gets the pid."""
    pid = os.fork()
    if pid == 0:
        try:
            become_program(job, sources)
        except BaseException:  # noqa: BLE001 — never run the program half-isolated
            os._exit(125)
        try:
            body(*args)
        finally:
            os._exit(1)
    return pid


# ---------------------------------------------------------------- the trusted side


class Killer:
    """Kills the program with everything it started: the whole pid namespace (I is its init),
    else every process of the sandbox uid, else the program's process group."""

    def __init__(self, job, features):
        self.whole_namespace = features.get("pid_namespace") and os.getpid() == 1
        self.uid = job["uid"] if job["drop_uid"] else None

    def __call__(self, pid):
        if self.whole_namespace:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:  # nothing left to kill
                pass
        else:
            for target in (lambda: os.killpg(pid, signal.SIGKILL),
                           lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    target()
                except OSError:
                    pass
            if self.uid is not None:
                _kill_uid(self.uid)
        _reap()


def _kill_uid(uid):
    killer = os.fork()
    if killer == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)  # as that uid: reaches exactly that uid's processes
        finally:
            os._exit(0)


def _reap(limit_s=5.0):
    """Collect dead children (all of the namespace's, when this is its init)."""
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)
        except ChildProcessError:
            return


class Link:
    """The harness's end of the program's call channel, with one deadline for the whole run."""

    def __init__(self, pid, requests, replies, deadline, killer):
        self.pid, self.requests, self.replies = pid, requests, replies
        self.deadline, self.kill = deadline, killer
        self.seq, self.dead, self.timed_out, self.names = 0, None, False, []

    def die(self, reason):
        if self.dead is None:
            self.dead = reason
            self.kill(self.pid)

    def receive(self):
        try:
            data = read_frame(self.replies, self.deadline)
            message = None if data is None else decode(data)
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            self.die(f"malformed message from the program ({type(exc).__name__})")
            return None
        if data is None:
            self.timed_out = time.monotonic() >= self.deadline
            self.die("timed out" if self.timed_out else "the program died")
            return None
        if type(message) is not list or len(message) < 3 or message[1] != self.seq:
            self.die("malformed message from the program")
            return None
        return message

    def start(self):
        message = self.receive()
        if message and message[0] == "ready" and type(message[2]) is list:
            self.names = [n for n in message[2] if type(n) is str]
        elif message and message[0] == "load_error" and len(message) == 4:
            self.die(f"the program failed: {message[2]}: {message[3]}")
        else:
            self.die(self.dead or "malformed message from the program")

    def call(self, name, args, kwargs):
        if self.dead:
            raise ProgramError(self.dead)
        self.seq += 1
        try:
            data = encode(["call", self.seq, name, list(args), dict(kwargs)])  # the test's values
        except (TypeError, ValueError) as exc:
            raise Unsupported(f"an argument to {name} is not plain data: {exc}") from None
        if not _write_all(self.requests, frame(data), self.deadline):
            self.timed_out = time.monotonic() >= self.deadline
            self.die("timed out" if self.timed_out else "the program died")
        message = self.receive()
        if message is None:
            raise ProgramError(self.dead)
        if message[0] == "ok" and len(message) == 3:
            return message[2]
        if message[0] == "err" and len(message) == 4 and type(message[2]) is str:
            raise program_exception(message[2], message[3])
        self.die("malformed message from the program")
        raise ProgramError(self.dead)


def program_exception(name, message):
    """The builtin exception class called `name` (an Exception), else ProgramError. Never
    StopIteration: raised from inside `all(map(candidate, ...))` it would end the iteration
    early, and all() of nothing is True."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and \
            not issubclass(cls, (StopIteration, StopAsyncIteration)):  # would end a map()
        try:
            return cls(message)
        except Exception:  # noqa: BLE001, S110 — a constructor that wants more arguments
            pass
    return ProgramError(f"{name}: {message}")


class Proxy:
    """Stands for one function of the program in the test code."""

    def __init__(self, link, name):
        self._link, self.__name__ = link, name

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<program function {self.__name__}>"


def _on_alarm(signum, frame_):
    raise Deadline()


def run_tests(link, payload, grace):
    """Execute the rewritten test code against proxies; count the asserts."""
    counts = {"passed": 0, "failed": 0}

    def record(ok):
        counts["passed" if ok else "failed"] += 1

    namespace = {"__name__": "__zeroth_test__", "__builtins__": builtins,
                 "_zeroth_record": record}
    link.start()
    for name in payload["free"]:
        if name in link.names:
            namespace[name] = Proxy(link, name)
    random.seed(0)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, link.deadline - time.monotonic()) + grace)
    completed, error = False, None
    try:
        exec(compile(payload["test"], "<test>", "exec"), namespace)  # noqa: S102 — trusted
        if payload.get("call"):
            namespace[payload["call"]](Proxy(link, payload["entry_point"]))
        completed = True
    except Deadline:
        link.timed_out, error = True, "the test code ran out of time"
    except Unsupported as exc:
        counts["unsupported"] = str(exc)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 — the check did not complete
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return dict(counts, completed=completed, timed_out=link.timed_out, error=error,
                program=link.dead)


def call_mode(job, killer):
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)
    pid = spawn(job, [null, null, null, requests_r, replies_w], serve, job["program"])
    for fd in (requests_r, replies_w, null):
        os.close(fd)
    deadline = time.monotonic() + job["limits"]["timeout_s"]
    payload = json.loads(read_frame(0, limit=1 << 30))  # only now: P never held the tests
    os.set_blocking(requests_w, False)
    link = Link(pid, requests_w, replies_r, deadline, killer)
    result = run_tests(link, payload, grace=0.5)
    link.die(link.dead or "finished")
    return result


def _exit_status(pid, watch, ready):
    """The program's exit status once it has exited, else None (never blocks)."""
    if watch is not None and watch not in ready:
        return None
    done, status = os.waitpid(pid, 0 if watch is not None else os.WNOHANG)
    return None if done == 0 else os.waitstatus_to_exitcode(status)


def _drain(fd, output, cap):
    """Append what is left in the pipe (without waiting for writers the program left behind)."""
    os.set_blocking(fd, False)
    try:
        while len(output) <= cap and (chunk := os.read(fd, 1 << 16)):
            output += chunk
    except BlockingIOError:
        pass


def pump(pid, data, stdin, out, cap, deadline):
    """Feed `data` on `stdin`, collect stdout until the program exits, the deadline passes or
    more than `cap` bytes come. Returns (output, exit status or None, state)."""
    watch = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    view, output, status, state, out_open = memoryview(data), bytearray(), None, None, True
    while state is None:
        if not view and stdin is not None:
            os.close(stdin)
            stdin = None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            state = "timeout"
            break
        readers = ([out] if out_open else []) + ([watch] if watch is not None else [])
        wait = remaining if watch is not None else min(remaining, 0.02)
        ready, writable, _ = select.select(readers, [stdin] if stdin is not None else [], [],
                                           wait)
        if writable:
            try:
                view = view[os.write(stdin, view[:1 << 16]):]
            except (BrokenPipeError, BlockingIOError):
                view = view[:0]
        if out in ready:
            chunk = os.read(out, 1 << 16)
            out_open = bool(chunk)
            output += chunk
        status = _exit_status(pid, watch, ready)
        state = "overflow" if len(output) > cap else ("exited" if status is not None else None)
    if state == "exited" and out_open:
        _drain(out, output, cap)
        state = "overflow" if len(output) > cap else state
    for fd in (stdin, watch):
        if fd is not None:
            os.close(fd)
    return bytes(output[:cap]), status, state


def run_case(job, text, cap, killer):
    """One run of the program with `text` on stdin."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)
    pid = spawn(job, [in_r, out_w, null], run_main, job["program"])
    for fd in (in_r, out_w, null):
        os.close(fd)
    os.set_blocking(in_w, False)
    deadline = time.monotonic() + job["limits"]["timeout_s"]
    data = text.encode("utf-8", "surrogateescape")
    output, status, state = pump(pid, data, in_w, out_r, cap, deadline)
    killer(pid)
    os.close(out_r)
    return {"stdout": output.decode("utf-8", "replace"), "status": status,
            "timed_out": state == "timeout", "truncated": state == "overflow"}


def stdio_mode(job, killer):
    payload = json.loads(read_frame(0, limit=1 << 30))
    results = []
    for text, cap in zip(payload["inputs"], payload["caps"]):
        results.append(run_case(job, text, cap, killer))
        if payload.get("stop_on_failure") and results[-1]["status"] != 0:
            break
    return {"cases": results}


# ---------------------------------------------------------------- entry points


def init_process(job, features, result_fd):
    """I: root of the new namespaces; build the private root, run the mode, write the result."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(PR_SET_DUMPABLE, 0)  # no /proc/1/fd or /proc/1/mem for a program of the same uid
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans come to I, to be reaped (without a pid ns too)
    os.umask(0o022)
    work, owner = job["work"], (job["uid"] if job["drop_uid"] else 0)
    features["private_root"] = False
    if features.get("mount_namespace"):
        try:
            private_root(job["root"], work, owner, features)
            features["private_root"] = True
        except OSError as exc:
            features["private_root_error"] = str(exc)
            try:
                umount(job["root"])  # back to the host's view (uid and limits still apply)
            except OSError:
                pass
    if not features["private_root"]:
        if job["drop_uid"]:
            os.chown(work, owner, owner)
        os.chdir(work)
    os.environ.update(HOME=work, TMPDIR=work)
    features.update(separate_uid=job["drop_uid"], no_new_privs=True, rlimits=True)
    killer = Killer(job, features)
    mode = call_mode if job["mode"] == "call" else stdio_mode
    result = mode(job, killer)
    result["features"] = features
    _write_all(result_fd, json.dumps(result).encode())


def _report_failure(result_fd):
    failure = {"harness_error": traceback.format_exc()[-4000:]}
    _write_all(result_fd, json.dumps(failure).encode())


def harness():
    """H: read the job, isolate, fork I and wait for it. stdin/stdout are zeroth's pipes."""
    null = os.open("/dev/null", os.O_RDWR)
    result_fd = os.dup(1)
    os.dup2(null, 1)  # whatever the test code prints never mixes with the result
    try:
        job = json.loads(read_frame(0, limit=1 << 30))
        job["drop_uid"] = os.geteuid() == 0
        job["uid"] = job["uid_base"] + os.getpid()
        features = {"syscall_filter": _syscall_filter_works()}  # (forks: before the new pid ns)
        job["syscall_filter"] = features["syscall_filter"]
        if job["namespaces"]:
            enter_namespaces(features)
        job["drop_caps"] = bool(features.get("user_namespace"))
        pid = os.fork()
    except BaseException:  # noqa: BLE001 — a harness failure: report it, never hide it
        _report_failure(result_fd)
        os._exit(70)
    if pid == 0:
        try:
            init_process(job, features, result_fd)
            code = 0
        except BaseException:  # noqa: BLE001 — a harness failure: report it, never hide it
            _report_failure(result_fd)
            code = 70
        os._exit(code)
    for fd in (0, result_fd):
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 255)


_FILTER_WORKS = []  # probed once per process (the zygote: once for all runs)


def _syscall_filter_works() -> bool:
    if not _FILTER_WORKS:
        _FILTER_WORKS.append(probe_syscall_filter())
    return _FILTER_WORKS[0]


PRELOAD = ("array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime",
           "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools",
           "math", "operator", "queue", "re", "statistics", "string", "typing", "unicodedata")


def _reap_orphans(harnesses):
    """Reap dead children that are not harnesses awaiting release (orphans adopted as the
    subreaper: the pid-1 processes of harnesses zeroth killed at their deadline)."""
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if found is None or found.si_pid in harnesses:
            return
        os.waitpid(found.si_pid, 0)


def zygote(sock_fd):
    """Fork server: each request (b"S" + three fds: stdin, stdout, stderr) forks a harness H in
    its own session and answers its pid; b"R" + pid reaps a finished one. EOF: exit."""
    for name in PRELOAD:  # paid once here, not by every program
        __import__(name)
    _syscall_filter_works()
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    gc.freeze()  # fewer copy-on-write faults in the forks
    sock, harnesses = socket.socket(fileno=sock_fd), set()
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 64, 3)
        if not message:
            os._exit(0)
        if message[:1] == b"S" and len(fds) == 3:
            pid = os.fork()
            if pid == 0:
                sock.close()
                os.setsid()
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                try:
                    _adopt_fds(fds)
                    harness()
                finally:
                    os._exit(70)  # never back into the server loop
            harnesses.add(pid)
            sock.send(pid.to_bytes(8, "big"))
        elif message[:1] == b"R":
            pid = int.from_bytes(message[1:9], "big")
            if pid in harnesses:
                harnesses.discard(pid)
                os.waitpid(pid, 0)
        for fd in fds:
            os.close(fd)
        _reap_orphans(harnesses)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote(int(sys.argv[2]))
    else:  # started by zeroth directly: die with it
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        harness()
