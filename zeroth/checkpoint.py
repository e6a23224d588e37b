"""Atomic checkpoints: everything a resumed run needs, written so that a crash never corrupts one.

Layout under a run directory:

    checkpoints/
        LATEST               text file: the tag of the newest complete checkpoint
        <tag>/               e.g. pretrain-000500, rl-000010
            model/           model.save_pretrained (safetensors + config.json) and tokenizer files
            optimizer.pt     torch.save(optimizer.state_dict()), when an optimizer was given
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

if TYPE_CHECKING:
    import torch

LATEST = "LATEST"
FINAL = "final"  # a run's finished model, beside checkpoints/
_TMP, _OLD, _TRASH, _LATEST_TMP = ".tmp-", ".old-", ".trash-", ".LATEST-"
_TAG = re.compile(r"(.+)-(\d+)")  # <stage id>-<step>
OPTIMIZER_KEPT = 2  # the newest checkpoints that keep their optimizer state


def model_dir(path: str | Path) -> Path:
    """The Hugging Face model folder of a checkpoint: load it with `from_pretrained`."""
    return Path(path) / "model"


def _root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file()


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
    self-contained, which `zeroth.models.load_model` reads back exactly."""
    from zeroth.models import save_model

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


def _read_latest(root: Path) -> str | None:
    try:
        tag = (root / LATEST).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return tag or None


def _split_leftover(name: str, prefix: str) -> str:
    """The tag inside a leftover name `<prefix><tag>-<pid>`."""
    return name[len(prefix) :].rsplit("-", 1)[0]


def _clean_leftovers(root: Path) -> None:
    """Remove what interrupted saves left behind; put back a replaced checkpoint if needed."""
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name.startswith(_OLD):
            final = root / _split_leftover(name, _OLD)
            if not _is_complete(final) and _is_complete(entry):
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
    found = [p for p in root.iterdir() if not p.name.startswith(".") and _is_complete(p)]
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
    optimizer: torch.optim.Optimizer | None = None,
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
    root = _root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)

    tmp = root / f"{_TMP}{tag}-{os.getpid()}"
    tmp.mkdir()
    try:
        _save_model(model, tokenizer, model_dir(tmp))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(_rng_states(generators), tmp / "rng.pt")
        (tmp / "state.json").write_text(state_text + "\n", encoding="utf-8")
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    final = root / tag
    old = root / f"{_OLD}{tag}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(root)
    _write_latest(root, tag)
    if old.exists():
        _discard(old)
    _prune(root, keep, tag)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint named by LATEST, or None when there is no LATEST.

    Raises UserError when LATEST names a checkpoint that is missing or lacks state.json.
    """
    root = _root(run_dir)
    tag = _read_latest(root)
    if tag is None:
        return None
    path = root / tag
    if _is_complete(path):
        return path
    # A save replacing this same tag was killed between its two renames: the old copy is whole.
    for old in sorted(root.iterdir()):
        is_old = old.name.startswith(_OLD) and _split_leftover(old.name, _OLD) == tag
        if is_old and _is_complete(old):
            return old
    raise UserError(f"{root / LATEST} names checkpoint {tag!r}, but {path} is missing or partial")


def is_model(folder: Path) -> bool:
    """A Hugging Face model folder, or a LoRA adapter folder (adapter_config.json)."""
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def is_run_dir(path: str | Path) -> bool:
    """A zeroth run directory: config.yaml, final/ or checkpoints/ inside (and no model)."""
    path = Path(path)
    return not is_model(path) and ((path / "config.yaml").is_file() or
                                    (path / FINAL).is_dir() or (path / "checkpoints").is_dir())


def locate_model(path: str | Path, what: str = "model path") -> tuple[Path, Path | None]:
    """(model folder, run directory or None) behind an existing folder `path`: a model folder as
    it is; a checkpoint's model/; a run directory's final/ when the run is finished, else its
    LATEST checkpoint's model/ (UserError, naming `what`, when it has neither yet). Any other
    folder comes back as it is, for the caller to judge."""
    path = Path(path).expanduser()
    if is_model(path):
        return path, None
    if _is_complete(path) and model_dir(path).is_dir():  # a checkpoint
        return model_dir(path), None
    if not is_run_dir(path):
        return path, None
    final = is_model(path / FINAL)
    if final and (path / "summary.json").is_file():
        return path / FINAL, path
    ckpt = latest_checkpoint(path)  # a finished run resumed for more steps is ahead of final/
    if ckpt is None and final:
        return path / FINAL, path
    if ckpt is None:
        raise UserError(f"{what} '{path}': the run has no final model and no checkpoint yet — "
                        "use it once its first checkpoint is written")
    return model_dir(ckpt), path


def load_checkpoint(
    path: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> dict:
    """Restore a checkpoint's optimizer and RNG states; return its state dict (state.json).

    The model is NOT loaded here: load it with
    `AutoModelForCausalLM.from_pretrained(model_dir(path))`.
    """
    import torch

    path = Path(path)
    if not _is_complete(path):
        raise UserError(f"{path} is not a complete checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if optimizer is not None:
        if not (path / "optimizer.pt").is_file():
            raise UserError(f"{path} has no optimizer.pt (saved without an optimizer, or an older "
                            "checkpoint whose optimizer state was pruned) — resume from LATEST")
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved)
    if restore_rng:
        states = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        _restore_rng(states, generators)
    return state
