"""One run, end to end, resumable at any moment:

    tokenizer + tiny model  ->  pre-train on demonstrations  ->  evaluate (base)
    ->  GRPO  ->  evaluate (final)  ->  summary.json

A run directory holds config.yaml (the resolved config), ledger.sqlite (every rollout, eval
sample and metric), checkpoints/ (atomic, newest two) and, when beta > 0, reference/ (the frozen
reference policy). The checkpoint state says which stage comes next; on resume, ledger rows
written after that checkpoint are dropped and the work is redone from the same seeds, so a
resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from random import Random

import torch
import yaml

from zeroth.checkpoint import (
    fsync_path,
    fsync_tree,
    latest_checkpoint,
    load_checkpoint,
    model_dir,
    save_checkpoint,
)
from zeroth.config import Config, config_from_dict, dump_config, resolve_rl, validate
from zeroth.errors import UserError
from zeroth.evaluate import evaluate
from zeroth.ledger import Ledger
from zeroth.models import build_model, check_model_dir, load_model, n_params, train_tokenizer
from zeroth.rewards.resolve import absolute_reference
from zeroth.stages import pretrain as pt
from zeroth.tasks import load_task
from zeroth.train import train


def preflight(cfg: Config) -> None:
    """Everything that can be checked before a run directory is written: the task's data and
    splits, the model folder, and whether pre-training has demonstrations to learn from.
    Fills in the task's own reward weights when the recipe names none."""
    task = load_task(cfg)
    if cfg.rl.reward_weights is None:
        cfg.rl.reward_weights = dict(task.weights)
    try:
        task.eval_rows(cfg.task.eval_problems, cfg.run.seed)
        task.train_rows(Random(0), 1)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.model.path:
        check_model_dir(cfg.model.path)
    elif task.demonstration is None:
        raise UserError(f"task '{task.name}' has no demonstrations to build a tokenizer and "
                        "pre-train from scratch — set model.path to a local model folder")
    if task.demonstration is None and cfg.pretrain.steps > 0:
        raise UserError(f"task '{task.name}' has no 'demo' column to pre-train on — set "
                        "pretrain.steps=0 or add demonstrations")


def create_run_dir(cfg: Config, recipe: str, force: bool = False) -> Path:
    """Make runs/<name>/ and save the resolved config; never clobber an existing run unasked."""
    for section, key in (("model", "path"), ("task", "path")):  # resume works from anywhere
        value = getattr(getattr(cfg, section), key)
        if value:
            setattr(getattr(cfg, section), key, str(Path(value).expanduser().resolve()))
    cfg.rl.reward_weights = {absolute_reference(k): w for k, w in cfg.rl.reward_weights.items()}
    name = cfg.run.name or f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run.out_dir) / name
    if path.exists() and any(path.iterdir()):
        if not force:
            raise UserError(f"run directory '{path}' already exists — continue it with "
                            f"`zeroth run --resume {path}`, choose run.name=..., or add --force "
                            "to replace it")
        trash = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash)
    path.mkdir(parents=True, exist_ok=True)
    cfg.run.name = name
    dump_config(cfg, path / "config.yaml")
    return path


