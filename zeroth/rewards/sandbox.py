"""Run untrusted programs in a sandbox and read back a verdict the program cannot forge.

The isolation itself lives in `harness.py`, a standard-library script run by its own
interpreter (see its docstring for the processes and the namespaces). This module is zeroth's
side: it starts harnesses — forked from one long-lived fork server per zeroth process, so a run
costs a fork rather than an interpreter start — with a minimal environment (no inherited
secrets) in a fresh temporary directory (removed afterwards), feeds them the job, reads their
output with a size cap, enforces a hard wall-clock deadline by killing the harness's whole
process group, and warns once per process about any isolation feature the host lacks. A fork
server that dies (killed from outside) is restarted on the next run, and a run it took down
with it is run again once (`_launch`): its death costs no verdict.

Trusted and untrusted code never share a process: the test code runs in the harness, the
program in its own unprivileged process, and the two exchange plain data only. The test code's
`assert` statements are rewritten here so each one executed is counted and the test goes on.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

HARNESS = Path(__file__).with_name("harness.py")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/",
       "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
UID_BASE = 1_000_000  # the program of the harness with host pid p runs as uid UID_BASE + p
GRACE_S = 5.0  # the harness's own time over the program's limit before it is killed
USE_NAMESPACES = True  # False: only uid, rlimits and process group (to test the fallback)
_RECORD, _OK = "_zeroth_record", "_zeroth_ok"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): a verifier failure, never a 0.0."""


@dataclass(frozen=True)
class Limits:
    """Per run: wall time (whole check, or each stdin case), memory (address space, of which
    the interpreter already maps about 25 MiB), processes and threads (of the sandbox's own
    uid), size of each file written, open files, stdout kept per stdin case."""

    timeout_s: float = 10.0
    memory_mb: int = 512
    processes: int = 16
    file_mb: int = 16
    open_files: int = 256
    output_bytes: int = 256 << 10

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "processes", "file_mb", "open_files",
                     "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")


@dataclass
class CheckResult:
    """Asserts passed and failed; whether the test code ran to its end; why not."""

    passed: int = 0
    failed: int = 0
    completed: bool = False
    timed_out: bool = False
    error: str | None = None  # the exception that stopped the test code
    program: str | None = None  # why the program stopped answering (None: it never did)
    unsupported: str | None = None  # the test passed the program something not plain data
    features: dict = field(default_factory=dict)


@dataclass
class CaseResult:
    """One run of a program on one stdin."""

    stdout: str = ""
    status: int | None = None  # exit status; negative: killed by that signal; None: timed out
    timed_out: bool = False
    truncated: bool = False


# ---------------------------------------------------------------- test code preparation


class _CountAsserts(ast.NodeTransformer):
    """`assert test` -> record whether `test` is true (an exception in it counts as false).
    `assert True, "..."` (37 HumanEval checks have one) tests nothing: not counted, or any
    program, even one that never loads, would score above 0."""

    def visit_Assert(self, node: ast.Assert):
        if isinstance(node.test, ast.Constant) and node.test.value:
            return ast.copy_location(ast.Pass(), node)
        body = ast.parse(f"try:\n    {_OK} = bool(0)\nexcept Exception:\n    {_OK} = False\n"
                         f"{_RECORD}({_OK})").body
        body[0].body[0].value.args[0] = node.test
        return [ast.fix_missing_locations(ast.copy_location(n, node)) for n in body]


def free_names(tree: ast.AST) -> list[str]:
    """Names the test code reads but never binds and that are not builtins (e.g. `poly`)."""
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return sorted(loaded - bound - set(dir(builtins)))


def prepare_tests(test_code: str, call: str | None = None) -> tuple[str, list[str]]:
    """(test code with counted asserts, its free names); SyntaxError for broken test code,
    ValueError when it does not define the function `call`."""
    tree = ast.parse(test_code)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    defined = {n.name for n in tree.body if isinstance(n, functions)}
    if call and call not in defined:
        raise ValueError(f"the test code defines no function {call!r} to call")
    names = free_names(tree)
    tree = ast.fix_missing_locations(_CountAsserts().visit(tree))
    return ast.unparse(tree), names


