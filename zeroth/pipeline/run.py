"""One run, end to end, resumable at any moment: a pipeline of stages (run.pipeline).

    model (a local folder, or a tokenizer and tiny model built here)
    ->  stage 1  ->  evaluate  ->  stage 2  ->  evaluate  ->  ...  ->  final/ + summary.json

Stages: pretrain (next-token on demonstrations), sft (answer-only loss on chat data), rl (the
GRPO family), rejection (verified samples become SFT data), distill (a teacher's verified traces
teach a student). Each starts from the previous one's model; the held-out set is evaluated at
the start (unless the pipeline begins by pre-training a fresh model) and after each stage that
changes the model. The default pipeline is [pretrain, rl].

A run directory holds config.yaml (the resolved config), ledger.sqlite (every rollout, eval
sample and metric), checkpoints/ (atomic, tagged <stage id>-<step>, every one kept unless
run.keep_checkpoints=N), reference/ (the frozen reference policy of the current rl stage when
beta > 0), data/ (datasets written by rejection and distill stages) and, at the end, final/ (a
plain Hugging Face folder). The checkpoint state says which stage and step come next; on
resume, ledger rows written after that checkpoint are dropped and the work is redone from the
same seeds, so a resumed run ends exactly where an uninterrupted one would. A resume may raise
the steps of a last rl stage (`resume_config`): a finished run then continues from its last
checkpoint, exactly as a run set to the new step count from the start.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from random import Random

import torch

from zeroth.config import (
    Config,
    dump_config,
    hub_id,
    load_run_config,
    pipeline,
    resume_overrides,
    stage_config,
)
from zeroth.errors import UserError
from zeroth.models.hf import (
    apply_template,
    build_model,
    check_model_dir,
    load_model,
    n_params,
    pick_device,
    prepare_model,
    train_tokenizer,
)
from zeroth.models.locate import model_dir
from zeroth.pipeline import dist, export, faults, memory
from zeroth.pipeline.checkpoint import load_checkpoint, resumable_checkpoint, save_checkpoint
from zeroth.pipeline.ledger import Ledger, Unwritten
from zeroth.rewards.resolve import absolute_reference, rename_rewards
from zeroth.stages import STAGES
from zeroth.stages import eval as eval_stage
from zeroth.stages import pretrain as pt
from zeroth.stages.eval import BREAKDOWNS, headline
from zeroth.tasks import curriculum as curricula
from zeroth.tasks import load_task


def preflight(cfg: Config, task=None) -> str:
    """Everything that can be checked before a run directory is written: the task's data and
    splits (`task`, when the caller has loaded it already), the model folder, and whether
    pre-training has demonstrations to learn from. Fills in the task's own reward weights when
    the recipe names none. Returns the memory estimate line (and refuses a run that will not
    fit)."""
    task = task or load_task(cfg)
    if cfg.rl.reward_weights is None:
        cfg.rl.reward_weights = dict(task.weights)
    try:
        task.eval_rows(cfg.task.eval_problems, cfg.run.seed)
        task.train_rows(Random(0), 1)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model_source(cfg, task)
    stages = pipeline(cfg)
    kinds = [kind for _, kind, _ in stages]
    if task.demonstration is None and cfg.pretrain.steps > 0 and "pretrain" in kinds:
        raise UserError(f"task '{task.name}' has no demonstrations to pre-train on"
                        f"{no_demos_hint(task)} — or leave pre-training out: pipeline=[rl]")
    for i, (sid, kind, _) in enumerate(stages):
        scfg = stage_config(cfg, i)
        if kind == "sft" and scfg.sft.data == "rejection" and "rejection" not in kinds[:i]:
            raise UserError(f"stage {sid} learns from sft.data=rejection, but no rejection stage "
                            "comes before it — add one to run.pipeline or give a JSONL file")
        if kind == "sft" and task.demonstration is None and scfg.sft.data in ("demos", "reasoned"):
            raise UserError(f"stage {sid}: task '{task.name}' has no demonstrations for "
                            f"sft.data={scfg.sft.data} — give sft.data=FILE.jsonl")
        weights = scfg.rl.reward_weights or task.weights
        if kind == "rl" and cfg.task.curriculum and task.accuracy not in weights:
            raise UserError(f"stage {sid}: task.curriculum follows the training accuracy of "
                            f"the '{task.accuracy}' reward — give it a weight in "
                            f"rl.reward_weights (0 scores it without rewarding it)")
    pick_device(cfg.run.device)
    return memory.check(cfg)  # the estimate line; raises before anything is written


def model_source(cfg: Config, task) -> None:
    """Check where the pipeline's first model comes from: model.path (a model folder, or a run
    directory or checkpoint, replaced here by the model folder it holds; a first distill stage's
    teacher when model.path is unset), or a model built from scratch, which needs the task's
    demonstrations to train a tokenizer and pre-train on."""
    teacher = stage_config(cfg, 0).distill.teacher
    if teacher and pipeline(cfg)[0][1] == "distill" and not cfg.model.path:
        from zeroth.stages.distill import teacher_folder

        cfg.model.path = str(teacher_folder(teacher)[0])  # the pipeline starts from the teacher
    if cfg.model.path and not hub_id(cfg.model.path):
        cfg.model.path = str(check_model_dir(cfg.model.path))
    elif not cfg.model.path and task.demonstration is None:
        raise UserError(f"task '{task.name}' has no demonstrations to build a tokenizer and "
                        f"pre-train a model from scratch{no_demos_hint(task)} — or set "
                        "model.path to a model folder or run directory")
    if cfg.student.path:
        cfg.student.path = str(check_model_dir(cfg.student.path))


def no_demos_hint(task) -> str:
    """What the task itself says a user can add to give it demonstrations (jsonl: a 'demo'
    column), as ': ...' ready to follow a sentence; '' when it says nothing."""
    hint = task.info.get("no_demos")
    return f": {hint}" if hint else ""


SFT_SOURCES = ("reasoned", "demos", "rejection")  # sft.data values that are not files


def default_name(recipe: str) -> str:
    """A run's name when run.name is not given: `<recipe>-<date>-<time>`."""
    return f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(cfg: Config, recipe: str, force: bool = False) -> Path:
    """Make runs/<name>/ and save the resolved config; never clobber an existing run unasked."""
    paths = (("model", "path"), ("task", "path"), ("task", "eval_path"), ("student", "path"),
             ("distill", "teacher"))
    for section, key in paths:  # resume works from anywhere
        value = getattr(getattr(cfg, section), key)
        if value and not hub_id(value):
            setattr(getattr(cfg, section), key, str(Path(value).expanduser().resolve()))
    if cfg.sft.data not in SFT_SOURCES:
        cfg.sft.data = str(Path(cfg.sft.data).expanduser().resolve())
    for entry in cfg.run.pipeline:
        for kind, key in (("sft", "data"), ("distill", "teacher")):
            body = entry.get(kind) if isinstance(entry, dict) else None
            value = body.get(key) if isinstance(body, dict) else None
            if isinstance(value, str) and value not in SFT_SOURCES:
                body[key] = str(Path(value).expanduser().resolve())
    cfg.rl.reward_weights = rename_rewards(cfg.rl.reward_weights, cfg.run.pipeline,
                                           absolute_reference)
    cfg.task.name = absolute_reference(cfg.task.name)  # a task file of the user's
    cfg.task.mix = {absolute_reference(k): v for k, v in cfg.task.mix.items()}
    name = cfg.run.name or default_name(recipe)
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