def load_run_config(path: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    file = Path(path) / "config.yaml"
    if not file.is_file():
        raise UserError(f"'{path}' is not a zeroth run directory (no config.yaml) — give "
                        "runs/<name> of an earlier `zeroth run`")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{file} is damaged (not a YAML mapping) — restore it or start a new run")
    return validate(config_from_dict(data))


def init_model(cfg: Config, task):
    """(model, tokenizer): from model.path, or a tokenizer trained here and a fresh model."""
    if cfg.model.path:
        return load_model(cfg.model.path)
    if task.demonstration is None:
        raise UserError(f"task '{task.name}' has no demonstrations to build a tokenizer and "
                        "pre-train from scratch — set model.path to a local model folder")
    texts = [p + " " + c for p, c, _ in pt.demonstrations(task, cfg.demos.n, cfg.run.seed)]
    tokenizer = train_tokenizer(texts, cfg.model.vocab_size)
    torch.manual_seed(cfg.run.seed)
    return build_model(cfg.model, tokenizer), tokenizer


class Runner:
    """Holds what the stages share: config, run dir, ledger, task, model, tokenizer, state."""

    def __init__(self, run_dir: Path, cfg: Config, display):
        self.dir, self.cfg, self.display = Path(run_dir), cfg, display
        self.lock = lock_run_dir(self.dir)
        self.ledger = Ledger(self.dir / "ledger.sqlite")
        self.task = load_task(cfg)
        self.t0 = time.time()
        self.ckpt = latest_checkpoint(self.dir)
        if self.ckpt is None:
            self.model, self.tokenizer = init_model(cfg, self.task)
            self.state = {"stage": "pretrain", "step": 0, "wall_s": 0.0, "results": {}}
        else:
            self.model, self.tokenizer = load_model(model_dir(self.ckpt))
            self.state = load_checkpoint(self.ckpt)
            display.print(f"resuming {self.dir} from {self.ckpt.name}")
        self.wall0 = self.state["wall_s"]

    def save(self, tag: str, optimizer=None) -> None:
        self.state["wall_s"] = self.wall0 + time.time() - self.t0
        save_checkpoint(self.dir, tag, model=self.model, tokenizer=self.tokenizer,
                        optimizer=optimizer, state=self.state)

    def evaluate(self, phase: str) -> dict:
        self.ledger.clear_phase(phase)
        rows = self.task.eval_rows(self.cfg.task.eval_problems, self.cfg.run.seed)
        with self.display.stage(phase, total=1) as update:
            metrics, samples = evaluate(self.model, self.tokenizer, self.task, rows,
                                        self.cfg.eval, self.cfg.run.seed)
            update(1, pass1=metrics["pass1"], greedy=metrics["greedy"])
        self.ledger.log_eval(phase, samples)
        self.ledger.log_metrics(phase, 0, metrics)
        return metrics


def lock_run_dir(run_dir: Path):
    """An exclusive lock held while this process works on the run (released when it exits)."""
    handle = open(run_dir / ".lock", "w")  # noqa: SIM115 — lives as long as the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"run directory '{run_dir}' is in use by another zeroth process — "
                        "wait for it to finish or stop it first") from None
    return handle


def pretrain_stage(r: Runner) -> None:
    """Next-token prediction on the demonstrations, then the base evaluation."""
    cfg, p = r.cfg, r.cfg.pretrain
    if r.task.demonstration is not None:
        seqs, stats = pt.build_corpus(r.task, r.tokenizer, cfg.demos.n, cfg.run.seed)
        r.state["results"]["demos"] = stats
    elif p.steps > 0:
        raise UserError(f"task '{r.task.name}' has no demonstrations — set pretrain.steps=0")
    if r.ckpt is None:
        r.state["results"]["params"] = n_params(r.model)
        r.save("pretrain-000000")
    optimizer = torch.optim.AdamW(r.model.parameters(), lr=p.lr, betas=(0.9, 0.95),
                                  weight_decay=p.weight_decay)
    start = r.state["step"]
    if start > 0:
        load_checkpoint(r.ckpt, optimizer=optimizer)
    r.ledger.truncate_after("pretrain", start)
    r.model.train()
    with r.display.stage("pretrain", total=p.steps, done=start) as update:
        for step in range(start, p.steps):
            ids, labels = pt.batch_at(seqs, step, p.batch_size, cfg.run.seed,
                                      r.tokenizer.pad_token_id)
            lr = p.lr * pt.lr_at(step, p.steps, p.warmup)
            loss = pt.train_step(r.model, optimizer, ids, labels, lr)
            if (step + 1) % 10 == 0 or step + 1 == p.steps:
                r.ledger.log_metrics("pretrain", step + 1, {"loss": loss, "lr": lr})
            update(step + 1, loss=loss)
            if (step + 1) % p.checkpoint_every == 0 or step + 1 == p.steps:
                r.state["step"] = step + 1
                r.save(f"pretrain-{step + 1:06d}", optimizer)
    r.state["results"]["base"] = r.evaluate("eval_base")
    r.state.update(stage="rl", step=0)
    if cfg.rl.beta > 0:
        save_reference(r.model, r.tokenizer, r.dir / "reference")
    r.save("rl-000000")


