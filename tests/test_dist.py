"""Several ranks: `zeroth run --nproc 2` (torchrun, gloo, one thread a rank) runs world 1's run.

The world-1 reference is the session's finished tiny run (conftest.finished_tiny_run: pretrain,
4 RL steps, a checkpoint after each). At world 2 every rollout and evaluation sample is the
same, the weights agree to 1e-5, a killed rank stops the job at once naming it, and a resume
at world 2 (or world 1) ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ARGS = ["tiny", "run.name=t", "rl.checkpoint_every=1", "eval.max_new_tokens=16", "--quiet"]


def zeroth(cwd: Path, *args: str, wait: bool = True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "zeroth.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def table(run: Path, name: str) -> list[tuple]:
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        return [row[1:] for row in db.execute(f"select * from {name} order by id")]  # no id
    finally:
        db.close()


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def assert_same_run(got: Path, want: Path) -> None:
    assert table(got, "rollouts") == table(want, "rollouts")  # every rollout, reward, advantage
    assert table(got, "evals") == table(want, "evals")
    a, b = weights(got), weights(want)
    assert max(float((a[k] - b[k]).abs().max()) for k in b) < 1e-5
    s, t = (json.loads((run / "summary.json").read_text()) for run in (got, want))
    for key in ("base_pass1", "final_pass1", "final_greedy", "final_mean_len", "steps"):
        assert s[key] == t[key], key


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("world2")
    proc = zeroth(base, "run", "--nproc", "2", *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "runs" / "t"


def test_world2_runs_world1s_run(world2, finished_tiny_run):
    assert_same_run(world2, finished_tiny_run)
    first = [r for r in table(world2, "rollouts") if r[0] == "rl" and r[1] == 1]
    assert len(first) == 16  # the first RL step: 4 prompts x 4 samples, identical (above)
    metrics = [json.loads(m[2]) for m in table(world2, "metrics") if m[0] == "rl"]
    want = [json.loads(m[2]) for m in table(finished_tiny_run, "metrics") if m[0] == "rl"]
    for got, ref in zip(metrics, want, strict=True):  # global statistics: world 1's
        for key in ("reward", "mean_len", "loss", "grad_norm", "entropy", "clip_frac"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key


def test_one_writer(world2):
    names = sorted(p.name for p in world2.iterdir())
    assert names == sorted(["checkpoints", "config.yaml", "final", "ledger.sqlite",
                            "summary.json", ".lock"])
    assert len(list((world2 / "checkpoints").glob(".tmp-*"))) == 0


def _children(pid: int) -> dict[int, int]:
    """{rank: pid} of the ranks torchrun started under launcher `pid`."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == pid:
            rank = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(entry.name)
    return ranks


def test_a_killed_rank_stops_the_job_and_the_run_resumes(tmp_path, finished_tiny_run):
    proc = zeroth(tmp_path, "run", "--nproc", "2", *ARGS, wait=False)
    run = tmp_path / "runs" / "t"
    err, down = _kill_rank(proc, run, "rl-000001", 1)
    assert down < 10  # the whole job down within seconds, no hang
    assert proc.returncode != 0
    assert "rank 1 of 2 failed (killed by SIGKILL)" in err
    assert not (run / "summary.json").exists()
    done = zeroth(tmp_path, "run", "--nproc", "2", "--resume", str(run), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, finished_tiny_run)


def _kill_rank(proc, run: Path, checkpoint: str, rank: int) -> tuple[str, float]:
    """Kill `rank` of launcher `proc` once `checkpoint` is written: (its stderr, seconds from
    the kill until the whole job had exited)."""
    deadline = time.time() + 120
    while not (run / "checkpoints" / checkpoint).is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    os.kill(_children(proc.pid)[rank], signal.SIGKILL)
    killed = time.time()
    err = proc.communicate(timeout=60)[1]
    return err, time.time() - killed


def test_fsdp_at_world2_resumed_at_world1_runs_world1s_run(tmp_path, finished_tiny_run):
    """FSDP2 (sharded weights, gradients and AdamW state; whole-state checkpoints): killed at
    world 2 after two RL steps and resumed by one process, it still ends as world 1 ends."""
    proc = zeroth(tmp_path, "run", "--nproc", "2", *ARGS, "train.parallel=fsdp", wait=False)
    run = tmp_path / "runs" / "t"
    err, _ = _kill_rank(proc, run, "rl-000002", 1)
    assert "rank 1 of 2 failed (killed by SIGKILL)" in err
    done = zeroth(tmp_path, "run", "--resume", str(run), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, finished_tiny_run)


