"""Hostile programs: every one scores 0.0, within a bounded time, and this process survives.

Each program below is asked for `f(x) == x + 1` (or a stdout of "2") and, where an attack
could succeed, answers right only if it did — so a 0.0 shows the attack failed. They run as
one parallel batch (a module fixture); a few need watching from outside and run on their own.
"""

import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import zeroth
from zeroth.rewards import sandbox
from zeroth.rewards.code import code_tests

TIMEOUT = 2.0
BOUND = TIMEOUT + 5.0  # "bounded": a hostile program costs at most this much wall time
CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"
MARK = uuid.uuid4().hex[:10]
OUTSIDE = [Path("/work/main") / f"pwned-{MARK}", Path(zeroth.__file__).parent / f"pwned-{MARK}",
           Path("/root") / f"pwned-{MARK}", Path("/etc") / f"pwned-{MARK}"]
SHARED_TMP = [Path(d) / f"pwned-{MARK}" for d in ("/tmp", "/var/tmp", "/dev/shm")]  # private
RESULT = '{"passed": 99, "failed": 0, "completed": true, "features": {}}'

CALL = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                 "        pass\n",
    "fork_bomb_in_call": "import os\ndef f(x):\n    while True:\n        try:\n"
                         "            os.fork()\n        except OSError:\n            pass\n",
    "busy_loop": "def f(x):\n    while True:\n        pass\n",
    "huge_allocation": "def f(x):\n    block = bytearray(8 << 30)\n    return x + 1\n",
    "sleep_past_deadline": "import time\ndef f(x):\n    time.sleep(60)\n    return x + 1\n",
    "network_dns": "import socket\ndef f(x):\n    socket.getaddrinfo('example.com', 80)\n"
                   "    return x + 1\n",
    "network_connect_out": "import socket\ndef f(x):\n"
                           "    socket.create_connection(('1.1.1.1', 53), timeout=1).close()\n"
                           "    return x + 1\n",
    "sys_exit_at_import": "import sys\nsys.exit(0)\ndef f(x):\n    return x + 1\n",
    "os_exit_at_import": "import os\nos._exit(0)\ndef f(x):\n    return x + 1\n",
    "sys_exit_in_call": "import sys\ndef f(x):\n    sys.exit(0)\n",
    "os_exit_in_call": "import os\ndef f(x):\n    os._exit(0)\n",
    "always_equal": "class E:\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = object.__hash__\ndef f(x):\n    return E()\n",
    "int_subclass_eq": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                       "    __hash__ = int.__hash__\ndef f(x):\n    return I(0)\n",
    "str_subclass_eq": "class S(str):\n    def __eq__(self, other):\n        return True\n"
                       "    __hash__ = str.__hash__\ndef f(x):\n    return S('no')\n",
    "list_subclass_eq": "class L(list):\n    def __eq__(self, other):\n        return True\n"
                        "def f(x):\n    return L()\n",
    "reduce_trick": "import os\nclass R:\n    def __reduce__(self):\n"
                    "        return (int, ('2',))\ndef f(x):\n    return R()\n",
    "redefine_check": "def check(candidate):\n    pass\ndef candidate(x):\n    return x + 1\n"
                      "def f(x):\n    return 0\n",
    "patch_assert_machinery": "import builtins, sys\nbuiltins.AssertionError = type("
                              "'AssertionError', (BaseException,), {})\n"
                              "builtins.bool = lambda *a: True\nbuiltins.isinstance = "
                              "lambda *a: True\nsys.modules['math'] = None\n"
                              "def f(x):\n    return 0\n",
    "fake_result_on_every_fd": f"import os\nfor fd in range(64):\n    try:\n"
                               f"        os.write(fd, b'{RESULT}' * 100)\n    except OSError:\n"
                               f"        pass\nprint({RESULT!r})\ndef f(x):\n    return 0\n",
    "stdout_redirected_to_reply_pipe": f"import os, sys\nos.dup2(4, 1)\n"
                                       f"print({RESULT!r}, flush=True)\n"
                                       "def f(x):\n    print('ok', flush=True)\n    return 0\n",
    "close_all_fds": "import os\nos.closerange(0, 256)\ndef f(x):\n    return x + 1\n",
    "megabytes_of_output": "import sys\ndef f(x):\n    for _ in range(50):\n"
                           "        print('x' * (1 << 20))\n"
                           "        sys.stderr.write('y' * (1 << 20))\n"
                           "    return 0\n",
    "stderr_flood_forever": "import sys\ndef f(x):\n    while True:\n"
                            "        sys.stderr.write('e' * 65536)\n",
    "infinite_recursion": "def f(x):\n    return f(x) + 1\n",
    "infinite_recursion_unlimited": "import sys\nsys.setrecursionlimit(10 ** 8)\n"
                                    "def f(x):\n    return f(x) + 1\n",
    "deeply_nested_result": "def f(x):\n    v = []\n    for _ in range(100000):\n"
                            "        v = [v]\n    return v\n",
    "huge_integer_result": "def f(x):\n    return 1 << (1 << 24)\n",
    "raise_keyboard_interrupt": "def f(x):\n    raise KeyboardInterrupt\n",
    "raise_system_exit_in_call": "def f(x):\n    raise SystemExit(0)\n",
    "raise_base_exception_at_import": "raise BaseException('bye')\ndef f(x):\n    return x + 1\n",
    "generator_exit_with_bad_str": "class X(GeneratorExit):\n    def __str__(self):\n"
                                   "        raise KeyboardInterrupt\ndef f(x):\n    raise X()\n",
    "alarm_and_ignored_signals": "import signal\nfor s in (signal.SIGTERM, signal.SIGALRM, "
                                 "signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):\n"
                                 "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(1)\n"
                                 "def f(x):\n    while True:\n        pass\n",
    "kill_parent": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                   "    return x + 1\n",
    "kill_process_group": "import os, signal\ndef f(x):\n    os.killpg(0, signal.SIGKILL)\n"
                          "    return x + 1\n",
    "kill_everything": "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGKILL)\n"
                       "    return x + 1\n",
    "kill_pytest_by_pid": f"import os, signal\ndef f(x):\n    os.kill({os.getpid()}, 9)\n"
                          f"    os.killpg({os.getpgid(0)}, 9)\n    return x + 1\n",
    "threads_that_outlive": f"import os, threading\ndef spam():\n    while True:\n"
                            f"        for fd in range(8):\n            try:\n"
                            f"                os.write(fd, b'{RESULT}')\n"
                            f"            except OSError:\n                pass\n"
                            f"def f(x):\n    threading.Thread(target=spam).start()\n    return 0\n",
    "atexit_and_del_print_success": f"import atexit\nclass D:\n    def __del__(self):\n"
                                    f"        print({RESULT!r})\nkeep = D()\n"
                                    f"atexit.register(print, {RESULT!r})\ndef f(x):\n"
                                    f"    return 0\n",
    "write_outside_temp_dir": "import os\nOUTSIDE = " + repr([str(t) for t in OUTSIDE]) + "\n"
                              "TMP = " + repr([str(t) for t in SHARED_TMP]) + "\n"
                              "def f(x):\n    done = 0\n    for path in OUTSIDE + TMP:\n"
                              "        try:\n            with open(path, 'w') as out:\n"
                              "                out.write('pwned')\n"
                              "            done += path in OUTSIDE\n"
                              "        except OSError:\n            pass\n"
                              "    return x + 1 if done else None\n",
    "read_parent_proc": "import os\ndef f(x):\n    got = 0\n"
                        "    for name in ('environ', 'cmdline', 'mem', 'fd/1', 'fd/0'):\n"
                        "        for pid in (os.getppid(), 1):\n            try:\n"
                        "                with open(f'/proc/{pid}/{name}', 'rb') as src:\n"
                        "                    got += len(src.read(10)) > 0\n"
                        "            except OSError:\n                pass\n"
                        "    return x + 1 if got else None\n",
    "see_the_repository": "import os\nPATHS = " + repr(["/work/main", str(Path(zeroth.__file__))])
                          + "\ndef f(x):\n    return x + 1 if any(os.path.exists(p) for p in PATHS)"
                          " else None\n",
    "own_user_namespace": "import ctypes\nlibc = ctypes.CDLL(None)\ndef f(x):\n"
                          "    assert libc.unshare(0x10000000) == 0\n    return x + 1\n",
    "become_root": "import os\ndef f(x):\n    os.setuid(0)\n    return x + 1\n",
    "fill_the_disk": "def f(x):\n    with open('big', 'wb') as out:\n        while True:\n"
                     "            out.write(b'0' * (1 << 20))\n",
}

