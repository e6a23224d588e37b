"""Atomic checkpoints: everything a resumed run needs, written so that a crash never corrupts one.

Layout under a run directory:

    checkpoints/
        LATEST               text file: the tag of the newest complete checkpoint
        <tag>/               e.g. pretrain-000500, rl-000010
            model/           model.save_pretrained (safetensors + config.json) and tokenizer files
            optimizer.pt     torch.save(optimizer.state_dict()), when an optimizer was given
            rng.pt           python `random`, torch CPU (and CUDA) RNG, numpy, named generators
            state.json       the caller's JSON-able state (phase, step, data position, ...)

How a save stays atomic: everything is written into `checkpoints/.tmp-<tag>-<pid>/` and fsynced,
then that directory is renamed to `<tag>`, then LATEST is replaced (temp file + fsync +
`os.replace`) and the directory fsynced. Only after LATEST names the new checkpoint are older
ones removed (renamed to `.trash-*` first, then deleted), keeping the newest `keep`. A kill at any
moment therefore leaves LATEST naming a complete checkpoint: the new one, or the previous one.
Leftovers of an interrupted save (`.tmp-*`, `.trash-*`, ...) are cleaned by the next save.

Saving a tag that already exists (a resumed run reaching the same step again) renames the old
directory to `.old-<tag>-<pid>`, renames the new one in, then deletes the old one. If a crash
falls between those two renames, `latest_checkpoint` returns the `.old-*` copy (complete) and the
next save moves it back.

Loading is split in two: `load_checkpoint` restores the optimizer, the RNG states and returns the
state dict; the caller loads the weights itself from `model_dir(path)`, e.g.
`AutoModelForCausalLM.from_pretrained(model_dir(path))` (and `AutoTokenizer` from the same folder).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from zeroth.errors import UserError

LATEST = "LATEST"
_TMP, _OLD, _TRASH, _LATEST_TMP = ".tmp-", ".old-", ".trash-", ".LATEST-"


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


def _prune(root: Path, keep: int | None, latest: str) -> None:
    """Keep the `keep` newest complete checkpoints (LATEST always among them); discard others."""
    if keep is None:
        return
    found = [p for p in root.iterdir() if not p.name.startswith(".") and _is_complete(p)]
    found.sort(key=lambda p: ((p / "state.json").stat().st_mtime_ns, p.name), reverse=True)
    kept = {latest}
    for path in found:
        if len(kept) >= keep:
            break
        kept.add(path.name)
    for path in found:
        if path.name not in kept:
            _discard(path)


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    *,
    model: Any,
    tokenizer: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict,
    generators: dict[str, torch.Generator] | None = None,
    keep: int | None = 2,
) -> Path:
    """Write checkpoint `tag` atomically, point LATEST at it, prune to the newest `keep`.

    `keep=None` keeps every checkpoint. Returns the checkpoint directory.
    """
    _check_tag(tag)
    if keep is not None and keep < 1:
        raise UserError(f"checkpoint keep must be >= 1 (or None to keep all), got {keep}")
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
    path = Path(path)
    if not _is_complete(path):
        raise UserError(f"{path} is not a complete checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if optimizer is not None:
        if not (path / "optimizer.pt").is_file():
            raise UserError(f"{path} has no optimizer.pt (it was saved without an optimizer)")
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved)
    if restore_rng:
        states = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        _restore_rng(states, generators)
    return state
