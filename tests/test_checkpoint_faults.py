"""Tests of checkpoints surviving disk faults: manifests that catch damaged files, a resume that
falls back past a damaged checkpoint, and a full disk that costs nothing already saved."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_checkpoint import stepped_optimizer, tiny_model, tiny_tokenizer

import zeroth.models.hf
from zeroth.errors import UserError
from zeroth.models.locate import latest_checkpoint, verify_checkpoint
from zeroth.pipeline import checkpoint
from zeroth.pipeline.checkpoint import (
    DiskFull,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
    save_folder,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    """A tiny model, its tokenizer and an AdamW that took a step (shared: saving reads only)."""
    model = tiny_model()
    return model, tiny_tokenizer(), stepped_optimizer(model)


def _save(run_dir: Path, trained, steps, *, optimizer: bool = True) -> None:
    """Save rl-<step> for each step, as a run does (state.json's step is the step)."""
    model, tok, opt = trained
    for step in steps:
        save_checkpoint(run_dir, f"rl-{step:06d}", model=model, tokenizer=tok,
                        optimizer=opt if optimizer else None, state={"step": step})


def _listing(run_dir: Path) -> list[str]:
    return sorted(os.listdir(run_dir / "checkpoints"))


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "LATEST").read_text().strip()


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


CORRUPTIONS = {  # what a disk does: file (under the checkpoint) -> damage, expected problem
    "flipped bytes": ("model/model.safetensors", _flip_bytes, "model/model.safetensors: sha256"),
    "truncated": ("optimizer.pt", _truncate, "optimizer.pt: "),
    "lost file": ("rng.pt", Path.unlink, "rng.pt is missing"),
    "emptied": ("state.json", lambda p: p.write_bytes(b""), "state.json: 0 bytes, expected"),
}


def test_manifest_lists_every_file_with_size_and_hash(tmp_path, trained):
    _save(tmp_path, trained, [1])
    ckpt = tmp_path / "checkpoints" / "rl-000001"
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"manifest.json"}
    assert {"model/model.safetensors", "model/config.json", "optimizer.pt", "rng.pt",
            "state.json"} <= set(files)
    for rel, entry in files.items():
        assert entry["size"] == (ckpt / rel).stat().st_size
        assert len(entry["sha256"]) == 64
    assert verify_checkpoint(ckpt) is None
    assert verify_checkpoint(tmp_path / "checkpoints" / "nope") == "the checkpoint is missing"


@pytest.mark.parametrize("damage", CORRUPTIONS)
def test_damaged_latest_falls_back_to_the_previous_one(tmp_path, trained, damage):
    rel, corrupt, expected = CORRUPTIONS[damage]
    _save(tmp_path, trained, [1, 2])
    root = tmp_path / "checkpoints"
    corrupt(root / "rl-000002" / rel)
    assert expected in verify_checkpoint(root / "rl-000002")
    assert latest_checkpoint(tmp_path) == root / "rl-000002"  # readers read only

    path, warning = resumable_checkpoint(tmp_path)
    aside = f".corrupt-rl-000002-{os.getpid()}"
    assert path == root / "rl-000001"
    assert expected in warning and "rl-000002 is damaged" in warning
    assert str(root / aside) in warning and "resuming from rl-000001" in warning
    assert _listing(tmp_path) == [aside, "LATEST", "rl-000001"]
    assert _latest(tmp_path) == "rl-000001"
    assert verify_checkpoint(root / aside) is not None  # the evidence, kept as it was
    opt = torch.optim.AdamW(trained[0].parameters(), lr=1e-3)
    assert load_checkpoint(path, optimizer=opt, restore_rng=False) == {"step": 1}
    assert resumable_checkpoint(tmp_path) == (path, None)

    _save(tmp_path, trained, [2])  # the resumed run saves the damaged one's tag again
    assert _listing(tmp_path) == [aside, "LATEST", "rl-000001", "rl-000002"]
    assert resumable_checkpoint(tmp_path) == (root / "rl-000002", None)


def test_no_intact_checkpoint_with_optimizer_state_is_an_error(tmp_path, trained):
    _save(tmp_path, trained, [1, 2, 3])  # rl-000001 keeps no optimizer state (OPTIMIZER_KEPT)
    root = tmp_path / "checkpoints"
    assert not (root / "rl-000001" / "optimizer.pt").exists()
    assert verify_checkpoint(root / "rl-000001") is None  # its manifest lost the entry too
    _flip_bytes(root / "rl-000003" / "model" / "model.safetensors")
    _truncate(root / "rl-000002" / "optimizer.pt")
    before = _listing(tmp_path)
    with pytest.raises(UserError, match="no intact checkpoint to resume from") as caught:
        resumable_checkpoint(tmp_path)
    assert "rl-000003 in" in str(caught.value) and "rl-000002 is damaged too" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert _listing(tmp_path) == before and _latest(tmp_path) == "rl-000003"  # nothing moved


