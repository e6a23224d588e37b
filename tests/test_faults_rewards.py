"""Faults on the reward side cost no verdict: a check worker killed from outside, a non-finite
score, a reward function that never returns, the sandbox's fork server killed.

The pool's workers import this module by name (`test_faults_rewards:die_once`): they are fresh
interpreters with the parent's sys.path, on which pytest puts tests/. So its top level stays
light and its check targets are plain functions.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest

from zeroth.rewards import combine, sandbox
from zeroth.rewards.pool import DIED, TIMEOUT, CheckPool

# ---------------------------------------------------------------- check targets (in workers)


def die_once(item):
    """Twice the value; on an item with a marker path, SIGKILL this worker first, the first time
    only (the marker file remembers it across workers)."""
    marker, value = item
    if marker and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return value * 2


def die_always(item):
    """Twice the value; a negative one (or a pair, as the math pool sends) SIGKILLs the worker
    every time it is tried."""
    if isinstance(item, tuple) or item < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return item * 2


# ---------------------------------------------------------------- the check pool


def test_an_item_whose_worker_is_killed_is_run_again(tmp_path):
    marker = str(tmp_path / "killed")
    pool = CheckPool("test_faults_rewards:die_once", workers=1, timeout=2.0, grace=1.0)
    try:
        assert pool.map([(None, 1), (marker, 2), (None, 3)]) == [2, 4, 6]
        assert os.path.exists(marker)  # the worker really died on it
        assert pool.map([(None, 5)]) == [10]  # the replacement serves the next call
    finally:
        pool.close()


def test_an_item_that_kills_two_workers_is_died_and_the_rest_is_scored():
    pool = CheckPool("test_faults_rewards:die_always", workers=2, timeout=2.0, grace=1.0,
                     chunk=2)
    try:
        assert pool.map([1, -1, 3, 4, -2]) == [2, DIED, 6, 8, DIED]
        assert pool.map([7]) == [14]
    finally:
        pool.close()


def test_a_worker_ended_by_its_cpu_fuse_is_a_timeout_not_a_death():
    # sum() of a huge range runs in C, so SIGPROF cannot stop it; with a long grace the parent
    # does not kill it either, and the RLIMIT_CPU fuse (SIGXCPU) ends the worker: the item's own
    # doing, so TIMEOUT at once (not run again, not DIED).
    pool = CheckPool("builtins:sum", workers=1, timeout=0.2, grace=60.0)
    try:
        start = time.monotonic()
        assert pool.map([range(10**13), range(4)]) == [TIMEOUT, 6]
        assert time.monotonic() - start < 20.0
    finally:
        pool.close()


def test_math_accuracy_loses_nothing_when_its_worker_is_killed_mid_batch():
    from zeroth.rewards import math as math_reward

    math_reward.configure_math_pool(workers=1, timeout=2.0)
    try:
        pool = math_reward.math_pool()
        pool._start()
        worker = pool._slots[0].worker
        send = worker.send

        def send_then_kill(batch):  # the worker has the batch, then is killed (OOM, kill -9)
            send(batch)
            os.kill(worker.proc.pid, signal.SIGKILL)

        send_then_kill.__self__ = send.__self__  # the pipe, which the pool closes with it
        worker.send = send_then_kill
        answers = ["\\frac{6}{2}", "\\frac{7}{2}", "\\sqrt{4}", "2^{3}", "\\frac{10}{5}"]
        completions = [f"<answer>{a}</answer>" for a in answers]
        scores = math_reward.math_accuracy(completions, answer=["3", "3", "2", "8", "2"])
        assert scores == [1.0, 0.0, 1.0, 1.0, 1.0]
        assert worker.proc.returncode == -signal.SIGKILL
    finally:
        math_reward.configure_math_pool()


def test_math_accuracy_scores_a_check_that_keeps_killing_workers_none(monkeypatch):
    from zeroth.rewards import math as math_reward

    class Dying:
        @staticmethod
        def map(pairs):
            return [DIED] * len(pairs)

    monkeypatch.setattr(math_reward, "math_pool", lambda: Dying())
    scores = math_reward.math_accuracy(["<answer>\\frac{6}{2}</answer>", "<answer>3</answer>",
                                        "no answer"], answer=["3", "3", "3"])
    assert scores == [None, 1.0, 0.0]  # only the pool's check is lost, as a verifier failure

    pool = CheckPool("test_faults_rewards:die_always", workers=1, timeout=2.0, grace=1.0)
    monkeypatch.setattr(math_reward, "math_pool", lambda: pool)
    try:  # the real pool: every check kills its worker twice
        assert math_reward.math_accuracy(["<answer>\\frac{6}{2}</answer>"], answer=["3"]) == \
            [None]
    finally:
        pool.close()


# ---------------------------------------------------------------- combine


def test_non_finite_scores_are_recorded_failures_not_totals():
    def wild(completions, **_):
        return [math.nan, math.inf, -math.inf, 0.5]

    def ones(completions, **_):
        return [1.0] * len(completions)

    totals, parts = combine(list("abcd"), [{}] * 4, {"wild": wild, "ones": ones},
                            {"wild": 2.0, "ones": 1.0})
    assert totals == [1.0, 1.0, 1.0, 2.0]
    assert [p["wild"] for p in parts] == [None, None, None, 0.5]
    assert [p.get("wild_error") for p in parts] == [
        "non-finite score nan", "non-finite score inf", "non-finite score -inf", None]
    assert all("ones_error" not in p for p in parts)


def test_a_hanging_reward_times_out_from_a_worker_thread():
    def hang(completions, **_):
        while True:
            pass

    def fine(completions, **_):
        return [1.0] * len(completions)

    out = {}

    def run():
        out["result"] = combine(["a", "b"], [{}, {}], {"hang": hang, "fine": fine},
                                {"hang": 1.0, "fine": 1.0}, timeout_s=0.5)

    start = time.monotonic()
    caller = threading.Thread(target=run)
    caller.start()
    caller.join(10.0)
    assert not caller.is_alive() and time.monotonic() - start < 5.0
    totals, parts = out["result"]
    assert totals == [1.0, 1.0]
    assert all(p["hang"] is None and p["hang_error"] == "timed out after 0.5 s" for p in parts)


def test_a_timed_reward_runs_in_the_callers_thread_where_signals_work():
    """TRL-style rewards may use signal-based timeouts (math-verify's do), which work in the
    main thread only: with a limit, a reward still runs where the caller runs it."""
    def alarmed(completions, **_):
        previous = signal.signal(signal.SIGALRM, lambda *a: None)  # main thread only
        signal.signal(signal.SIGALRM, previous)
        return [threading.current_thread() is threading.main_thread()] * len(completions)

    _, parts = combine(["a"], [{}], {"alarmed": alarmed}, {"alarmed": 1.0}, timeout_s=5.0)
    assert parts[0] == {"alarmed": 1.0}
    start = time.monotonic()  # and a main-thread hang still ends at the limit
    _, parts = combine(["a"], [{}], {"hang": _spin}, {"hang": 1.0}, timeout_s=0.3)
    assert parts[0]["hang_error"] == "timed out after 0.3 s" and time.monotonic() - start < 5


def _spin(completions, **_):
    while True:
        pass


def test_with_a_timeout_results_and_errors_pass_through_as_without():
    def scores(completions, **columns):
        return [float(x) for x in columns["answer"]]

    def broken(completions, **_):
        raise ValueError("bad row")

    fns, weights = {"s": scores, "b": broken}, {"s": 1.0, "b": 1.0}
    rows = [{"answer": "1"}, {"answer": "2"}]
    assert combine(["a", "b"], rows, fns, weights, timeout_s=5.0) == \
        combine(["a", "b"], rows, fns, weights)
    _, parts = combine(["a", "b"], rows, fns, weights, timeout_s=5.0)
    assert parts[0]["b_error"] == "ValueError: bad row"


# ---------------------------------------------------------------- the sandbox's fork server

CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"
RIGHT = "def f(x):\n    return x + 1\n"
WRONG = "def f(x):\n    return x\n"
SLOW_RIGHT = "import time\n\ndef f(x):\n    time.sleep(1.0)\n    return x + 1\n"
SLOW_WRONG = "import time\n\ndef f(x):\n    time.sleep(1.0)\n    return x\n"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and int(fields[1]) == pid:
            found.append(int(entry))
    return found


@pytest.fixture()
def server(monkeypatch):
    """A fork server of this test's own (so killing it disturbs no other test)."""
    own = sandbox._ForkServer()
    monkeypatch.setattr(sandbox, "_FORK_SERVER", own)
    yield own
    own.close()


def _code_tests(programs: list[str]) -> list:
    from zeroth.rewards.code import code_tests

    n = len(programs)
    return code_tests(programs, test=[CHECK] * n, entry_point=["f"] * n, timeout_s=5.0)


def test_code_tests_survive_a_fork_server_killed_between_batches(server):
    assert _code_tests([RIGHT, WRONG]) == [1.0, 0.0]
    first = server._proc
    os.kill(first.pid, signal.SIGKILL)
    assert _code_tests([RIGHT, WRONG]) == [1.0, 0.0]
    assert server._proc is not first


def test_code_tests_survive_a_fork_server_killed_mid_batch(server):
    assert _code_tests([RIGHT]) == [1.0]  # the server runs
    first = server._proc
    killed = threading.Event()

    def kill_when_running():
        deadline = time.monotonic() + 20.0
        while not _children(first.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the harnesses forked so far are in their 1 s programs now
        os.kill(first.pid, signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    try:
        assert _code_tests([SLOW_RIGHT, SLOW_WRONG]) == [1.0, 0.0]
    finally:
        killer.join()
    assert killed.is_set() and server._proc is not first
