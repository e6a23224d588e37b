"""A small pool of worker processes that runs untrusted checks with a hard per-item deadline.

Verifiers parse model output with libraries (sympy, ...) that can run for hours or eat all
memory on a hostile input, and a signal-based timeout only works in a process's main thread and
cannot interrupt a long C call (`10**10**10`). So each check runs in a worker process:

* inside the worker (its main thread) a SIGPROF interval timer interrupts Python-level work
  after `timeout` seconds of CPU time (the item's result is `TIMEOUT`): CPU time, so that a
  busy machine does not time out checks that are merely waiting for a core;
* the parent watches every worker and SIGKILLs one that has not reported within
  `timeout + grace` seconds, scores the item `TIMEOUT`, starts a replacement and hands it the
  rest of the batch;
* a worker that dies on an item without the parent killing it (killed from outside, an OOM
  kill, a segfault) costs the item nothing: it is run again, alone, on a fresh worker; an
  item that also kills that second worker is `DIED` (a verifier failure for the caller, never
  a wrong answer). Death by the CPU fuse below, or found after the item's deadline, is
  `TIMEOUT` as before;
* each worker's address space is capped (`memory_mb`), so a huge number raises MemoryError,
  and an RLIMIT_CPU fuse lets the kernel end an item that has used `timeout + 5` s of CPU, so a
  check stays bounded even if the parent died (a worker also exits when its pipe closes).

Workers are fresh interpreters (`python -c`, never a fork: the parent may hold torch threads, and
multiprocessing's spawn would re-run the caller's main module). They start lazily on first use,
are shared by every thread that calls `map`, are replaced after `max_items` items (bounding
memory growth), and are shut down at interpreter exit. A pool that cannot start raises
RuntimeError — a verifier failure, never a silent wrong answer.
"""

from __future__ import annotations

import atexit
import importlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection, wait

TIMEOUT = "timeout"  # the result of an item that ran out of time
DIED = "died"  # the result of an item whose worker died twice, not killed for its deadline
_TRIES = 2  # workers an item may lose before it is DIED
_START_TIMEOUT_S = 120.0


class _SoftTimeout(BaseException):
    """Raised by SIGPROF inside a worker; a BaseException so `except Exception` cannot eat it."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


def _run_item(fn, item, timeout: float) -> tuple[str, object]:
    try:
        try:
            signal.setitimer(signal.ITIMER_PROF, timeout)
            return "ok", fn(item)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    except _SoftTimeout:
        return TIMEOUT, None
    except Exception as exc:  # noqa: BLE001 — reported to the parent, which raises it
        return "error", f"{type(exc).__name__}: {exc}"


def _limit_resources(memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _cpu_fuse(seconds: float) -> None:
    """Let the kernel kill this worker (SIGXCPU) if the item burns `seconds` more CPU: the item
    stays bounded even when the parent is gone and cannot kill it."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = int(spent + seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard < 0 else min(soft, hard), hard))


def _resolve(name: str):
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)