def resume_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The config a resumed run continues with: the one saved in `run_dir`, with the changes
    `--resume` allows (zeroth.config.resume_overrides) written back to its config.yaml. More rl
    steps make a finished run unfinished: its summary.json goes first (so a kill before the new
    config.yaml is written leaves a run that resumes to its old end and summary)."""
    cfg = load_run_config(run_dir)
    new = resume_overrides(cfg, overrides)
    if new == cfg:
        return cfg
    run_dir = Path(run_dir)
    handle = lock_run_dir(run_dir)  # not while another process works on the run
    try:
        if rl_steps(new) != rl_steps(cfg):
            (run_dir / "summary.json").unlink(missing_ok=True)
        dump_config(new, run_dir / "config.yaml")
    finally:
        handle.close()
    return new


def rl_steps(cfg: Config) -> list[int]:
    """The step count of each rl stage of the pipeline, in order."""
    return [stage_config(cfg, i, resolve=False).rl.steps
            for i, (_, kind, _) in enumerate(pipeline(cfg)) if kind == "rl"]


def init_model(cfg: Config, task):
    """(model, tokenizer): from model.path, or a tokenizer trained here and a fresh model; in
    the configured dtype, on the device, with LoRA and gradient checkpointing when asked."""
    m = cfg.model
    if m.path:
        model, tokenizer = load_model(m.path, dtype=m.dtype, template=m.template)
    elif task.demonstration is None:
        raise UserError(f"task '{task.name}' has no demonstrations to build a tokenizer and "
                        f"pre-train a model from scratch{no_demos_hint(task)} — or set "
                        "model.path to a model folder or run directory")
    else:
        texts = [p + " " + c for p, c, _ in pt.demonstrations(task, cfg.demos.n, cfg.run.seed)]
        tokenizer = apply_template(train_tokenizer(texts, m.vocab_size), m.template)
        torch.manual_seed(cfg.run.seed)
        model = build_model(m, tokenizer)
    if m.lora_r > 0:
        torch.manual_seed(cfg.run.seed)  # the adapters' initialisation
    return prepare_model(model, m, cfg.run.device), tokenizer


class Runner:
    """What the stages share: the run dir, ledger, task, current model and tokenizer, and the
    resumable state. `enter(i)` points it at pipeline stage i: `stage_id`, the stage's `cfg`,
    and `resume_ckpt` (the checkpoint a stage continues from, None at a fresh start)."""

    def __init__(self, run_dir: Path, cfg: Config, display):
        self.dir, self.base_cfg, self.cfg, self.display = Path(run_dir), cfg, cfg, display
        main = dist.is_main()  # rank 0 alone writes the run directory
        if main:
            faults.check_writable(self.dir)  # a read-only folder: one line, nothing changed
        self.lock = lock_run_dir(self.dir) if main else None
        # a damaged ledger: what can be read is salvaged into a fresh one, the file kept aside
        self.ledger = Ledger(self.dir / "ledger.sqlite", repair=True) if main else Unwritten()
        if main and self.ledger.salvaged:
            said = salvage_note(self.ledger.salvaged)
            display.print(f"warning: {said}", highlight=False)
            faults.note_event(self.ledger, "ledger damaged", said)
        self.task = load_task(cfg)
        self.device = pick_device(cfg.run.device)
        self.t0 = time.time()
        # the newest intact checkpoint: a damaged one is moved aside (rank 0), with a warning
        self.ckpt, warning = dist.on_main(resumable_checkpoint, self.dir)
        if warning:
            display.print(f"warning: {warning}", highlight=False)
            faults.note_event(self.ledger, "checkpoint damaged", warning)
        self.stage_id, self.resume_ckpt = None, None
        if self.ckpt is None:
            self.model, self.tokenizer = init_model(cfg, self.task)
            self.state = {"index": 0, "step": 0, "wall_s": 0.0, "results": {}, "evals": {},
                          "data": {}, "started": False}
        else:
            self.state = load_checkpoint(self.ckpt, restore_rng=False)  # the model's section
            model, self.tokenizer = load_model(model_dir(self.ckpt), dtype=self.model_cfg.dtype)
            self.model = prepare_model(model, self.model_cfg, self.device)
            load_checkpoint(self.ckpt)  # the random states last, as they were at the save
            curricula.restore_levels(self.task, self.state)  # the levels it had reached
            display.print(f"resuming {self.dir} from {self.ckpt.name}")
        self.model = dist.shard(self.model, cfg.train.parallel)  # rank 0's weights; FSDP2
        self.wall0 = self.state["wall_s"]

    @property
    def model_cfg(self):
        """The settings of the current model: `model`, or `student` once a distill stage has
        made the student the pipeline's model."""
        return getattr(self.base_cfg, self.state.get("model_section", "model"))

    def enter(self, index: int) -> None:
        """Make pipeline stage `index` the current one."""
        self.stage_id, _, _ = pipeline(self.base_cfg)[index]
        self.cfg = stage_config(self.base_cfg, index)
        resumed = self.ckpt is not None and load_state_index(self.ckpt) == index
        self.resume_ckpt = self.ckpt if resumed and self.state["step"] > 0 else None

    def save(self, step: int, optimizer=None) -> None:
        """Checkpoint `<stage id>-<step>` of the current model and state."""
        self.state["step"] = step
        self.state["wall_s"] = self.wall0 + time.time() - self.t0
        model = dist.plain(self.model)  # FSDP: the whole weights and optimiser state gathered
        opt_state = dist.optimizer_state(self.model, optimizer)
        dist.on_main(save_checkpoint, self.dir, f"{self.stage_id}-{step:06d}", model=model,
                     tokenizer=self.tokenizer, optimizer=opt_state, state=self.state,
                     keep=self.base_cfg.run.keep_checkpoints)

    def evaluate(self, phase: str) -> dict:
        """The held-out evaluation of the current model, recorded under `phase`."""
        return eval_stage.run(self, phase)