STDIO = {
    "stdio_megabytes_of_output_hiding_answer": "import sys\nsys.stdout.write('2' + ' ' * (50 << 20)"
                                               " + '\\n')\n",
    "stdio_fork_bomb": "import os\nprint(2)\nwhile True:\n    try:\n        os.fork()\n"
                       "    except OSError:\n        pass\n",
    "stdio_never_exits": "print(2, flush=True)\nimport time\ntime.sleep(60)\n",
    "stdio_kill_everything": "import os\nprint(2, flush=True)\nos.kill(-1, 9)\n",
}


def _score(name: str) -> tuple[float, float]:
    start = time.monotonic()
    if name in CALL:
        scores = code_tests([CALL[name]], test=[CHECK], entry_point=["f"], timeout_s=TIMEOUT)
    else:
        cases = [{"input": "1\n", "output": "2\n"}]
        scores = code_tests([STDIO[name]], cases=[cases], timeout_s=TIMEOUT)
    return scores[0], time.monotonic() - start


@pytest.fixture(scope="module")
def outcomes():
    names = list(CALL) + list(STDIO)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(names, pool.map(_score, names)))


@pytest.fixture(scope="module")
def report():
    return sandbox.sandbox_report()


NEEDS = {"network_connect_out": "net_namespace", "network_dns": "net_namespace",
         "write_outside_temp_dir": "separate_uid", "see_the_repository": "private_root",
         "read_parent_proc": "separate_uid", "kill_parent": "separate_uid",
         "kill_everything": "pid_namespace", "own_user_namespace": "syscall_filter",
         "stdio_kill_everything": "pid_namespace"}


