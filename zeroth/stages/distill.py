"""Distillation: a teacher writes verified reasoning traces, a student learns them (R1, sec. 2.4).

    teacher traces  = sample_verified(teacher, training prompts)     # kept: correct, well formed
    student         = student.path, or built from scratch (+ optional demonstration pre-training)
    before          = evaluate(student)                               # its pre-distillation score
    loss            = (1 - alpha) * CE(trace answer tokens) + alpha * KL(teacher || student)

The KL term (logit distillation, Hinton et al. 2015, at temperature 1) is summed over the full
vocabulary at every answer token, teacher logits computed on the fly; it needs both models to
share a tokenizer (`distill.logits: auto` turns it on exactly then). Without it the loss is the
plain cross-entropy on the traces, as R1 distils its small models (SFT on 800k samples).

Resume: the traces are written to data/<stage id>.jsonl, a teacher that could change or vanish
(the pipeline's own model, a run's checkpoint) is copied to teacher/, and checkpoint
<stage id>-000000 is saved right after the student's first evaluation with everything the
rest of the stage needs in state[<stage id>]; training then checkpoints like SFT.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from random import Random

import torch
import torch.nn.functional as F

from zeroth.errors import UserError
from zeroth.models.hf import build_model, load_model, n_params, prepare_model
from zeroth.models.locate import FINAL, locate_model
from zeroth.pipeline import dist
from zeroth.pipeline.checkpoint import save_folder
from zeroth.rollout import hash_seed, make_engine
from zeroth.stages import pretrain as pt
from zeroth.stages.rejection import sample_verified, write_jsonl
from zeroth.stages.sft import chat_batches, prepare, read_jsonl
from zeroth.stages.supervised import Hyper, batches, token_loss, train

CHANGES_MODEL = True  # the held-out set is evaluated after this stage (the student)


def token_kl(teacher_logits, student_logits, mask, chunk: int = 1024,
             items: int | None = None) -> torch.Tensor:
    """Mean over the tokens where `mask` of KL(teacher || student) over the shared vocabulary
    (with `items`: the sum divided by it). teacher_logits, student_logits: (B, T, V*); mask:
    (B, T) bool. Computed `chunk` tokens at a time, so a 150k vocabulary never needs float32
    (N, V) copies of every token at once."""
    v = min(teacher_logits.shape[-1], student_logits.shape[-1])
    teacher_rows, student_rows = teacher_logits[mask][:, :v], student_logits[mask][:, :v]
    total = student_rows.new_zeros((), dtype=torch.float32)
    for i in range(0, teacher_rows.shape[0], chunk):
        t = F.log_softmax(teacher_rows[i:i + chunk].float(), dim=-1)  # (n, V)
        s = F.log_softmax(student_rows[i:i + chunk].float(), dim=-1)  # (n, V)
        total = total + F.kl_div(s, t, log_target=True, reduction="sum")
    return total / max(teacher_rows.shape[0] if items is None else items, 1)


def distill_loss(student, teacher, ids, labels, alpha: float, items: int | None = None):
    """(loss, stats) of one batch: CE on the answer tokens, plus alpha * KL with a teacher.
    `items`: the whole batch's answer tokens when these rows are one rank's share of it (both
    terms are then sums divided by it)."""
    logits = student(input_ids=ids, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != -100
    if items is None:
        ce = F.cross_entropy(logits[mask].float(), targets[mask])
    else:
        ce = F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum") / items
    if teacher is None:
        return ce, {"ce": ce.item()}
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1]  # (B, T-1, V')
    kl = token_kl(teacher_logits, logits, mask, items=items)
    return (1 - alpha) * ce + alpha * kl, {"ce": ce.item(), "kl": kl.item()}


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def use_logits(setting: str, teacher_tok, student_tok) -> bool:
    match = same_tokenizer(teacher_tok, student_tok)
    if setting == "on" and not match:
        raise UserError("distill.logits=on needs the teacher and the student to share a "
                        "tokenizer — they differ; set distill.logits=auto or off")
    return setting == "on" or (setting == "auto" and match)


def teacher_folder(spec: str) -> tuple[Path, bool]:
    """(model folder, may change): a model folder, a run directory's final/ model, else a
    checkpoint's model (the run's latest, or the one named), which that run may prune."""
    path = Path(spec).expanduser()
    folder = locate_model(path, "distill.teacher")[0] if path.is_dir() else path
    if not (folder / "config.json").is_file():
        raise UserError(f"distill.teacher '{spec}' is neither a model folder (config.json) nor a "
                        "run directory with a final/ model or checkpoints")
    return folder, folder != path and folder.name != FINAL


def load_teacher(r):
    """(model, tokenizer, description, folder or None, must be copied to keep)."""
    spec = r.cfg.distill.teacher
    if spec is None:
        return r.model, r.tokenizer, "pipeline model", None, True
    folder, changes = teacher_folder(spec)
    model, tokenizer = load_model(folder, dtype="auto")  # the dtype it was saved in
    return model.to(r.device), tokenizer, str(spec), folder, changes


def build_student(r, teacher_tok):
    """(model, tokenizer): student.path, or from scratch with the teacher's tokenizer; then the
    optional pre-training on demonstrations."""
    s, seed = r.cfg.student, r.cfg.run.seed
    if s.path:
        model, tokenizer = load_model(s.path, dtype=s.dtype, template=s.template)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash_seed(f"{seed}-{r.stage_id}-student"))
            model, tokenizer = build_model(s, teacher_tok), teacher_tok
    if s.lora_r > 0:
        torch.manual_seed(hash_seed(f"{seed}-{r.stage_id}-adapters"))
    model = prepare_model(model, s, r.device)  # the student's dtype, LoRA, checkpointing
    model = dist.shard(model, r.cfg.train.parallel)
    steps = r.cfg.distill.student_pretrain_steps
    if steps > 0:
        pretrain_student(r, model, tokenizer, steps)
    return model, tokenizer


def pretrain_student(r, model, tokenizer, steps: int) -> None:
    """Next-token prediction on the task demonstrations, as the pretrain stage does; logged as
    phase <stage id>_pretrain, never checkpointed (it runs before the stage's checkpoint 0)."""
    if r.task.demonstration is None:
        raise UserError(f"task '{r.task.name}' has no demonstrations for the student to "
                        "pre-train on — set distill.student_pretrain_steps=0")
    p, tag = r.cfg.pretrain, f"{r.cfg.run.seed}-{r.stage_id}-pretrain"
    examples, _ = pt.build_corpus(r.task, tokenizer, r.cfg.demos.n, r.cfg.run.seed)
    train(r, model, batches(examples, p.batch_size, tag, tokenizer.pad_token_id),
          partial(token_loss, model), Hyper.of(p, steps=steps),
          phase=f"{r.stage_id}_pretrain", checkpoint=False)


def start(r):
    """Traces, student, its first evaluation, checkpoint 0. Returns the teacher for the KL term
    (None when there is none)."""
    d, sid, seed = r.cfg.distill, r.stage_id, r.cfg.run.seed
    teacher, t_tok, label, folder, changes = load_teacher(r)
    rows = r.task.train_rows(Random(f"{seed}-{sid}"), d.prompts)
    with r.display.stage(f"{sid}_traces", total=len(rows) * d.samples) as update:
        kept, rollouts, stats = sample_verified(
            make_engine(r.cfg, teacher), t_tok, r.task, rows, samples=d.samples,
            temperature=d.temperature,
            max_new_tokens=d.max_new_tokens, keep_per_prompt=d.keep_per_prompt,
            require_format=True, batch_size=r.cfg.rejection.batch_size,
            seed_tag=f"{seed}-{sid}-traces", update=lambda done, total: update(done))
    r.ledger.clear_phase(sid)
    r.ledger.log_rollouts(sid, 0, rollouts)
    r.ledger.log_metrics(sid, 0, {f"traces_{k}": v for k, v in stats.items()})
    if not kept:
        raise UserError(f"the teacher ({label}) solved none of {len(rollouts)} samples — use a "
                        "stronger teacher or raise distill.prompts / distill.samples")
    data = f"data/{sid}.jsonl"
    dist.on_main(write_jsonl, Path(r.dir) / data, kept)
    student, s_tok = build_student(r, t_tok)
    logits = use_logits(d.logits, t_tok, s_tok)
    if logits and changes:
        dist.on_main(save_folder, dist.plain(teacher), t_tok, Path(r.dir) / "teacher")  # kept
        folder = Path("teacher")  # inside the run directory
    elif folder is not None:
        folder = folder.resolve()
    r.model, r.tokenizer = student, s_tok
    r.state["model_section"] = "student"  # a resume loads the student with its own settings
    before = r.evaluate(f"eval_{sid}_before")
    r.state[sid] = {"teacher": label, "teacher_dir": None if folder is None else str(folder),
                    "data": data, "traces": len(kept), "verified_rate": stats["verified_rate"],
                    "logits": logits, "student_params": n_params(student),
                    "student_before": before}
    r.save(0)
    return teacher if logits else None


def run(r) -> dict:
    """The distillation stage; leaves the student as r.model / r.tokenizer."""
    d, sid = r.cfg.distill, r.stage_id
    resuming = "student_before" in r.state.get(sid, {})  # the student exists: never rebuild
    teacher = None if resuming else start(r)
    info = r.state[sid]
    if info["logits"] and teacher is None:
        folder = Path(info["teacher_dir"])
        teacher, _ = load_model(folder if folder.is_absolute() else Path(r.dir) / folder,
                                dtype="auto")
        teacher.to(r.device)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    convs = read_jsonl(Path(r.dir) / info["data"])
    limit = r.model.config.max_position_embeddings
    if teacher is not None:
        limit = min(limit, teacher.config.max_position_embeddings)
    examples, dropped = prepare(r.tokenizer, convs, limit)
    if not examples:
        raise UserError(f"no teacher trace fits the student's context of {limit} tokens — "
                        "raise student.max_len or lower distill.max_new_tokens")
    loss = train(r, r.model, chat_batches(r, examples, d.batch_size),
                 partial(distill_loss, r.model, teacher, alpha=d.alpha), Hyper.of(d),
                 phase=sid, checkpoint=True)
    return {"teacher": info["teacher"], "traces": info["traces"],
            "verified_rate": info["verified_rate"], "logit_distillation": info["logits"],
            "student_params": info["student_params"], "student_before": info["student_before"],
            "final_loss": loss, "dropped_long": dropped, "steps": d.steps}