def salvage_note(salvaged: dict) -> str:
    """One line on a damaged ledger salvaged as the run opened it."""
    kept = ", ".join(f"{n} {table}" for table, n in salvaged["kept"].items())
    return (f"the ledger was damaged ({salvaged['error']}); kept what could be read ({kept}) "
            f"in a fresh ledger, the damaged file is at {salvaged['moved_to']}")


def load_state_index(ckpt: Path) -> int:
    """The pipeline stage a checkpoint was saved in."""
    return json.loads((ckpt / "state.json").read_text(encoding="utf-8"))["index"]


LOCK_TRIES = 20  # 20 x 50 ms: a viewer's momentary shared lock (pipeline.runstate) is waited out


def lock_run_dir(run_dir: Path):
    """An exclusive lock held while this process works on the run (released when it exits)."""
    handle = open(run_dir / ".lock", "w")  # noqa: SIM115 — lives as long as the run
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if attempt + 1 < LOCK_TRIES:
                time.sleep(0.05)
    handle.close()
    raise UserError(f"run directory '{run_dir}' is in use by another zeroth process — "
                    "wait for it to finish or stop it first")




def run_pipeline(r: Runner) -> None:
    """Every remaining stage in order; each starts from the previous one's model. The held-out
    set is evaluated at the start (unless the pipeline begins by pre-training a fresh model)
    and after every stage that changes the model."""
    stages = pipeline(r.base_cfg)
    if not r.state["started"]:
        r.state["started"] = True
        r.stage_id, r.cfg = stages[0][0], stage_config(r.base_cfg, 0)
        if r.ckpt is None:
            r.state["results"]["params"] = n_params(r.model)
        if stages[0][1] != "pretrain":
            r.state["evals"]["start"] = r.evaluate("eval_start")
    while r.state["index"] < len(stages):
        index = r.state["index"]
        sid, kind, _ = stages[index]
        r.enter(index)
        stage = STAGES[kind]
        if r.state["step"] == 0 and r.resume_ckpt is None and not r.state.get("entered"):
            if hasattr(stage, "start"):  # work done once, before the stage's first checkpoint
                stage.start(r)
            r.state["entered"] = True
            r.save(0)
            faults.stop_point(r, 0, True, None)  # a SIGTERM during the evaluation stops here
        r.state["results"][sid] = stage.run(r)
        if stage.CHANGES_MODEL:
            r.state["evals"][sid] = r.evaluate(f"eval_{sid}")
        r.state.update(index=index + 1, step=0, entered=False)
        r.ckpt = None  # later stages start fresh