def save_reference(model, tokenizer, target: Path) -> None:
    """The frozen reference policy for the KL term, written atomically and durably."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    fsync_tree(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    fsync_path(target.parent)


def rl_stage(r: Runner) -> None:
    """GRPO from the pre-trained policy, then the final evaluation."""
    rl = r.cfg.rl
    optimizer = torch.optim.AdamW(r.model.parameters(), lr=rl.lr, betas=(0.9, 0.99),
                                  weight_decay=0.0)
    start = r.state["step"]
    if start > 0:
        load_checkpoint(r.ckpt, optimizer=optimizer)
    r.ledger.truncate_after("rl", start)
    r.model.eval()  # no dropout: sampling, old and new log-probs must see the same network
    ref = None
    if rl.beta > 0:  # beta = 0: no reference model is loaded at all
        if not (r.dir / "reference" / "config.json").is_file():
            raise UserError(f"{r.dir / 'reference'} is missing — the run's reference policy "
                            "is gone; start a new run")
        ref, _ = load_model(r.dir / "reference")
        ref.eval().requires_grad_(False)

    def save(step: int) -> None:
        r.state["step"] = step
        r.save(f"rl-{step:06d}", optimizer)

    with r.display.stage("rl", total=rl.steps, done=start) as update:
        train(r.model, optimizer, ref, r.tokenizer, r.task, r.cfg, start=start,
              ledger=r.ledger, update=update, save=save)
    r.state["results"]["final"] = r.evaluate("eval_final")
    r.state["stage"] = "done"


def summary_of(r: Runner) -> dict:
    res = r.state["results"]
    base, final = res["base"], res["final"]
    demos = res.get("demos") or {}
    out = {
        "run": r.cfg.run.name, "seed": r.cfg.run.seed, "task": r.task.name,
        "demo_accuracy": demos.get("demo_accuracy"), "demo_reasoned": demos.get("demo_reasoned"),
        "steps": r.cfg.rl.steps, "pretrain_steps": r.cfg.pretrain.steps,
        "params": res.get("params"), "k": final["k"], "eval_problems": final["problems"],
    }
    for key in [k for k in final if k not in ("k", "problems")]:
        out[f"base_{key}"], out[f"final_{key}"] = base[key], final[key]
    out["wall_s"] = round(r.wall0 + time.time() - r.t0, 1)
    return out


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def execute(run_dir: Path, cfg: Config, display) -> dict:
    """Run (or resume) every remaining stage; write and return summary.json."""
    torch.set_num_threads(cfg.run.threads)
    cfg = replace(cfg, rl=resolve_rl(cfg.rl))  # stopgap until the pipeline resolves per stage
    done = Path(run_dir) / "summary.json"
    if done.is_file():
        display.print(f"{run_dir} has finished already; its summary is unchanged")
        return json.loads(done.read_text(encoding="utf-8"))
    r = Runner(run_dir, cfg, display)
    try:
        if r.state["stage"] == "pretrain":
            pretrain_stage(r)
        if r.state["stage"] == "rl":
            rl_stage(r)
        summary = summary_of(r)
        write_json(r.dir / "summary.json", summary)
        r.ledger.set_meta("summary", summary)
        return summary
    finally:
        r.ledger.close()
        r.lock.close()