def test_lora_under_fsdp_runs_world1s_run(tmp_path):
    """LoRA adapters sharded with their frozen base (FSDP2), world 2 against world 1."""
    args = ["tiny", "model.lora_r=4", "rl.steps=2", "task.eval_problems=4", "--quiet"]
    one = zeroth(tmp_path, "run", *args, "run.name=one")
    two = zeroth(tmp_path, "run", "--nproc", "2", *args, "train.parallel=fsdp", "run.name=two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert_same_run(tmp_path / "runs" / "two", tmp_path / "runs" / "one")


def test_vllm_on_each_rank_samples_world1s_rollouts(tmp_path, finished_vllm_run,
                                                   vllm_run_args):
    """rl.engine=vllm at world 2: each rank its own vllm.LLM (external_launcher mode), the
    rollouts and evaluation samples world 1's vLLM gives (conftest.finished_vllm_run)."""
    proc = zeroth(tmp_path, "run", "--nproc", "2", *vllm_run_args, "run.name=v2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "runs" / "v2"
    assert table(two, "rollouts") == table(finished_vllm_run, "rollouts")
    assert table(two, "evals") == table(finished_vllm_run, "evals")
    gaps = [json.loads(m[2])["logprob_gap"] for m in table(two, "metrics") if m[0] == "rl"]
    assert len(gaps) == 6 and max(gaps) < 1e-3  # the engine's log-probs came back at world 2


def test_a_world_size_that_does_not_split_the_groups_is_refused(tmp_path):
    proc = zeroth(tmp_path, "run", "--nproc", "3", "tiny", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        ("zeroth: error: stage rl: rl.prompts_per_step=4 does not split into 3 ranks — make it "
         "a multiple of 3")]
    assert not (tmp_path / "runs").exists()


def test_nproc_below_one_is_refused(tmp_path):
    proc = zeroth(tmp_path, "run", "--nproc", "0", "tiny", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "zeroth: error: --nproc must be >= 1, got 0"
    assert not (tmp_path / "runs").exists()


def _compare_configs(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    from zeroth.config import load_config
    from zeroth.errors import UserError
    from zeroth.pipeline import dist
    from zeroth.pipeline.run import same_config

    dist.init("cpu")
    try:
        same_config(load_config("tiny", [f"rl.lr={0.001 * (rank + 1)}"]))
        out.put((rank, "same"))
    except UserError as exc:
        out.put((rank, str(exc)))
    dist.finish()


def test_ranks_given_different_configs_are_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_compare_configs, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    answers = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert answers[0] == ("rank 0 and rank 1 were given different configs (rl.lr: '0.001' here, "
                          "'0.002' there) — launch every rank with the same recipe and overrides")
    assert answers[1].startswith("rank 1 and rank 0 were given different configs")


def test_shares_cover_everything_once(monkeypatch):
    from zeroth.pipeline import dist

    for world in (1, 2, 3, 8):
        monkeypatch.setattr(dist, "world", lambda w=world: w)
        for n in (0, 1, 5, 16, 17):
            blocks = [dist.share(n, r) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("mode", ["seq", "token", "constant"])
def test_rank_losses_sum_to_the_whole_batch_loss(mode):
    from zeroth.algorithms.losses import policy_loss

    g = torch.Generator().manual_seed(0)
    logp = torch.randn(6, 5, generator=g, requires_grad=True)
    old, adv = logp.detach() + 0.1 * torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    mask[:, 0] = 1
    kw = {"eps_low": 0.2, "eps_high": 0.28, "loss_agg": mode, "agg_constant": 5.0}
    whole, _ = policy_loss(logp, old, adv, mask, **kw)
    (grad_whole,) = torch.autograd.grad(whole, logp)
    total = (6, int(mask.sum()))
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], total=total, **kw)[0]
             for s in (slice(0, 2), slice(2, 6))]
    (grad_parts,) = torch.autograd.grad(sum(parts), logp)
    assert float(sum(parts).detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
    assert torch.allclose(grad_parts, grad_whole, atol=1e-7)


def test_rank_supervised_losses_sum_to_the_whole_batch_loss(tiny_model):
    from zeroth.stages.distill import distill_loss
    from zeroth.stages.supervised import token_loss

    model, _ = tiny_model
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (4, 9), generator=g)
    labels = ids.clone()
    labels[0, 6:] = -100
    labels[3, :4] = -100
    items = int((labels[:, 1:] != -100).sum())
    for fn in (lambda i, lab, **kw: token_loss(model, i, lab, **kw),
               lambda i, lab, **kw: distill_loss(model, model, i, lab, alpha=0.5, **kw)):
        whole = float(fn(ids, labels)[0].detach())
        parts = [float(fn(ids[s], labels[s], items=items)[0].detach())
                 for s in (slice(0, 1), slice(1, 4))]
        assert sum(parts) == pytest.approx(whole, rel=1e-5)