def summary_of(r: Runner) -> dict:
    """The run's results: held-out metrics at the start (base_*) and the end (final_*) of the
    pipeline, and each stage's own result and evaluation."""
    res, evals = r.state["results"], r.state["evals"]
    stages = pipeline(r.base_cfg)
    base, final = next(iter(evals.values())), list(evals.values())[-1]
    demos = next((res[sid] for sid, kind, _ in stages if kind == "pretrain"), {}) or {}
    out = {
        "run": r.base_cfg.run.name, "seed": r.base_cfg.run.seed, "task": r.task.name,
        "pipeline": [sid for sid, _, _ in stages],
        "demo_accuracy": demos.get("demo_accuracy"), "demo_reasoned": demos.get("demo_reasoned"),
        "steps": sum(rl_steps(r.base_cfg)),
        "pretrain_steps": sum(stage_config(r.base_cfg, i).pretrain.steps
                              for i, (_, kind, _) in enumerate(stages) if kind == "pretrain"),
        "params": res.get("params"), "k": final["k"], "eval_problems": final["problems"],
    }
    for key in [k for k in final if k not in ("k", "problems", *BREAKDOWNS)]:
        out[f"base_{key}"], out[f"final_{key}"] = base.get(key), final[key]
    for key in BREAKDOWNS:
        if final.get(key):
            out[f"base_{key}"], out[f"final_{key}"] = base.get(key), final[key]
    if r.task.info.get("mix"):
        out["mix"] = r.task.info["mix"]
    if curricula.summary(r.state):
        out["curriculum"] = curricula.summary(r.state)
    out["stages"] = [{"stage": sid, "kind": kind, "result": res.get(sid),
                      "eval": headline(evals.get(sid))} for sid, kind, _ in stages]
    if "start" in evals:
        out["stages"].insert(0, {"stage": "start", "kind": "eval", "result": None,
                                 "eval": headline(evals["start"])})
    out["wall_s"] = round(r.wall0 + time.time() - r.t0, 1)
    return out


