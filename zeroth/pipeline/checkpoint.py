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
            manifest.json    every other file's relative path, size and sha256
        .corrupt-<tag>-<pid>/  a checkpoint found damaged at resume, moved aside (never deleted)

How a save stays atomic: everything is written into `checkpoints/.tmp-<tag>-<pid>/`, listed with
its hashes in manifest.json and fsynced, then that directory is renamed to `<tag>`, then LATEST
is replaced (temp file + fsync + `os.replace`) and the directory fsynced. Only after LATEST names
the new checkpoint are older ones pruned (renamed to `.trash-*` first, then deleted). A kill at
any moment therefore leaves LATEST naming a complete checkpoint: the new one, or the previous
one. Leftovers of an interrupted save (`.tmp-*`, `.trash-*`, ...) are cleaned by the next save.

Which checkpoints stay (`keep`, the run's `run.keep_checkpoints`): 0 (the default) keeps every
one, N > 0 the newest N (by save time) — and whatever N, the checkpoint LATEST names and the last
one (highest step) of every stage, so a run can always resume and each stage's final model stays
at hand. Tags are `<stage id>-<step>`; a tag of another form belongs to no stage. Only the
newest OPTIMIZER_KEPT (two) keep their optimizer state (a resume starts from LATEST; the one
before it is a spare): the others keep the model, RNG and state, which is what evaluation, chat
and export read — for AdamW the optimizer state is twice the weights, so this saves two thirds
of the disk.

What a disk does wrong is survived too. A resume calls `resumable_checkpoint`, which verifies
LATEST's checkpoint against its manifest and, when it is damaged (flipped bytes, a truncated or
lost file) or missing, moves it aside and falls back to the newest intact checkpoint it can
resume from. A save that fills the disk raises `DiskFull` (a one-line UserError saying how much
is free and how much a checkpoint needs), leaving no temp folder and LATEST as it was.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zeroth.errors import UserError
from zeroth.models.locate import (
    LATEST,
    MANIFEST,
    OLD_PREFIX,
    checkpoints_dir,
    file_sha256,
    is_checkpoint,
    latest_path,
    leftover_tag,
    manifest_lists,
    model_dir,
    read_latest,
    verify_checkpoint,
)

if TYPE_CHECKING:
    import torch

_TMP, _TRASH, _LATEST_TMP, _CORRUPT = ".tmp-", ".trash-", ".LATEST-", ".corrupt-"
_TAG = re.compile(r"(.+)-(\d+)")  # <stage id>-<step>
OPTIMIZER_KEPT = 2  # the newest checkpoints that keep their optimizer state
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left", "disk quota exceeded", "os error 28", "errno 28", "os error 122",
               "disk is full")  # the last: SQLite's "database or disk is full"
_LOW_FREE = 1 << 20  # bytes: a write error with less than this free is taken for a full disk


class DiskFull(UserError):
    """A save ran out of disk space (ENOSPC, or EDQUOT over a quota). The message names the
    folder, the space free there and about how much a save needs; what was there before the
    save is intact. `continuing_with(command)` says it with the command that continues."""

    def __init__(self, problem: str, intact: str):
        super().__init__(f"{problem} — free some space and run again; {intact}")
        self.problem, self.intact = problem, intact

    def continuing_with(self, command: str) -> str:
        return f"{self.problem} — free some space and continue with {command}; {self.intact}"


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