def _worker_entry() -> None:
    """Worker process: `python -c` runs this with (read fd, write fd, target, init, timeout,
    memory). It imports the target `module:function`, runs `init` if any, reports ready, then
    runs batches until told to stop or the parent goes away (end of file on its pipe)."""
    read_fd, write_fd, target, init, timeout, memory_mb = sys.argv[1:7]
    inbox = Connection(int(read_fd), writable=False)
    outbox = Connection(int(write_fd), readable=False)
    timeout = float(timeout)
    try:
        _limit_resources(int(memory_mb))
        fn = _resolve(target)
        if init:
            _resolve(init)()
        signal.signal(signal.SIGPROF, _on_alarm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    except BaseException:  # noqa: BLE001 — any start-up failure goes back to the parent
        outbox.send(("failed", traceback.format_exc()))
        return
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            batch = inbox.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for index, item in batch:
            _cpu_fuse(timeout + 5)
            status, value = _run_item(fn, item, timeout)
            outbox.send((index, status, value))


class _Worker:
    """One worker process (a fresh interpreter, never a fork) and the parent's ends of its pipes.

    A fresh `python -c` does not re-run the caller's main module (as multiprocessing's spawn
    and forkserver do) and shares no state with a parent that may hold threads."""

    def __init__(self, target: str, init: str, timeout: float, memory_mb: int | None):
        child_in, self_out = os.pipe()
        self_in, child_out = os.pipe()
        code = "from zeroth.rewards.pool import _worker_entry; _worker_entry()"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(child_in), str(child_out), target, init,
                 str(timeout), str(memory_mb or 0)],
                pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        except BaseException:
            for fd in (self_in, self_out):
                os.close(fd)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        self.send = Connection(self_out, readable=False).send
        self.conn = Connection(self_in, writable=False)
        self.items = 0

    def wait_ready(self) -> None:
        if not self.conn.poll(_START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"check worker did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            message = ("failed", f"worker exited with code {self.proc.poll()}")
        if message[0] != "ready":
            self.kill()
            raise RuntimeError(f"check worker failed to start:\n{message[1]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()
        self.send.__self__.close()

    def stop(self) -> None:
        try:
            self.send(None)
            self.proc.wait(1)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _Slot:
    """A place for one worker; None until started, and again after a kill."""

    def __init__(self, worker: _Worker | None = None):
        self.worker = worker


class CheckPool:
    """Run `module:function` on items in worker processes, each item bounded in time.

    `map(items)` returns one result per item, in order: the function's return value, `TIMEOUT`
    for an item that ran out of time, or `DIED` for one that killed two workers in a row (run
    again after the first: a worker killed from outside loses nothing). Callers map `DIED` to
    a verifier failure (None), never to a wrong answer. An exception raised by the function is
    a verifier bug: `map` finishes the batch, then raises RuntimeError.
    `init` (`module:function`, optional) runs once in each new worker before it reports ready;
    `chunk` items go to a worker per message.
    """

    def __init__(self, target: str, workers: int | None = None, timeout: float = 2.0,
                 grace: float = 1.0, init: str | None = None, memory_mb: int | None = 4096,
                 max_items: int = 5000, chunk: int = 32):
        self.target, self.init, self.timeout, self.grace = target, init or "", timeout, grace
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.memory_mb, self.max_items, self.chunk = memory_mb, max_items, chunk
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._slots: list[_Slot] = []
        self._idle: queue.Queue[_Slot] = queue.Queue()
        atexit.register(self.close)

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.target, self.init, self.timeout, self.memory_mb)
        worker.wait_ready()
        return worker

    def _start(self) -> None:
        """Start every worker at once (lazily, on first use; again in a forked child)."""
        with self._lock:
            if self._pid == os.getpid():
                return
            workers = [_Worker(self.target, self.init, self.timeout, self.memory_mb)
                       for _ in range(self.workers)]
            try:
                for worker in workers:
                    worker.wait_ready()
            except BaseException:
                for worker in workers:
                    worker.kill()
                raise
            self._slots = [_Slot(w) for w in workers]
            self._idle = queue.Queue()
            for slot in self._slots:
                self._idle.put(slot)
            self._pid = os.getpid()

    def _ready(self, slot: _Slot) -> _Worker:
        """The slot's worker, started if missing and replaced once it has done `max_items`."""
        if slot.worker is not None and slot.worker.items >= self.max_items:
            slot.worker.stop()
            slot.worker = None
        if slot.worker is None:
            slot.worker = self._new_worker()
        return slot.worker

    def map(self, items: list) -> list:
        """One result per item (or TIMEOUT, or DIED); safe to call from any number of threads."""
        if not items:
            return []
        self._start()
        held = [self._idle.get()]  # wait for one worker, take any others that are free
        while len(held) < self.workers:
            try:
                held.append(self._idle.get_nowait())
            except queue.Empty:
                break
        size = max(1, min(self.chunk, -(-len(items) // (2 * len(held)))))
        indexed = list(enumerate(items))
        chunks = deque(indexed[i:i + size] for i in range(0, len(indexed), size))
        results: list = [TIMEOUT] * len(items)
        busy: dict[_Slot, list] = {}
        try:
            errors = self._drive(held, chunks, results, busy)
        finally:
            for slot in busy:  # interrupted mid-batch: its pipe is out of step, so discard it
                if slot.worker is not None:
                    slot.worker.kill()
                    slot.worker = None
            for slot in held:  # back to the pool (unless closed meanwhile: then stop it)
                if slot in self._slots:
                    self._idle.put(slot)
                elif slot.worker is not None:
                    slot.worker.stop()
        if errors:
            raise RuntimeError(f"{len(errors)} check(s) raised in the worker; first: {errors[0]}")
        return results

    def _drive(self, held: list[_Slot], chunks: deque, results: list, busy: dict) -> list[str]:
        """Hand chunks to the held workers and collect results, killing any overdue worker."""
        free, errors, limit = list(held), [], self.timeout + self.grace
        deaths: dict[int, int] = {}  # item index -> workers it was running when they died
        while chunks or busy:
            while free and chunks:
                slot, batch = free.pop(), chunks.popleft()
                try:
                    self._ready(slot).send(batch)
                except OSError:  # the worker died while idle (killed from outside): replace it
                    slot.worker.kill()
                    slot.worker = None
                    self._ready(slot).send(batch)
                busy[slot] = [batch, 0, time.monotonic()]  # batch, position, last progress
            by_conn = {slot.worker.conn: slot for slot in busy}
            soonest = min(state[2] for state in busy.values()) + limit
            for conn in wait(list(by_conn), timeout=max(0.0, soonest - time.monotonic())):
                slot = by_conn[conn]
                state = busy[slot]
                try:
                    index, status, value = conn.recv()
                except (EOFError, OSError):  # the worker died on this item, not killed by us
                    self._died(slot, busy, chunks, results, deaths)
                    free.append(slot)
                    continue
                if status == "error":
                    errors.append(value)
                results[index] = value if status == "ok" else TIMEOUT
                state[1], state[2] = state[1] + 1, time.monotonic()
                slot.worker.items += 1
                if state[1] == len(state[0]):
                    del busy[slot]
                    free.append(slot)
            now = time.monotonic()
            for slot, state in list(busy.items()):
                if now - state[2] > limit:
                    self._give_up(slot, busy, chunks, results)
                    free.append(slot)
        return errors

    def _died(self, slot: _Slot, busy: dict, chunks: deque, results: list,
              deaths: dict[int, int]) -> None:
        """The slot's worker died on its current item without the parent killing it (killed from
        outside, OOM, segfault). The item runs again, alone, on a fresh worker; losing a second
        worker makes it DIED. A death by the CPU fuse (SIGXCPU), or one noticed only after the
        item's deadline had passed, is the item's own doing: TIMEOUT, as a kill would be."""
        batch, position, since = busy[slot]
        index = batch[position][0]
        slot.worker.kill()  # reaps it, so its exit status is known
        fused = slot.worker.proc.returncode == -signal.SIGXCPU
        if fused or time.monotonic() - since > self.timeout + self.grace:
            verdict = TIMEOUT
        else:
            deaths[index] = deaths.get(index, 0) + 1
            verdict = DIED if deaths[index] >= _TRIES else None
        self._give_up(slot, busy, chunks, results, verdict)

    @staticmethod
    def _give_up(slot: _Slot, busy: dict, chunks: deque, results: list,
                 verdict: str | None = TIMEOUT) -> None:
        """Kill the slot's worker; its current item gets `verdict` (None: it is queued to run
        again, first and alone, so the freed slot's new worker takes it); the rest of its batch
        is requeued."""
        batch, position, _ = busy.pop(slot)
        slot.worker.kill()
        slot.worker = None
        if position + 1 < len(batch):
            chunks.appendleft(batch[position + 1:])
        if verdict is None:
            chunks.appendleft(batch[position:position + 1])
        else:
            results[batch[position][0]] = verdict

    def close(self) -> None:
        """Stop every worker (also run at interpreter exit); the pool restarts on next use."""
        with self._lock:
            if self._pid != os.getpid():
                return
            for slot in self._slots:
                if slot.worker is not None:
                    slot.worker.stop()
                    slot.worker = None
            self._slots, self._pid = [], None