def save_final(model, r: Runner) -> None:
    """The pipeline's final model as a plain Hugging Face folder (LoRA merged): final/."""
    export.save_final(model, r.tokenizer, r.dir / "final")  # atomic and fsynced


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def same_config(cfg: Config) -> None:
    """Every rank of a torchrun job runs the same config: a one-line error naming the first
    setting where a rank's differs from rank 0's, and one for a world size the config cannot
    split (zeroth.config.check_world)."""
    from zeroth.config import check_world, config_to_dict

    if dist.world() == 1:
        return
    flat = _flat(config_to_dict(cfg))
    for r, other in enumerate(dist.gather(flat)):
        diff = sorted(k for k in set(flat) | set(other) if flat.get(k) != other.get(k))
        if diff:
            key = diff[0]
            raise UserError(f"rank {dist.rank()} and rank {r} were given different configs "
                            f"({key}: {flat.get(key)!r} here, {other.get(key)!r} there) — "
                            "launch every rank with the same recipe and overrides")
    check_world(cfg, dist.world())


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = repr(value)
    return out


def execute(run_dir: Path, cfg: Config, display) -> dict:
    """Run (or resume) every remaining stage; write (rank 0) and return summary.json."""
    torch.set_num_threads(dist.threads(cfg.run.threads))
    done = Path(run_dir) / "summary.json"
    if done.is_file():
        display.print(f"{run_dir} has finished already; its summary is unchanged")
        return json.loads(done.read_text(encoding="utf-8"))
    r = Runner(run_dir, cfg, display)
    try:
        try:
            run_pipeline(r)
        except (faults.Stopped, faults.Diverged) as exc:  # kept in the ledger's events
            faults.note_event(r.ledger, type(exc).__name__.lower(), str(exc))
            raise
        dist.on_main(save_final, dist.plain(r.model), r)
        summary = dist.broadcast(summary_of(r))  # rank 0's wall time
        dist.on_main(write_json, r.dir / "summary.json", summary)
        r.ledger.set_meta("summary", summary)
        return summary
    finally:
        r.ledger.close()
        if r.lock is not None:
            r.lock.close()