def test_a_stages_step_0_save_is_resumable_without_optimizer_state(tmp_path, trained):
    _save(tmp_path, trained, [0], optimizer=False)
    _save(tmp_path, trained, [1, 2, 3])
    root = tmp_path / "checkpoints"
    for tag in ["rl-000002", "rl-000003"]:
        _truncate(root / tag / "optimizer.pt")
    path, warning = resumable_checkpoint(tmp_path)
    assert path == root / "rl-000000" and _latest(tmp_path) == "rl-000000"
    assert "rl-000003 is damaged" in warning and "rl-000002 is damaged" in warning
    assert [n for n in _listing(tmp_path) if not n.startswith(".")] == [
        "LATEST", "rl-000000", "rl-000001"]  # rl-000001: intact, but no optimizer state


def test_checkpoint_saved_before_manifests_is_accepted(tmp_path, trained):
    _save(tmp_path, trained, [1, 2])
    root = tmp_path / "checkpoints"
    for tag in ["rl-000001", "rl-000002"]:
        (root / tag / "manifest.json").unlink()
    assert verify_checkpoint(root / "rl-000002") is None
    assert resumable_checkpoint(tmp_path) == (root / "rl-000002", None)
    (root / "rl-000002" / "state.json").write_text("{")  # what an old one can still be checked for
    assert verify_checkpoint(root / "rl-000002") == "state.json is not valid JSON (JSONDecodeError)"
    path, warning = resumable_checkpoint(tmp_path)
    assert path == root / "rl-000001" and "not valid JSON" in warning


@pytest.mark.parametrize("partial", [False, True])
def test_latest_naming_a_missing_or_partial_checkpoint_falls_back(tmp_path, trained, partial):
    _save(tmp_path, trained, [1])
    root = tmp_path / "checkpoints"
    (root / "LATEST").write_text("rl-000002\n")
    if partial:
        (root / "rl-000002" / "model").mkdir(parents=True)
    with pytest.raises(UserError, match="missing or partial"):
        latest_checkpoint(tmp_path)
    path, warning = resumable_checkpoint(tmp_path)
    assert path == root / "rl-000001" and _latest(tmp_path) == "rl-000001"
    assert "rl-000002" in warning and "resuming from rl-000001" in warning
    hidden = [n for n in _listing(tmp_path) if n.startswith(".corrupt-rl-000002-")]
    assert len(hidden) == int(partial)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_unexpected_pos(*args, **kwargs):
    """What torch.save raises on a full disk: the OSError only as its context."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


class SafetensorError(Exception):
    """Like safetensors' own: no errno, only the message."""


def _safetensors_full(model, tokenizer, folder):
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "model.safetensors").write_bytes(b"\0" * 5000)  # part written
    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


def _over_quota(*args, **kwargs):
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


FULL = {  # where a save meets the full disk -> (object, attribute, replacement)
    "torch.save ENOSPC": (torch, "save", _enospc),
    "torch.save wrapped": (torch, "save", _torch_unexpected_pos),
    "model save": (zeroth.models.hf, "save_model", _safetensors_full),
    "quota": (torch, "save", _over_quota),
    "LATEST write": (checkpoint, "_latest_tmp", _enospc),
}


@pytest.mark.parametrize("where", FULL)
@pytest.mark.parametrize("tag", ["rl-000002", "rl-000001"])  # a new one; one being replaced
def test_full_disk_raises_disk_full_and_loses_nothing(tmp_path, trained, monkeypatch, where, tag):
    _save(tmp_path, trained, [1])
    root = tmp_path / "checkpoints"
    monkeypatch.setattr(*FULL[where])
    model, tok, opt = trained
    with pytest.raises(DiskFull) as caught:
        save_checkpoint(tmp_path, tag, model=model, tokenizer=tok, optimizer=opt,
                        state={"step": 99})
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert f"saving checkpoint {tag} in {root}:" in message and "free there now" in message
    assert "needs about" in message and "(the size of rl-000001)" in message
    assert "the last complete checkpoint, rl-000001 (LATEST), is intact" in message
    assert _listing(tmp_path) == ["LATEST", "rl-000001"] and _latest(tmp_path) == "rl-000001"
    monkeypatch.undo()
    assert resumable_checkpoint(tmp_path) == (root / "rl-000001", None)
    assert load_checkpoint(root / "rl-000001", restore_rng=False) == {"step": 1}