def test_there_are_enough_hostile_programs():
    assert len(CALL) + len(STDIO) >= 22


@pytest.mark.parametrize("name", list(CALL) + list(STDIO))
def test_hostile_program_scores_zero_in_bounded_time(name, outcomes, report):
    if name in NEEDS and not report.get(NEEDS[name]):
        pytest.skip(f"this host gives no {NEEDS[name]}")
    score, elapsed = outcomes[name]
    assert score == 0.0
    assert elapsed < BOUND


def test_nothing_was_written_outside_the_temp_dir(outcomes):
    assert "write_outside_temp_dir" in outcomes
    assert not [t for t in OUTSIDE + SHARED_TMP if t.exists()]


def test_the_environment_carries_no_secrets(monkeypatch):
    monkeypatch.setenv("ZEROTH_TEST_SECRET", "s3cret")
    monkeypatch.setattr(sandbox, "_FORK_SERVER", sandbox._ForkServer())  # started with it set
    program = ("import glob, os\ndef f(x):\n"
               "    seen = os.environ.get('ZEROTH_TEST_SECRET') == 's3cret'\n"
               "    for path in glob.glob('/proc/*/environ'):\n        try:\n"
               "            seen = seen or b's3cret' in open(path, 'rb').read()\n"
               "        except OSError:\n            pass\n    return x + 1 if seen else None\n")
    visible = program.replace("if seen else None", "")
    assert code_tests([visible, program], test=[CHECK] * 2, entry_point=["f"] * 2,
                      timeout_s=TIMEOUT) == [1.0, 0.0]
    result = sandbox.run_check(program, CHECK, "f", limits=sandbox.Limits(timeout_s=TIMEOUT),
                               fresh_interpreter=True)
    assert (result.passed, result.failed) == (0, 2)


def test_no_connection_to_a_server_on_the_host(report):
    if not report.get("net_namespace"):
        pytest.skip("this host gives no network namespace")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = (f"import socket\ndef f(x):\n"
                   f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
                   f"    return x + 1\n")
        assert code_tests([program], test=[CHECK], entry_point=["f"], timeout_s=TIMEOUT) == [0.0]


def _processes_named(comm: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == comm:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("wait", ["returns", "times_out"])
def test_escaped_processes_are_dead_after_the_call(wait, report):
    if not report.get("pid_namespace") and not report.get("separate_uid"):
        pytest.skip("this host can kill neither a pid namespace nor a sandbox uid")
    comm = f"zesc{MARK[:6]}{wait[0]}"
    program = ("import ctypes, os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
               "        if os.fork() == 0:\n"
               f"            ctypes.CDLL(None).prctl(15, b'{comm}', 0, 0, 0)\n"
               "            while True:\n                time.sleep(0.01)\n        os._exit(0)\n"
               "    time.sleep(0.8)\n" + ("    return 0\n" if wait == "returns" else
                                          "    time.sleep(60)\n"))
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.extend(_processes_named(comm))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        scores = code_tests([program], test=[CHECK], entry_point=["f"], timeout_s=TIMEOUT)
    finally:
        done.set()
        watcher.join()
    assert scores == [0.0]
    assert seen, "the escapee never ran, so this test proves nothing"
    assert _processes_named(comm) == []


def test_without_namespaces_the_sandbox_uid_still_contains_the_program(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the fallback keeps a separate uid only when zeroth runs as root")
    monkeypatch.setattr(sandbox, "USE_NAMESPACES", False)
    monkeypatch.setattr(sandbox, "_warned", type(sandbox._warned)())
    monkeypatch.setattr(sandbox, "_report", {})
    comm = f"zfb{MARK[:8]}"
    escapee = ("import ctypes, os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
               "        if os.fork() == 0:\n"
               f"            ctypes.CDLL(None).prctl(15, b'{comm}', 0, 0, 0)\n"
               "            while True:\n                time.sleep(0.01)\n        os._exit(0)\n"
               "    time.sleep(0.5)\n    return 0\n")
    names = ["write_outside_temp_dir", "kill_parent", "kill_pytest_by_pid", "busy_loop"]
    programs = ["def f(x):\n    return x + 1\n", escapee] + [CALL[n] for n in names]
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="missing pid_namespace"):
        scores = code_tests(programs, test=[CHECK] * len(programs),
                            entry_point=["f"] * len(programs), timeout_s=TIMEOUT)
    assert scores == [1.0] + [0.0] * (len(programs) - 1)
    assert time.monotonic() - start < 2 * BOUND
    assert _processes_named(comm) == []
    assert not [t for t in OUTSIDE if t.exists()]


def test_this_process_survived_everything(outcomes):
    assert len(outcomes) == len(CALL) + len(STDIO)
    assert os.getpid() > 0 and sys.modules["zeroth"] is zeroth
