"""Where a model is: a model folder, a checkpoint's model/, or a run directory's final/ or
latest checkpoint. Reading the run layout only (zeroth.pipeline.checkpoint writes it); no torch.

    runs/<name>/checkpoints/LATEST          the tag of the newest complete checkpoint
    runs/<name>/checkpoints/<tag>/model/    a Hugging Face folder; <tag>/state.json
    runs/<name>/checkpoints/<tag>/manifest.json  each file's size and sha256 (`verify_checkpoint`)
    runs/<name>/final/                      the finished run's model (with summary.json beside)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from zeroth.errors import UserError

LATEST = "LATEST"
FINAL = "final"  # a run's finished model, beside checkpoints/
OLD_PREFIX = ".old-"  # a checkpoint being replaced keeps its old copy under this prefix
MANIFEST = "manifest.json"  # in a checkpoint: {"files": {relative path: {"size", "sha256"}}}


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


def latest_path(root: Path, tag: str) -> Path:
    """Where LATEST's `tag` is: `root/tag`, or the whole old copy a save replacing this same tag
    left when it was killed between its two renames. `root/tag` (missing or partial) when
    neither is complete."""
    path = root / tag
    if is_checkpoint(path) or not root.is_dir():
        return path
    for old in sorted(root.iterdir()):
        is_old = old.name.startswith(OLD_PREFIX) and leftover_tag(old.name, OLD_PREFIX) == tag
        if is_old and is_checkpoint(old):
            return old
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint named by LATEST, or None when there is no LATEST.

    Raises UserError when LATEST names a checkpoint that is missing or lacks state.json. Reads
    only (for eval, chat, viewers): a resume calls `checkpoint.resumable_checkpoint`, which
    verifies and falls back.
    """
    root = checkpoints_dir(run_dir)
    tag = read_latest(root)
    if tag is None:
        return None
    path = latest_path(root, tag)
    if is_checkpoint(path):
        return path
    raise UserError(f"{root / LATEST} names checkpoint {tag!r}, but {path} is missing or partial")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest_files(path: Path) -> dict | str | None:
    """A checkpoint's manifest entries; None without a manifest; a problem text if unreadable."""
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    try:
        files = json.loads(text)["files"]
        if all(isinstance(v["size"], int) and isinstance(v["sha256"], str)
               for v in files.values()):
            return files
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return f"{MANIFEST} is not a valid manifest"


def manifest_lists(path: Path, rel: str) -> bool | None:
    """Whether checkpoint `path`'s manifest lists file `rel`; None without a usable manifest."""
    files = _manifest_files(path)
    return rel in files if isinstance(files, dict) else None


def _state_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint's state.json, or None when it holds a JSON object."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "state.json is missing (a partial checkpoint)"
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        return f"state.json is not valid JSON ({type(e).__name__})"
    return None if isinstance(state, dict) else "state.json does not hold a JSON object"


def verify_checkpoint(path: str | Path) -> str | None:
    """None when checkpoint `path` is whole: every file its manifest lists is there with its
    size and sha256, and state.json is a JSON object. Else the first problem, in a few words
    ("model/model.safetensors: 12345 bytes, expected 67890"). A checkpoint saved before
    manifests existed is accepted unverified (only its state.json is checked)."""
    path = Path(path)
    if not path.is_dir():
        return "the checkpoint is missing"
    files = _manifest_files(path)
    if isinstance(files, str):
        return files
    for rel, want in sorted((files or {}).items()):  # the cheap checks first
        try:
            size = (path / rel).stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if size != want["size"]:
            return f"{rel}: {size} bytes, expected {want['size']}"
    problem = _state_problem(path)
    if problem is not None:
        return problem
    for rel, want in sorted((files or {}).items()):
        if file_sha256(path / rel) != want["sha256"]:
            return f"{rel}: sha256 differs (contents changed on disk)"
    return None


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
