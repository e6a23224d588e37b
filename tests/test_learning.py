"""RL still learns: the `quick` recipe (pre-training on imperfect demonstrations, then GRPO) must
lift held-out pass@1 well past where imitation left it. A change that breaks learning — in the
sampler, the rewards, the advantages, the loss or the update — fails here, not in a user's run.
"""

from __future__ import annotations

import json
import sqlite3

from zeroth.cli import main


def test_quick_recipe_learns(tmp_path, capsys):
    assert main(["run", "quick", f"run.out_dir={tmp_path}", "run.name=q", "--quiet"]) == 0
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    base, final = summary["base_pass1"], summary["final_pass1"]
    assert final >= base + 0.20, (base, final)  # the recipe's promise: up 20 points or more
    assert final >= summary["demo_accuracy"] + 0.10  # past the demonstrations it imitated
    assert summary["final_greedy"] >= summary["base_greedy"]
    assert summary["final_think_rate"] > summary["base_think_rate"]  # it learned to reason
    db = sqlite3.connect(tmp_path / "q" / "ledger.sqlite")
    curve = [json.loads(d).get("heldout_pass1") for (d,) in
             db.execute("select data from metrics where phase = 'rl' order by step")]
    db.close()
    assert [p for p in curve if p is not None], "no held-out curve during RL"
