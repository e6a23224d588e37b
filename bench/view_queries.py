"""How fast `zeroth view` answers on a big ledger.

    python bench/view_queries.py                  # one million rollouts
    python bench/view_queries.py --rows 200000 --repeats 5

Builds a synthetic run folder whose ledger holds N rollouts (1,000 steps x 125 prompts x 8
samples by default, with reasoning text, rewards, lengths and two task names), starts the view
server on it in this process, and times each API request the page makes (median of the repeats,
first call included in nothing: one warm-up request each). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from zeroth.pipeline.ledger import Ledger

GROUP, PROMPTS = 8, 125


def build(run_dir: Path, rows: int, seed: int = 0) -> None:
    """A run folder with `rows` rollouts and one metrics row per step."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("task: {name: addition}\n")
    ledger = Ledger(run_dir / "ledger.sqlite")
    rng = random.Random(seed)
    steps = max(1, rows // (GROUP * PROMPTS))
    words = ["add", "carry", "wait", "so", "the", "sum", "is", "let me check", "digits", "then"]
    batch: list[tuple] = []
    conn = sqlite3.connect(run_dir / "ledger.sqlite", isolation_level=None)  # one big insert
    conn.execute("BEGIN")
    sql = ("INSERT INTO rollouts (phase, step, prompt_idx, sample_idx, prompt, completion, "
           "n_tokens, rewards, reward, advantage, answer, extra, task, difficulty) "
           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
    for i in range(steps * PROMPTS * GROUP):
        step, rest = divmod(i, PROMPTS * GROUP)
        prompt, sample = divmod(rest, GROUP)
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        thought = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        correct = rng.random() < min(0.95, 0.2 + step / steps)
        answer = a + b if correct else a + b + rng.randint(1, 9)
        batch.append(("rl", step + 1, prompt, sample, f"What is {a}+{b}?",
                      f"<think>{thought}</think><answer>{answer}</answer>", len(thought) // 3,
                      json.dumps({"correct": float(correct), "format": 1.0}),
                      float(correct) + 0.1, rng.uniform(-2, 2), str(a + b), None,
                      "addition" if prompt % 2 else "countdown", str(rng.randint(1, 4))))
        if len(batch) == 50_000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.close()
    for step in range(1, steps + 1):
        ledger.log_metrics("rl", step, {"reward": step / steps, "mean_len": 30.0})
    ledger.close()


QUERIES = {
    "runs": "/api/runs",
    "metrics": "/api/metrics?run=big",
    "rollouts, first page": "/api/rollouts?run=big&phase=rl",
    "rollouts, page at the middle": "/api/rollouts?run=big&phase=rl&offset=500000",
    "rollouts, one step": "/api/rollouts?run=big&phase=rl&step=700",
    "rollouts, reward >= 1": "/api/rollouts?run=big&phase=rl&reward_min=1",
    "rollouts, length 30-31": "/api/rollouts?run=big&phase=rl&len_min=30&len_max=31",
    "rollouts, task": "/api/rollouts?run=big&phase=rl&task=addition",
    "rollouts, by reward desc": "/api/rollouts?run=big&phase=rl&order=-reward",
    "rollouts, text search": "/api/rollouts?run=big&phase=rl&q=999%2B999",
    "group": "/api/group?run=big&phase=rl&step=500&prompt=3",
    "steps": "/api/steps?run=big&phase=rl",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from zeroth.view.server import start_in_thread

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build(Path(tmp) / "runs" / "big", args.rows)
        print(f"built a ledger of {args.rows:,} rollouts in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        server = start_in_thread([Path(tmp) / "runs"])
        out = {}
        try:
            for name, path in QUERIES.items():
                urllib.request.urlopen(server.url.rstrip("/") + path).read()  # warm-up
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    body = urllib.request.urlopen(server.url.rstrip("/") + path).read()
                    times.append(time.perf_counter() - t)
                out[name] = round(statistics.median(times), 3)
                total = json.loads(body).get("total")
                print(f"{name:32s} {out[name]:7.3f} s" + (f"   total {total:,}" if total else ""))
        finally:
            server.shutdown()
            server.server_close()
    print(json.dumps({"rows": args.rows, **out}))


if __name__ == "__main__":
    main()