# ---------------------------------------------------------------- starting harnesses


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return len(data).to_bytes(4, "big") + data


class _ForkServer:
    """One `harness.py --zygote` per zeroth process, started on first use (and again after a
    fork of this process or a crash). Harnesses are forked from it, each in its own session."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sock = self._proc = self._log = None
        self._owner = None

    def _start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self._log is not None and self._owner == os.getpid():
            self._log.close()  # a crashed server's
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 — lives as long as the server
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-s", "-S", str(HARNESS), "--zygote", str(theirs.fileno())],
                env=ENV, cwd="/", pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox ({sys.executable}): {exc}") from exc
        finally:
            theirs.close()
        ours.settimeout(30.0)  # a fork takes milliseconds: a silent server is a broken one
        self._sock, self._owner = ours, os.getpid()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the server (it exits when its socket closes)."""
        with self._lock:
            if self._owner == os.getpid() and self._proc is not None:
                self._sock.close()
                try:
                    self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._log.close()
            self._sock = self._proc = self._log = self._owner = None

    def _failure(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace") or "no output"

    def spawn(self, fds: list[int]) -> tuple[int, subprocess.Popen]:
        """Start a harness with these stdin/stdout/stderr: (its pid, also its process group;
        the server that forked it, for `alive`)."""
        with self._lock:
            for _ in range(2):
                if self._owner != os.getpid() or self._proc is None or \
                        self._proc.poll() is not None:
                    self._start()
                try:
                    socket.send_fds(self._sock, [b"S"], fds)
                    reply = self._sock.recv(16)
                    if len(reply) == 8:
                        return int.from_bytes(reply, "big"), self._proc
                except OSError:
                    pass
                self._proc.kill()
                self._proc.wait()
                self._sock.close()
            raise SandboxError(f"the sandbox fork server failed: {self._failure()}")

    def alive(self, server: subprocess.Popen) -> bool:
        """Whether `server` (from `spawn`) is still this process's running fork server. Its
        harnesses die with it (each has a parent-death signal), so a harness that ended without
        a result under a dead server was killed, not failed. The server's socket reaches end of
        file as soon as the kernel closes its files, before its children get that signal, so
        this answers correctly as soon as such a harness's output ends."""
        with self._lock:
            if server is not self._proc or self._owner != os.getpid() or \
                    server.poll() is not None:
                return False
            try:
                if not select.select([self._sock], [], [], 0)[0]:
                    return True  # nothing to read, no end of file: running
                return self._sock.recv(1, socket.MSG_PEEK) != b""
            except OSError:
                return False

    def release(self, pid: int) -> None:
        """Let the fork server reap a harness that is dead (killed by the caller)."""
        with self._lock:
            if self._owner == os.getpid():
                try:
                    self._sock.send(b"R" + pid.to_bytes(8, "big"))
                except OSError:
                    pass


_FORK_SERVER = _ForkServer()


def _exchange(data: bytes, stdin: int, stdout: int, stderr: int, deadline: float,
              out_cap: int) -> tuple[bytes, bytes, bool]:
    """Send `data`; read stdout (capped) to EOF and stderr (its last 64 KiB kept) meanwhile,
    or stop at the deadline. Returns (stdout, stderr, finished). The harness writes its result
    only after it has killed and reaped every process of the run."""
    for fd in (stdin, stdout, stderr):
        os.set_blocking(fd, False)
    out, err, view = bytearray(), bytearray(), memoryview(data)
    with selectors.DefaultSelector() as sel:
        sel.register(stdin, selectors.EVENT_WRITE)
        sel.register(stdout, selectors.EVENT_READ)
        sel.register(stderr, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(out), bytes(err), False
            for key, _ in sel.select(remaining):
                if key.fd == stdin:
                    try:
                        view = view[os.write(stdin, view[:1 << 16]):]
                    except (BrokenPipeError, BlockingIOError):
                        view = view[:0]
                    if not view:
                        sel.unregister(stdin)
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk and key.fd == stdout:
                    return bytes(out), bytes(err + _available(stderr)), True
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == stderr:
                    err = (err + chunk)[-(64 << 10):]
                elif len(out) + len(chunk) > out_cap:
                    raise SandboxError(f"the harness wrote more than {out_cap} bytes")
                else:
                    out += chunk


def _available(fd: int) -> bytes:
    """What a non-blocking pipe holds now."""
    chunks = []
    try:
        while len(chunks) < 16 and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def _start(theirs: list[int], fresh: bool):
    """A harness with these stdin/stdout/stderr: (Popen or None, pid = process group, the fork
    server that forked it or None)."""
    if not fresh:
        return None, *_FORK_SERVER.spawn(theirs)
    try:
        process = subprocess.Popen(
            [sys.executable, "-s", "-S", str(HARNESS)], stdin=theirs[0], stdout=theirs[1],
            stderr=theirs[2], env=ENV, cwd="/", start_new_session=True)
    except OSError as exc:
        raise SandboxError(f"cannot start the sandbox ({sys.executable}): {exc}") from exc
    return process, process.pid, None


def _launch(job: dict, payload: dict, hard_s: float, out_cap: int, fresh: bool) -> dict:
    """Run one harness to completion or to the hard deadline; its result (or a timeout).

    A harness that ends without a result because its fork server died under it (killed from
    outside, an OOM kill: the server's harnesses die with it) is run once more, on a new
    server, so that the server's death costs no verdict; a second such loss raises
    SandboxError (a verifier failure, never a 0.0)."""
    out, err, finished, server = _run_harness(job, payload, hard_s, out_cap, fresh)
    try:
        return _parse(out, err, finished)
    except SandboxError:
        if server is None or _FORK_SERVER.alive(server):
            raise
    return _parse(*_run_harness(job, payload, hard_s, out_cap, fresh)[:3])


def _run_harness(job: dict, payload: dict, hard_s: float, out_cap: int, fresh: bool):
    """Start a harness in a fresh run directory, feed it, read it until it ends or the hard
    deadline passes, kill it: (stdout, stderr, finished, the fork server or None)."""
    base = tempfile.mkdtemp(prefix="zeroth-sbx-")
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
    open_fds = {in_r, in_w, out_r, out_w, err_r, err_w}
    process, pid, server = None, None, None
    try:
        os.chmod(base, 0o711)
        os.mkdir(os.path.join(base, "w"))
        job = dict(job, root=base, work=os.path.join(base, "w"), uid_base=UID_BASE,
                   namespaces=USE_NAMESPACES)
        process, pid, server = _start([in_r, out_w, err_w], fresh)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
            open_fds.discard(fd)
        data = _frame(job) + _frame(payload)
        out, err, finished = _exchange(data, in_w, out_r, err_r, time.monotonic() + hard_s,
                                       out_cap)
    finally:
        _end(process, pid)
        for fd in open_fds:
            os.close(fd)
        shutil.rmtree(base, ignore_errors=True)
    return out, err, finished, server


def _end(process, pid: int | None) -> None:
    """Kill the harness's process group (and so its pid namespace), then reap it."""
    if pid is None:
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if process is not None:
        process.wait()
    else:
        _FORK_SERVER.release(pid)


def _parse(out: bytes, err: bytes, finished: bool) -> dict:
    if not finished:
        return {"hard_timeout": True}
    try:
        result = json.loads(out)
    except ValueError:
        tail = err[-2000:].decode("utf-8", "replace")
        raise SandboxError(f"the sandbox harness exited without a result: {tail}") from None
    if "harness_error" in result:
        raise SandboxError(f"the sandbox harness failed: {result['harness_error']}")
    _note_features(result.get("features", {}))
    return result


# ---------------------------------------------------------------- isolation report


_EXPECTED = {
    "pid_namespace": "processes the program starts may outlive the run",
    "mount_namespace": "no private file system view",
    "private_root": "the program sees the host's files and may write where permissions allow",
    "net_namespace": "the program can reach the network",
    "separate_uid": "the program runs as this user: it can signal this user's processes and "
                    "its process limit counts them",
    "no_new_privs": "setuid programs could raise the program's privileges",
    "syscall_filter": "the program may create user namespaces and use rarely needed kernel "
                      "interfaces (more kernel attack surface)",
    "rlimits": "no CPU, memory, process or file-size limits",
}
_warned = threading.Event()
_report: dict = {}
_report_lock = threading.Lock()


def _note_features(features: dict) -> None:
    """Remember what the host gives; warn once per process, naming each isolation feature it
    does not give and what that means, and what still holds."""
    if not features or _warned.is_set():
        return
    with _report_lock:
        _report.update(features)
        missing = [k for k in _EXPECTED if not features.get(k)]
        if not missing or _warned.is_set():
            return
        _warned.set()
    active = [k for k in _EXPECTED if features.get(k)] + ["wall-time kill", "minimal env",
                                                          "temporary work dir", "output cap"]
    reasons = "; ".join(f"{k}: {_EXPECTED[k]}" for k in missing)
    errors = "; ".join(f"{k}: {v}" for k, v in features.items() if k.endswith("_error"))
    warnings.warn(f"zeroth code sandbox: isolation incomplete on this host — missing {reasons}. "
                  f"Still active: {', '.join(active)}." + (f" ({errors})" if errors else ""),
                  RuntimeWarning, stacklevel=2)


def sandbox_report() -> dict:
    """Which isolation features are active on this host ({feature: bool, ...}); runs a
    trivial program once per process to find out."""
    if not _report:
        run_check("def f():\n    return 1\n", "assert f() == 1", limits=Limits(timeout_s=5))
    return {k: v for k, v in _report.items() if not k.endswith("_error")}


# ---------------------------------------------------------------- public runners


def _job(mode: str, program: str, limits: Limits) -> dict:
    return {"mode": mode, "program": program,
            "limits": {"timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb,
                       "processes": limits.processes, "file_mb": limits.file_mb,
                       "open_files": limits.open_files}}


def run_check(program: str, test_code: str, entry_point: str | None = None,
              call: str | None = "check", limits: Limits = Limits(),
              fresh_interpreter: bool = False) -> CheckResult:
    """Run `test_code` (trusted) against `program` (untrusted) and count its asserts.

    With `entry_point`, `call(candidate)` runs after the test code (HumanEval's `check`), where
    candidate stands for the program's function `entry_point`. Names the test code uses
    without defining (MBPP's asserts, HumanEval's `poly`) stand for the program's functions of
    those names. `fresh_interpreter` starts a new interpreter instead of forking the server.
    """
    call = call if entry_point else None
    source, names = prepare_tests(test_code, call)
    payload = {"test": source, "free": names, "entry_point": entry_point, "call": call}
    result = _launch(_job("call", program, limits), payload, limits.timeout_s + GRACE_S,
                     1 << 20, fresh_interpreter)
    if result.get("hard_timeout"):
        return CheckResult(timed_out=True, error="the sandbox was killed at its deadline")
    keys = CheckResult.__dataclass_fields__
    return CheckResult(**{k: v for k, v in result.items() if k in keys})


def run_cases(program: str, inputs: list[str], limits: Limits = Limits(),
              caps: list[int] | None = None, stop_on_failure: bool = False,
              fresh_interpreter: bool = False) -> list[CaseResult]:
    """Run `program` once per stdin in `inputs` (each with `limits.timeout_s`), keeping up to
    `caps[i]` bytes of stdout (more fails the case). With `stop_on_failure`, stop after the
    first run that crashes or times out. A case never run is returned as timed out."""
    caps = caps or [limits.output_bytes] * len(inputs)
    payload = {"inputs": list(inputs), "caps": caps, "stop_on_failure": stop_on_failure}
    hard = len(inputs) * (limits.timeout_s + 0.5) + GRACE_S
    result = _launch(_job("stdio", program, limits), payload, hard, 6 * sum(caps) + (1 << 20),
                     fresh_interpreter)
    runs = [CaseResult(**case) for case in result.get("cases", [])]
    return runs + [CaseResult(timed_out=True) for _ in range(len(inputs) - len(runs))]


def run_program(program: str, stdin: str = "", limits: Limits = Limits(),
                fresh_interpreter: bool = False) -> CaseResult:
    """Run `program` once with `stdin`: its stdout, exit status, timeout."""
    return run_cases(program, [stdin], limits, fresh_interpreter=fresh_interpreter)[0]
