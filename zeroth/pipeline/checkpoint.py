"""Atomic checkpoints: everything a resumed run needs, written so that a crash never corrupts one.

Layout under a run directory:

    checkpoints/
        LATEST               text file: the tag of the newest complete checkpoint
        <tag>/               e.g. pretrain-000500, rl-000010
            model/           model.save_pretrained (safetensors + config.json) and tokenizer files
            optimizer.pt     torch.save(optimizer.state_dict()), when an optimizer was given
                             (or the whole state by parameter name, from FSDP)
                             (kept in the newest OPTIMIZER_KEPT checkpoints only)
            rng.pt           python `random`, torch CPU (and CUDA) RNG, numpy, named generators
            state.json       the caller's JSON-able state (phase, step, data position, ...)

How a save stays atomic: everything is written into `checkpoints/.tmp-<tag>-<pid>/` and fsynced,
then that directory is renamed to `<tag>`, then LATEST is replaced (temp file + fsync +
`os.replace`) and the directory fsynced. Only after LATEST names the new checkpoint are older
ones pruned (renamed to `.trash-*` first, then deleted). A kill at any moment therefore leaves
LATEST naming a complete checkpoint: the new one, or the previous one. Leftovers of an
interrupted save (`.tmp-*`, `.trash-*`, ...) are cleaned by the next save.

Which checkpoints stay (`keep`, the run's `run.keep_checkpoints`): 0 (the default) keeps every
one, N > 0 the newest N (by save time) — and whatever N, the checkpoint LATEST names and the last
one (highest step) of every stage, so a run can always resume and each stage's final model stays
at hand. Tags are `<stage id>-<step>`; a tag of another form belongs to no stage. Only the
newest OPTIMIZER_KEPT (two) keep their optimizer state (a resume starts from LATEST; the one
before it is a spare): the others keep the model, RNG and state, which is what evaluation, chat
and export read — for AdamW the optimizer state is twice the weights, so this saves two thirds
of the disk.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zeroth.errors import UserError
from zeroth.models.locate import (
    LATEST,
    OLD_PREFIX,
    checkpoints_dir,
    is_checkpoint,
    leftover_tag,
    model_dir,
)

if TYPE_CHECKING:
    import torch

_TMP, _TRASH, _LATEST_TMP = ".tmp-", ".trash-", ".LATEST-"
_TAG = re.compile(r"(.+)-(\d+)")  # <stage id>-<step>
OPTIMIZER_KEPT = 2  # the newest checkpoints that keep their optimizer state


def fsync_path(path: Path) -> None:
    """fsync one file or directory (directories: so that renames inside them are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(top: Path) -> None:
    """fsync every file and directory under `top`, `top` included."""
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _check_tag(tag: str) -> None:
    if not tag or tag != Path(tag).name or tag.startswith(".") or tag in (LATEST, "."):
        raise UserError(f"checkpoint tag {tag!r} is not a plain directory name (e.g. rl-000010)")


def _numpy() -> Any:
    """The numpy module, or None where it is not installed."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _rng_states(generators: dict[str, torch.Generator] | None) -> dict:
    """Every RNG state a resume needs, in types that `torch.load(weights_only=True)` accepts."""
    import torch

    states: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    np = _numpy()
    if np is not None:
        state = np.random.get_state(legacy=False)
        states["numpy"] = {
            "bit_generator": state["bit_generator"],
            "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
            "pos": int(state["state"]["pos"]),
            "has_gauss": int(state["has_gauss"]),
            "gauss": float(state["gauss"]),
        }
    return states


def _restore_rng(states: dict, generators: dict[str, torch.Generator] | None) -> None:
    """Put back the states saved by `_rng_states`; a named generator missing is an error."""
    missing = sorted(set(generators or {}) - set(states["generators"]))
    if missing:
        saved = sorted(states["generators"])
        raise UserError(f"checkpoint has no RNG state for generators {missing} (it has {saved})")
    import torch

    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np = _numpy()
    if "numpy" in states and np is not None:
        saved = states["numpy"]
        key = saved["key"].numpy().astype(np.uint32)
        np.random.set_state(
            {
                "bit_generator": saved["bit_generator"],
                "state": {"key": key, "pos": saved["pos"]},
                "has_gauss": saved["has_gauss"],
                "gauss": saved["gauss"],
            }
        )
    for name, gen in (generators or {}).items():
        gen.set_state(states["generators"][name])


def _save_model(model: Any, tokenizer: Any, target: Path) -> None:
    """save_pretrained as safetensors; a LoRA (peft) model as its base model plus the adapter,
    self-contained, which `zeroth.models.hf.load_model` reads back exactly."""
    from zeroth.models.hf import save_model

    save_model(model, tokenizer, target)


def save_folder(model: Any, tokenizer: Any, target: str | Path) -> Path:
    """A model folder (the reference policy, a teacher, final/) written atomically and
    durably: saved into a temp folder beside `target`, fsynced, renamed into place; a folder
    already there is moved aside first and deleted only once the new one is in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        _save_model(model, tokenizer, tmp)
        fsync_tree(tmp)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_path(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_latest(root: Path, tag: str) -> None:
    """Point LATEST at `tag` atomically and durably."""
    tmp = root / f"{_LATEST_TMP}{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(tag + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    fsync_path(root)


def _clean_leftovers(root: Path) -> None:
    """Remove what interrupted saves left behind; put back a replaced checkpoint if needed."""
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name.startswith(OLD_PREFIX):
            final = root / leftover_tag(name, OLD_PREFIX)
            if not is_checkpoint(final) and is_checkpoint(entry):
                if final.exists():
                    _discard(final)
                os.replace(entry, final)  # a crash fell between "old away" and "new in"
                fsync_path(root)
            else:
                _discard(entry)
        elif name.startswith((_TMP, _TRASH)):
            shutil.rmtree(entry, ignore_errors=True)
        elif name.startswith(_LATEST_TMP):
            entry.unlink(missing_ok=True)


def _discard(path: Path) -> None:
    """Delete a directory: rename it to `.trash-*` first, so no half-deleted dir looks real."""
    if not path.name.startswith("."):
        trash = path.parent / f"{_TRASH}{path.name}-{os.getpid()}"
        os.replace(path, trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


def stage_and_step(tag: str) -> tuple[str | None, int | None]:
    """(stage id, step) of a tag `<stage id>-<step>`; (None, None) for a tag of another form."""
    named = _TAG.fullmatch(tag)
    return (named[1], int(named[2])) if named else (None, None)


def _protected(names: list[str], latest: str) -> set[str]:
    """The checkpoints no policy removes: LATEST's and the last (highest step) of each stage."""
    last: dict[str, tuple[int, str]] = {}
    for name in names:
        stage, step = stage_and_step(name)
        if stage is not None and step >= last.get(stage, (-1, ""))[0]:
            last[stage] = (step, name)
    return {latest} | {name for _, name in last.values()}


def _to_remove(names: list[str], keep: int, latest: str) -> list[str]:
    """Which of `names` (complete checkpoints, newest first) `keep` removes (0: none)."""
    if keep == 0:
        return []
    kept = _protected(names, latest) | set(names[:keep])
    return [name for name in names if name not in kept]


def _prune(root: Path, keep: int, latest: str) -> None:
    """Discard the complete checkpoints `keep` does not keep, and the optimizer state of all but
    the newest OPTIMIZER_KEPT (see the module docstring)."""
    found = [p for p in root.iterdir() if not p.name.startswith(".") and is_checkpoint(p)]
    found.sort(key=lambda p: ((p / "state.json").stat().st_mtime_ns, p.name), reverse=True)
    names = [p.name for p in found]
    removed = set(_to_remove(names, keep, latest))
    for name in removed:
        _discard(root / name)
    kept = [name for name in names if name not in removed]
    for name in kept[OPTIMIZER_KEPT:]:
        if name != latest:
            (root / name / "optimizer.pt").unlink(missing_ok=True)


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    *,
    model: Any,
    tokenizer: Any = None,
    optimizer: torch.optim.Optimizer | dict | None = None,
    state: dict,
    generators: dict[str, torch.Generator] | None = None,
    keep: int = 0,
) -> Path:
    """Write checkpoint `tag` atomically, point LATEST at it, prune to the newest `keep`.

    `keep`: 0 keeps every checkpoint; N > 0 the newest N, LATEST's and each stage's last (see
    the module docstring). Returns the checkpoint directory.
    """
    import torch

    _check_tag(tag)
    if keep < 0:
        raise UserError(f"checkpoint keep must be >= 0 (0 keeps every one), got {keep}")
    state_text = json.dumps(state, indent=2)  # fails early, before anything is written
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)

    tmp = root / f"{_TMP}{tag}-{os.getpid()}"
    tmp.mkdir()
    try:
        _save_model(model, tokenizer, model_dir(tmp))
        if optimizer is not None:
            saved = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
            torch.save(saved, tmp / "optimizer.pt")
        torch.save(_rng_states(generators), tmp / "rng.pt")
        (tmp / "state.json").write_text(state_text + "\n", encoding="utf-8")
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    final = root / tag
    old = root / f"{OLD_PREFIX}{tag}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(root)
    _write_latest(root, tag)
    if old.exists():
        _discard(old)
    _prune(root, keep, tag)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    model: Any = None,
) -> dict:
    """Restore a checkpoint's optimizer and RNG states; return its state dict (state.json).

    The model is NOT loaded here: load it with
    `AutoModelForCausalLM.from_pretrained(model_dir(path))`.
    """
    import torch

    path = Path(path)
    if not is_checkpoint(path):
        raise UserError(f"{path} is not a complete checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if optimizer is not None:
        if not (path / "optimizer.pt").is_file():
            raise UserError(f"{path} has no optimizer.pt (saved without an optimizer, or an older "
                            "checkpoint whose optimizer state was pruned) — resume from LATEST")
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        if model is None:
            optimizer.load_state_dict(saved)
        else:  # the model the optimizer trains: FSDP loads each rank's shard
            from zeroth.pipeline.dist import load_optimizer_state

            load_optimizer_state(model, optimizer, saved)
    if restore_rng:
        states = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        _restore_rng(states, generators)
    return state
