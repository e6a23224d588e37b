"""Where a model is: a model folder, a checkpoint's model/, or a run directory's final/ or
latest checkpoint. Reading the run layout only (zeroth.pipeline.checkpoint writes it); no torch.

    runs/<name>/checkpoints/LATEST          the tag of the newest complete checkpoint
    runs/<name>/checkpoints/<tag>/model/    a Hugging Face folder; <tag>/state.json
    runs/<name>/final/                      the finished run's model (with summary.json beside)
"""

from __future__ import annotations

from pathlib import Path

from zeroth.errors import UserError

LATEST = "LATEST"
FINAL = "final"  # a run's finished model, beside checkpoints/
OLD_PREFIX = ".old-"  # a checkpoint being replaced keeps its old copy under this prefix


def model_dir(path: str | Path) -> Path:
    """The Hugging Face model folder of a checkpoint: load it with `from_pretrained`."""
    return Path(path) / "model"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file()


def read_latest(root: Path) -> str | None:
    try:
        tag = (root / LATEST).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return tag or None


def leftover_tag(name: str, prefix: str) -> str:
    """The tag inside a leftover name `<prefix><tag>-<pid>`."""
    return name[len(prefix) :].rsplit("-", 1)[0]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint named by LATEST, or None when there is no LATEST.

    Raises UserError when LATEST names a checkpoint that is missing or lacks state.json.
    """
    root = checkpoints_dir(run_dir)
    tag = read_latest(root)
    if tag is None:
        return None
    path = root / tag
    if is_checkpoint(path):
        return path
    # A save replacing this same tag was killed between its two renames: the old copy is whole.
    for old in sorted(root.iterdir()):
        is_old = old.name.startswith(OLD_PREFIX) and leftover_tag(old.name, OLD_PREFIX) == tag
        if is_old and is_checkpoint(old):
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
    if is_checkpoint(path) and model_dir(path).is_dir():  # a checkpoint
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
