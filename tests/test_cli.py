"""The command line as a user meets it: one-line errors with exit code 2, and a whole tiny run."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from importlib.metadata import version

import pytest

from zeroth.cli import main
from zeroth.config import embedded_recipes, recipe_summary


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


def test_version_prints_the_packages_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"zeroth {version('zeroth')}"


def test_run_help_lists_the_embedded_recipes_one_line_each(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for name in embedded_recipes():
        assert f"  {name} " in out and recipe_summary(name) in out.replace("\n", " ")


# -- Ctrl-C ---------------------------------------------------------------------------------------


def _interrupt(*_, **__):
    raise KeyboardInterrupt


def test_ctrl_c_names_the_run_folder_once_it_exists(tmp_path, capsys, monkeypatch):
    from zeroth.pipeline import run as run_module

    monkeypatch.setattr(run_module, "preflight", _interrupt)  # before the run directory
    assert main(["run", "tiny", f"run.out_dir={tmp_path}"]) == 130
    assert capsys.readouterr().err.strip() == "zeroth: interrupted"
    monkeypatch.undo()
    monkeypatch.setattr(run_module, "execute", _interrupt)  # while the run works
    assert main(["run", "tiny", f"run.out_dir={tmp_path}", "run.name=x", "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"zeroth: interrupted — continue with zeroth run --resume {tmp_path / 'x'}"


def test_ctrl_c_of_a_real_run_tells_how_to_resume_it(tmp_path):
    # Python's own SIGINT handler in the child: a shell running these tests in the background
    # leaves SIGINT ignored, and Python then never raises KeyboardInterrupt
    start = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from zeroth.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", start, "run", "tiny", "--quiet",
                             "pretrain.steps=2000"], cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/checkpoints/LATEST")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1].strip()
    (run,) = (tmp_path / "runs").iterdir()
    assert proc.returncode == 130 and run.name.startswith("tiny-")
    assert err.splitlines()[-1] == f"zeroth: interrupted — continue with zeroth run --resume " \
                                   f"runs/{run.name}"


# -- --resume with more rl steps --------------------------------------------------------------------

TINY_RUN = ["rl.checkpoint_every=1", "eval.max_new_tokens=16"]  # conftest's finished_tiny_run


def _fingerprint(run):
    summary = json.loads((run / "summary.json").read_text())
    for key in ("wall_s", "run"):
        summary.pop(key)
    db = sqlite3.connect(run / "ledger.sqlite")
    rows = [db.execute("select phase, step, prompt_idx, sample_idx, completion, rewards, "
                       "advantage from rollouts order by 1, 2, 3, 4").fetchall(),
            db.execute("select phase, problem_idx, sample_idx, completion, correct from evals "
                       "order by 1, 2, 3").fetchall()]
    db.close()
    return summary, rows, (run / "final" / "model.safetensors").read_bytes()


def test_resume_raises_rl_steps_of_a_finished_run(tmp_path, finished_tiny_run):
    run = shutil.copytree(finished_tiny_run, tmp_path / "runs" / "t")
    assert main(["run", "--resume", str(run), "rl.steps=6", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and "rl.steps" not in str(summary)
    assert "steps: 6" in (run / "config.yaml").read_text()
    assert sorted(p.name for p in (run / "checkpoints").glob("rl-*")) == [
        f"rl-{s:06d}" for s in range(7)]
    # exactly what a run of 6 rl steps from the start gives
    assert main(["run", "tiny", *TINY_RUN, "rl.steps=6", f"run.out_dir={tmp_path}",
                 "run.name=six", "--quiet"]) == 0
    assert _fingerprint(run) == _fingerprint(tmp_path / "six")


@pytest.mark.parametrize("args, needle", [
    (["rl.lr=1"], "--resume cannot change 'rl.lr'"),
    (["rl.steps=2"], "can only raise it"),
    (["tiny"], "--resume takes no recipe"),
])
def test_resume_refuses_other_changes_and_writes_nothing(tmp_path, finished_tiny_run, capsys,
                                                         args, needle):
    run = shutil.copytree(finished_tiny_run, tmp_path / "t")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["run", "--resume", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
