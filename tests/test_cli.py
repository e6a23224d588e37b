"""The command line as a user meets it: one-line errors with exit code 2, and a whole tiny run."""

import json
import sqlite3
import subprocess
import sys

import pytest

from zeroth.cli import main


def _run_cli(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "zeroth.cli", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["run", "rl.lrr=1"], "rl.lrr"),
    (["run", "rl.steps=abc"], "rl.steps"),
    (["run", "model.path=/nonexistent/model"], "model.path"),
    (["run", "no_such_recipe.yaml"], "no_such_recipe.yaml"),
    (["run", "rl.reward_weights.nope=1"], "nope"),
    (["run", "--resume", "not/a/run"], "not/a/run"),
    (["run", "run.name=../escape"], "run.name"),
    (["run", "task.digits=1"], "task.eval_problems"),
    (["run", "--resume", "x", "--force"], "--force"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    assert main(args + ([f"run.out_dir={tmp_path}"] if "--resume" not in args else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zeroth: error:") and needle in err
    assert "\n" not in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing created for a refused run


def test_model_folder_without_tokenizer_is_refused_before_writing(tmp_path, capsys, tiny_model):
    model, _ = tiny_model
    folder = tmp_path / "weights-only"
    model.save_pretrained(folder)
    out = tmp_path / "runs"
    assert main(["run", f"model.path={folder}", f"run.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer" in err and "\n" not in err and not out.exists()


def test_malformed_data_row_is_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "1+1", "answer": 2}\n{"prompt": "2+2"}\n')
    code = main(["run", "task.name=jsonl", f"task.path={data}", f"run.out_dir={tmp_path}/r",
                 "pretrain.steps=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{data}:2" in err and "'answer'" in err and "\n" not in err


def test_tiny_run_end_to_end_and_no_clobbering(tmp_path):
    code, out, err = _run_cli(["run", "tiny", "run.name=t", "--quiet"], tmp_path)
    assert code == 0, err
    run = tmp_path / "runs" / "t"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("base_pass1", "final_pass1", "base_greedy", "final_greedy", "demo_accuracy",
                "base_mean_len", "final_mean_len", "steps", "wall_s"):
        assert key in summary, key
    assert summary["steps"] == 4 and 0.0 < summary["demo_accuracy"] < 1.0
    assert "pass@1" in out and "after RL" in out
    assert (run / "config.yaml").is_file()
    assert not (run / "reference").exists()  # tiny has beta = 0: no reference model at all
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    assert (run / "checkpoints" / latest / "model" / "model.safetensors").is_file()
    db = sqlite3.connect(run / "ledger.sqlite")
    (n,) = db.execute("select count(*) from rollouts").fetchone()
    assert n == 4 * 4 * 4  # steps x prompts x group
    db.close()

    before = (run / "summary.json").read_bytes()
    code, _, err = _run_cli(["run", "tiny", "run.name=t"], tmp_path)
    assert code == 2 and "already exists" in err and "--resume" in err
    assert (run / "summary.json").read_bytes() == before
