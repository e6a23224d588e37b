"""`zeroth plot`: PNG figures from a real tiny run and from synthetic ledgers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from zeroth.cli import main, plot
from zeroth.pipeline.ledger import Ledger

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_run(path: Path, steps: int = 6, kl: bool = True, sft: bool = True) -> Path:
    """A run directory with an sft stage, an evaluation, an rl stage and a final evaluation."""
    ledger = Ledger(path / "ledger.sqlite")
    if sft:
        for step in range(1, 4):
            ledger.log_metrics("sft", step, {"loss": 2.0 / step, "lr": 1e-3})
    ledger.log_metrics("eval_sft", 0, {"pass1": 0.2, "pass@1": 0.2, "greedy": 0.25, "maj@4": 0.3})
    for step in range(1, steps + 1):
        row = {"reward": 0.1 * step, "reward_correct": 0.05 * step, "reward_format": 0.5,
               "mean_len": 30 + step, "entropy": 2.0 - 0.1 * step, "lr": 1e-4,
               "reflect_rate": 0.01 * step, "think_rate": 0.5, "grad_norm": None}
        if kl:
            row["kl"] = 0.01 * step
        ledger.log_metrics("rl", step, row)
    ledger.log_metrics("eval_rl", 0, {"pass1": 0.6, "pass@1": 0.6, "greedy": 0.7, "maj@4": 0.8})
    ledger.close()
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_tiny_run_writes_valid_pngs(finished_tiny_run, tmp_path, capsys):
    out = tmp_path / "plots"  # the shared run is read only
    assert main(["plot", str(finished_tiny_run), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["reward.png", "accuracy.png", "length.png", "entropy.png",
                              "reflection.png", "lr.png", "loss.png", "summary.png"])
    assert "kl.png" not in written  # the tiny recipe has beta = 0: no KL logged
    for name in written:
        width, height = png_size(out / name)
        assert width >= 1200 and height >= 700  # print-friendly resolution
    assert png_size(out / "summary.png") == (1650, 1125)
    printed = capsys.readouterr().out
    for name in written:
        assert str(out / name) in printed


def test_run_with_kl_writes_kl_and_loss(tmp_path, capsys):
    run = synthetic_run(tmp_path / "k")
    wanted = "kl,loss,lr,summary"
    assert main(["plot", str(run), "--out", str(tmp_path / "figs"), "--metrics", wanted]) == 0
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"kl.png", "loss.png", "lr.png",
                                                               "summary.png"}
    assert png_size(tmp_path / "figs" / "lr.png")[0] > 1280  # a panel for sft, one for rl
    assert not (run / "plots").exists()
    capsys.readouterr()
    bare = synthetic_run(tmp_path / "n", kl=False, sft=False)
    assert main(["plot", str(bare), "--metrics", wanted]) == 0
    assert {p.name for p in (bare / "plots").iterdir()} == {"lr.png", "summary.png"}
    assert "skipped (not logged): kl, loss" in capsys.readouterr().out


def test_overlay_of_two_runs_labels_each_run(finished_tiny_run, tmp_path):
    other = synthetic_run(tmp_path / "other")
    assert main(["plot", str(finished_tiny_run), str(other), "--out", str(tmp_path / "both"),
                 "--metrics", "reward,summary"]) == 0
    assert png_size(tmp_path / "both" / "reward.png")[0] > 0
    runs = [plot.load_run(finished_tiny_run, "t", None), plot.load_run(other, "other", None)]
    fig = plot.figure("length", runs, smooth=0)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["t", "other"]  # one metric: the title names it, the legend the runs
    colors = {line.get_color() for line in fig.axes[0].get_lines()}
    assert len(colors) == 2


def two_rl_stages(tmp_path: Path) -> Path:
    """A run: start evaluation, rl1 (3 steps), its evaluation, rl2 (2 steps), its evaluation."""
    ledger = Ledger(tmp_path / "r" / "ledger.sqlite")
    ledger.log_metrics("eval_start", 0, {"pass@1": 0.1, "greedy": 0.0, "maj@2": 0.0})
    for step in (1, 2, 3):
        ledger.log_metrics("rl1", step, {"reward": 1.0, "reward_math_accuracy": step / 10})
    ledger.log_metrics("eval_rl1", 0, {"pass@1": 0.3, "greedy": 0.2, "maj@2": 0.4})
    for step in (1, 2):
        ledger.log_metrics("rl2", step, {"reward": 1.0, "reward_math_accuracy": 0.5})
    ledger.log_metrics("eval_rl2", 0, {"pass@1": 0.5, "greedy": 0.6, "maj@2": 0.7})
    ledger.close()
    return tmp_path / "r"


def test_accuracy_uses_the_accuracy_reward_and_places_evals(tmp_path):
    run = plot.load_run(two_rl_stages(tmp_path), "r", None)
    assert [(label, x) for label, x, _ in run.evals] == [("start", 0), ("after rl1", 3),
                                                          ("after rl2", 5)]
    [(phase, xs, ys)] = plot.curves(run, "accuracy", "rl")
    assert phase == "rl" and xs == [1, 2, 3, 4, 5]
    assert ys == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.5])
    fig = plot.figure("accuracy", [run], smooth=0)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["maj@2 (held-out)"].get_xdata()) == [0, 3, 5]
    assert list(lines["greedy (held-out)"].get_ydata()) == [0.0, 0.2, 0.6]


def test_checkpoints_scored_by_zeroth_eval_join_the_held_out_curve(tmp_path):
    """Results `zeroth eval --checkpoint` saved for RL checkpoints sit at their RL step (a second
    rl stage continues the axis); pretrain checkpoints, other tasks and broken files stay out."""
    import json

    run_dir = two_rl_stages(tmp_path)
    (run_dir / "config.yaml").write_text(
        "task: {name: gsm8k, eval_problems: 10}\nrun: {seed: 0}\n"
        "eval: {k: 2, temperature: 1.0, max_new_tokens: 64, batch_size: 256}\n")
    (run_dir / "evals").mkdir()
    settings = {"temperature": 1.0, "max_new_tokens": 64, "batch_size": 256}

    def saved(tag, stage, step, pass1, task="gsm8k", k=2):
        result = {"task": task, "k": k, "problems": 10, "seed": 0, "eval": settings,
                  "checkpoint": {"tag": tag, "stage": stage, "stage_index": 0, "step": step},
                  "metrics": {"pass1": pass1, "pass@1": pass1, "greedy": pass1, "maj@2": pass1}}
        (run_dir / "evals" / f"{tag}-{task}.json").write_text(json.dumps(result))

    saved("rl1-000002", "rl1", 2, 0.25)
    saved("rl2-000001", "rl2", 1, 0.45)
    saved("pretrain-000010", "pretrain", 10, 0.05)  # not on the RL axis
    saved("rl1-000001", "rl1", 1, 0.9, task="math")  # another task
    saved("rl2-000002", "rl2", 2, 0.9, k=16)  # other settings: another estimate
    (run_dir / "evals" / "broken-gsm8k.json").write_text("{")
    run = plot.load_run(run_dir, "r", None)
    assert [(label, x) for label, x, _ in run.evals] == [
        ("start", 0), (None, 2), ("after rl1", 3), (None, 4), ("after rl2", 5)]
    fig = plot.figure("accuracy", [run], smooth=0)
    line = {line.get_label(): line for line in fig.axes[0].get_lines()}["pass@1 (held-out)"]
    assert list(line.get_xdata()) == [0, 2, 3, 4, 5]
    assert list(line.get_ydata()) == pytest.approx([0.1, 0.25, 0.3, 0.45, 0.5])


def test_smoothing_draws_raw_faint_and_smoothed(tmp_path):
    run = plot.load_run(synthetic_run(tmp_path / "s"), "s", None)
    assert plot.smoothed([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    fig = plot.figure("kl", [run], smooth=3)
    raw, smooth = fig.axes[0].get_lines()
    assert raw.get_alpha() == pytest.approx(0.25)
    assert list(smooth.get_ydata()) == pytest.approx(plot.smoothed(list(raw.get_ydata()), 3))
    assert main(["plot", str(tmp_path / "s"), "--smooth", "3", "--metrics", "kl"]) == 0


def test_metrics_option_picks_groups_and_logged_metrics(tmp_path, capsys):
    run = synthetic_run(tmp_path / "m")
    assert main(["plot", str(run), "--metrics", "kl,reward_format,summary"]) == 0
    assert {p.name for p in (run / "plots").iterdir()} == {"kl.png", "reward_format.png",
                                                            "summary.png"}
    capsys.readouterr()
    assert main(["plot", str(run), "--metrics", "kl,nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown --metrics name 'nope'" in err and "reflection" in err and "mean_len" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_phase_option(tmp_path, capsys):
    run = synthetic_run(tmp_path / "p")
    assert main(["plot", str(run), "--phase", "rl", "--out", str(tmp_path / "rl")]) == 0
    names = {p.name for p in (tmp_path / "rl").iterdir()}
    assert "loss.png" not in names and "kl.png" in names
    assert main(["plot", str(run), "--phase", "ppo"]) == 2
    assert "no phase 'ppo'" in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("run: {name: s}\n")
    Ledger(tmp_path / "nometrics" / "ledger.sqlite").close()
    cases = {str(tmp_path / "missing"): "does not exist",
             str(tmp_path / "empty"): "not a zeroth run directory",
             str(tmp_path / "started"): "no ledger yet",
             str(tmp_path / "nometrics"): "no metrics yet"}
    for path, message in cases.items():
        assert main(["plot", path]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("zeroth: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nometrics" / "plots").exists()
    assert main(["plot", str(synthetic_run(tmp_path / "ok")), "--smooth", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--smooth takes a window of 0 (off) or more steps, got -1" in err
    assert not (tmp_path / "ok" / "plots").exists()


def test_plots_a_run_that_is_still_writing(tmp_path):
    ledger = Ledger(tmp_path / "live" / "ledger.sqlite")  # held open, like a running run
    ledger.log_metrics("rl", 1, {"reward": 0.1, "mean_len": 10})
    assert main(["plot", str(tmp_path / "live"), "--metrics", "length"]) == 0
    first = (tmp_path / "live" / "plots" / "length.png").read_bytes()
    ledger.log_metrics("rl", 2, {"reward": 0.2, "mean_len": 20})
    assert main(["plot", str(tmp_path / "live"), "--metrics", "length"]) == 0
    assert (tmp_path / "live" / "plots" / "length.png").read_bytes() != first
    run = plot.load_run(tmp_path / "live", "live", None)
    assert plot.curves(run, "mean_len", "rl") == [("rl", [1, 2], [10.0, 20.0])]
    ledger.close()


def test_save_is_atomic(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    fig = plt.figure()

    def broken(*args, **kwargs):
        Path(args[0]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError):
        plot.save(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    fig = plt.figure()
    plot.save(fig, target)
    assert png_size(target)[0] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