def test_full_disk_at_the_first_save_measures_what_it_wrote(tmp_path, trained, monkeypatch):
    monkeypatch.setattr(zeroth.models.hf, "save_model", _safetensors_full)
    with pytest.raises(DiskFull, match=r"more than the 5\.0 kB written .* no checkpoint was "
                                       "complete before this one"):
        save_checkpoint(tmp_path, "rl-000001", model=trained[0], state={"step": 1})
    assert _listing(tmp_path) == []


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path, trained, monkeypatch):
    _save(tmp_path, trained, [1])

    def broken(*args, **kwargs):
        raise ValueError("not a disk problem")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(ValueError, match="not a disk problem"):
        _save(tmp_path, trained, [2])
    assert _listing(tmp_path) == ["LATEST", "rl-000001"]


def test_save_folder_on_a_full_disk_keeps_the_old_folder(tmp_path, trained, monkeypatch):
    model, tok, _ = trained
    final = save_folder(model, tok, tmp_path / "final")
    config = (final / "config.json").read_bytes()
    monkeypatch.setattr(zeroth.models.hf, "save_model", _safetensors_full)
    with pytest.raises(DiskFull, match=r"saving final/ in .*free there now, it needs about .* "
                                       r"\(the size of final\) .* is as it was"):
        save_folder(model, tok, final)
    assert sorted(os.listdir(tmp_path)) == ["final"]
    assert (final / "config.json").read_bytes() == config


# Saves checkpoints into a tiny tmpfs until the disk is really full, then reports what it sees.
_FILL = textwrap.dedent(
    """
    import json, os, sys
    import zeroth  # first: it hides mismatched torchvision builds from transformers
    import torch, transformers
    from zeroth.models.locate import latest_checkpoint
    from zeroth.pipeline.checkpoint import DiskFull, resumable_checkpoint, save_checkpoint
    from zeroth.pipeline.checkpoint import save_folder
    run_dir = sys.argv[1]
    config = transformers.Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.arange(8).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    out = {"saved": 0}
    for step in range(1, 200):
        try:
            save_checkpoint(run_dir, f"rl-{step:06d}", model=model, optimizer=opt,
                            state={"step": step})
        except DiskFull as e:
            out["message"] = str(e)
            break
        out["saved"] = step
    fd = os.open(os.path.join(run_dir, "filler"), os.O_WRONLY | os.O_CREAT)
    try:  # fill what the failed save freed
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    os.close(fd)
    try:
        save_folder(model, None, os.path.join(run_dir, "final"))
    except DiskFull as e:
        out["folder_message"] = str(e)
    out["listing"] = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    out["run_listing"] = sorted(os.listdir(run_dir))
    out["latest"] = latest_checkpoint(run_dir).name
    path, warning = resumable_checkpoint(run_dir)
    out["resumable"], out["warning"] = path.name, warning
    print(json.dumps(out))
    """
)


def _unshare_tmpfs(mount_point: Path) -> str | None:
    """Why a tmpfs cannot be mounted in a user + mount namespace here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k none "$1"', "sh",
         str(mount_point)], check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return None if probe.returncode == 0 else f"unshare -rm + tmpfs: {probe.stderr.strip()}"


def test_a_really_full_disk(tmp_path):
    """In a 1 MiB tmpfs (unshare -rm: a user + mount namespace), saves run until the disk is
    full: DiskFull, no temp folder left, LATEST the last complete checkpoint, which verifies."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    why = _unshare_tmpfs(mount_point)
    if why is not None:
        pytest.skip(why)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    script = 'mount -t tmpfs -o size=1m none "$1" && exec "$2" -c "$3" "$1/run"'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mount_point), sys.executable, _FILL],
        check=False, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    last = f"rl-{out['saved']:06d}"
    assert out["saved"] >= 1 and "message" in out
    assert "out of disk space saving checkpoint" in out["message"]
    assert f"the last complete checkpoint, {last} (LATEST), is intact" in out["message"]
    assert out["listing"][-1] == last and not [n for n in out["listing"] if n.startswith(".")]
    assert out["latest"] == out["resumable"] == last and out["warning"] is None
    assert "saving final/" in out["folder_message"]
    assert out["run_listing"] == ["checkpoints", "filler"]  # no final/, no temp folder