def tree_bytes(top: Path) -> int:
    """The total size of the files under `top` (0 when it is gone)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except OSError:
                pass
    return total


def size_text(n: float) -> str:
    """A size for people, in powers of 1000 as `df -H` prints them: 512 B, 3.4 MB, 1.2 GB."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def _free_bytes(folder: Path) -> int | None:
    """The space free to this user where `folder` is (its nearest existing parent), or None."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then what caused it, along its __cause__ / __context__ chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def says_disk_full(exc: BaseException) -> bool:
    """Whether `exc` or what caused it says the disk (or the user's quota) is full: an OSError
    ENOSPC/EDQUOT, or a wrapper whose message says so (safetensors: "No space left on device
    (os error 28)"; SQLite: "database or disk is full")."""
    return any((isinstance(link, OSError) and link.errno in _FULL_ERRNOS)
               or any(text in str(link).lower() for text in _FULL_TEXTS)
               for link in causes(exc))


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a save's `exc` means the disk is full: it says so (`says_disk_full`), or it is
    any write error while under _LOW_FREE is free in `folder` (a torch.save given a path only
    says "unexpected pos ...")."""
    if says_disk_full(exc):
        return True
    if not any(isinstance(link, (OSError, RuntimeError)) for link in causes(exc)):
        return False
    free = _free_bytes(folder)
    return free is not None and free < _LOW_FREE


def _disk_full_error(folder: Path, tmp: Path, what: str, like: Path | None,
                     intact: str) -> DiskFull:
    """The DiskFull of a failed save of `what` into `folder`. Removes the temp folder `tmp`, after
    measuring it; `like`: an earlier complete save, whose size is about what this one needs."""
    if like is not None:
        need = f"about {size_text(tree_bytes(like))} (the size of {like.name})"
    else:
        written = tree_bytes(tmp)
        need = f"more than the {size_text(written)} written before the disk filled" if written \
            else "more than that"
    shutil.rmtree(tmp, ignore_errors=True)
    free = _free_bytes(folder)
    free_text = "an unknown amount" if free is None else size_text(free)
    return DiskFull(f"out of disk space saving {what} in {folder}: {free_text} free there now, "
                    f"it needs {need}", intact)


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
    already there is moved aside first and deleted only once the new one is in. A full disk
    raises DiskFull, the folder already there left as it was."""
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
    except Exception as exc:
        if not is_disk_full(exc, target.parent):
            raise
        before = target if target.is_dir() else None
        intact = f"{target} is as it was" if before else f"nothing was at {target} before"
        raise _disk_full_error(target.parent, tmp, f"{target.name}/", before, intact) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _latest_tmp(root: Path, tag: str) -> Path:
    """A durable temp file naming `tag`, for `os.replace` onto LATEST (removed if it fails)."""
    tmp = root / f"{_LATEST_TMP}{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(tag + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_latest(root: Path, tag: str) -> None:
    """Point LATEST at `tag` atomically and durably."""
    os.replace(_latest_tmp(root, tag), root / LATEST)
    fsync_path(root)


def _write_json(path: Path, data: dict) -> None:
    """Replace the JSON file `path` atomically and durably."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def _write_manifest(top: Path) -> None:
    """List every file under `top` (a checkpoint being written) in its manifest.json: relative
    path, size and sha256. Not fsynced here: the caller fsyncs the whole tree."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            file = Path(dirpath) / name
            rel = file.relative_to(top).as_posix()
            if rel != MANIFEST:
                files[rel] = {"size": file.stat().st_size, "sha256": file_sha256(file)}
    text = json.dumps({"format": 1, "files": files}, indent=1)
    (top / MANIFEST).write_text(text + "\n", encoding="utf-8")


def _drop_optimizer(ckpt: Path) -> None:
    """Remove a checkpoint's optimizer.pt, its manifest entry first (the manifest never lists a
    file that is gone); on a full disk the file goes first, to make room for the manifest."""
    opt = ckpt / "optimizer.pt"
    if not opt.is_file():
        return
    if manifest_lists(ckpt, opt.name):
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
        del manifest["files"][opt.name]
        try:
            _write_json(ckpt / MANIFEST, manifest)
        except OSError as exc:
            if not is_disk_full(exc, ckpt):
                raise
            opt.unlink()
            _write_json(ckpt / MANIFEST, manifest)
    opt.unlink(missing_ok=True)


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


def _complete(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, newest first: by state.json's mtime (save time),
    then name."""
    found = [p for p in root.iterdir() if not p.name.startswith(".") and is_checkpoint(p)]
    found.sort(key=lambda p: ((p / "state.json").stat().st_mtime_ns, p.name), reverse=True)
    return found


def _prune(root: Path, keep: int, latest: str) -> None:
    """Discard the complete checkpoints `keep` does not keep, and the optimizer state of all but
    the newest OPTIMIZER_KEPT (see the module docstring)."""
    names = [p.name for p in _complete(root)]
    removed = set(_to_remove(names, keep, latest))
    for name in removed:
        _discard(root / name)
    kept = [name for name in names if name not in removed]
    for name in kept[OPTIMIZER_KEPT:]:
        if name != latest:
            _drop_optimizer(root / name)


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
    the module docstring). Returns the checkpoint directory. A full disk raises DiskFull, with
    no temp folder left and LATEST as it was.
    """
    _check_tag(tag)
    if keep < 0:
        raise UserError(f"checkpoint keep must be >= 0 (0 keeps every one), got {keep}")
    state_text = json.dumps(state, indent=2)  # fails early, before anything is written
    root = checkpoints_dir(run_dir)
    tmp = root / f"{_TMP}{tag}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(root)
        tmp.mkdir()
        _save_model(model, tokenizer, model_dir(tmp))
        if optimizer is not None:
            saved = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
            _torch_save(saved, tmp / "optimizer.pt")
        _torch_save(_rng_states(generators), tmp / "rng.pt")
        (tmp / "state.json").write_text(state_text + "\n", encoding="utf-8")
        _write_manifest(tmp)
        fsync_tree(tmp)
        _install(root, tmp, tag)
    except Exception as exc:
        if not is_disk_full(exc, root):
            raise
        raise _checkpoint_full(root, tmp, tag) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep, tag)
    return root / tag


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save into a file opened here: a write error then keeps its OSError (ENOSPC) as the
    context of torch's RuntimeError, which given a path says only "unexpected pos ..."."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def _install(root: Path, tmp: Path, tag: str) -> None:
    """Rename the written `tmp` to `root/tag` and point LATEST at it. A failure before LATEST is
    replaced puts things back: the new files into `tmp` (for the caller to remove), and a
    checkpoint of the same tag that was being replaced into its place."""
    final, old = root / tag, root / f"{OLD_PREFIX}{tag}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
        fsync_path(root)
        latest_tmp = _latest_tmp(root, tag)
    except BaseException:
        if final.exists() and not tmp.exists():
            os.replace(final, tmp)
        if old.exists():
            os.replace(old, final)
        raise
    os.replace(latest_tmp, root / LATEST)
    fsync_path(root)
    if old.exists():
        _discard(old)


def _checkpoint_full(root: Path, tmp: Path, tag: str) -> DiskFull:
    """The DiskFull of a failed save of checkpoint `tag` (removes `tmp`, after measuring it)."""
    found = _complete(root) if root.is_dir() else []
    latest = read_latest(root) if root.is_dir() else None
    if latest is None:
        intact = "no checkpoint was complete before this one"
    else:
        intact = f"the last complete checkpoint, {latest} (LATEST), is intact"
    return _disk_full_error(root, tmp, f"checkpoint {tag}", found[0] if found else None, intact)


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


def _can_resume(ckpt: Path) -> bool:
    """Whether a run can resume from an intact checkpoint: it has its optimizer state (listed in
    its manifest, where it has one), or it is a stage's step-0 save, which holds none."""
    if (ckpt / "optimizer.pt").is_file() and manifest_lists(ckpt, "optimizer.pt") is not False:
        return True
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return state.get("step", stage_and_step(ckpt.name)[1]) == 0


def _fallback(root: Path, skip: str) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint but `skip` that is intact and resumable (None if none),
    and the damaged ones met before it, with what is wrong with each."""
    damaged = []
    for ckpt in _complete(root):
        if ckpt.name == skip:
            continue
        problem = verify_checkpoint(ckpt)
        if problem is not None:
            damaged.append((ckpt, problem))
        elif _can_resume(ckpt):
            return ckpt, damaged
    return None, damaged


def _move_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `.corrupt-<tag>-<pid>` beside it (a dot name: no listing,
    pruning or cleaning sees it), to keep the evidence; returns where it went."""
    name = path.name
    tag = leftover_tag(name, OLD_PREFIX) if name.startswith(OLD_PREFIX) else name
    base = f"{_CORRUPT}{tag}-{os.getpid()}"
    dest, n = path.parent / base, 0
    while dest.exists():
        n += 1
        dest = path.parent / f"{base}.{n}"
    os.replace(path, dest)
    fsync_path(path.parent)
    return dest


def _latest_problem(root: Path) -> tuple[str | None, Path | None, str | None]:
    """(LATEST's tag, where that checkpoint is, what is wrong with it or None); all None when
    there is no LATEST (a fresh run)."""
    try:
        raw = (root / LATEST).read_bytes()
    except FileNotFoundError:
        return None, None, None
    tag = raw.decode("utf-8", "replace").strip()
    if not tag or tag != Path(tag).name or tag.startswith("."):
        return "LATEST", None, f"LATEST holds {raw[:40]!r}, not a checkpoint's name"
    path = latest_path(root, tag)
    return tag, path, verify_checkpoint(path)


def resumable_checkpoint(run_dir: str | Path) -> tuple[Path | None, str | None]:
    """The checkpoint a run resumes from, and a warning to show (None when all is well).

    LATEST's checkpoint when it verifies (`verify_checkpoint`); None, None without LATEST.
    When it is damaged, missing or partial: the newest other checkpoint that verifies and can
    resume (has its optimizer state, or is a stage's step-0 save). The damaged ones are moved
    aside as `.corrupt-<tag>-<pid>` (kept, not deleted) and LATEST is rewritten to name the
    fallback. UserError when no checkpoint is intact. Moves files: a resume alone calls this;
    readers use `locate.latest_checkpoint`.
    """
    root = checkpoints_dir(run_dir)
    tag, path, problem = _latest_problem(root)
    if problem is None:
        return path, None
    found, damaged = _fallback(root, tag)
    if found is None:
        also = "".join(f"; {p.name} is damaged too: {why}" for p, why in damaged)
        raise UserError(f"checkpoint {tag} in {root} is damaged: {problem}{also} — there is no "
                        "intact checkpoint to resume from (start the run afresh in a new "
                        "directory, or restore the checkpoints from a backup)")
    if path is not None and path.exists():
        damaged.insert(0, (path, problem))
        notes = []
    else:
        notes = [f"checkpoint {tag} (LATEST) is unusable: {problem}"]
    for bad, why in damaged:
        notes.append(f"checkpoint {bad.name} is damaged: {why} — moved it aside to "
                     f"{_move_aside(bad)}")
    _write_latest(root, found.name)
    notes.append(f"resuming from {found.name}, the newest intact checkpoint (LATEST now names it)")
    return found, "; ".join(notes)
