"""Tests of zeroth.pipeline.checkpoint: round trips, pruning, and survival of crashes at any moment."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import transformers

from zeroth.errors import UserError
from zeroth.models.locate import latest_checkpoint, model_dir
from zeroth.pipeline.checkpoint import _to_remove, load_checkpoint, save_checkpoint, stage_and_step

REPO = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def stepped_optimizer(model) -> torch.optim.AdamW:
    """An AdamW that took one step, so it has exp_avg / exp_avg_sq state."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = torch.arange(8).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    return opt


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<eos>": 1, **{str(d): d + 2 for d in range(10)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>"
    )


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.fixture(autouse=True)
def keep_global_rng():
    """load_checkpoint restores global RNGs; give the rest of the test session its own back."""
    np = pytest.importorskip("numpy")
    saved = random.getstate(), torch.get_rng_state(), np.random.get_state()
    yield
    random.setstate(saved[0])
    torch.set_rng_state(saved[1])
    np.random.set_state(saved[2])


def test_round_trip_weights_optimizer_rng_state(tmp_path):
    np = pytest.importorskip("numpy")
    model = tiny_model()
    opt = stepped_optimizer(model)
    gen = torch.Generator().manual_seed(123)
    torch.rand(5, generator=gen)  # advance it past its seed
    state = {"phase": "rl", "step": 10, "data_pos": [3, 4], "metrics": {"reward": 0.5}}

    path = save_checkpoint(
        tmp_path, "rl-000010", model=model, tokenizer=tiny_tokenizer(), optimizer=opt,
        state=state, generators={"sampler": gen},
    )  # fmt: skip
    assert path == tmp_path / "checkpoints" / "rl-000010"
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "rl-000010"
    assert latest_checkpoint(tmp_path) == path
    assert model_dir(path) == path / "model"
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(model_dir(path)))
    assert any(name.endswith(".safetensors") for name in os.listdir(model_dir(path)))
    assert {"optimizer.pt", "rng.pt", "state.json"} <= set(os.listdir(path))

    expected = (torch.rand(4), random.random(), np.random.rand(), torch.rand(4, generator=gen))
    torch.rand(100), random.random(), np.random.rand(7), torch.rand(9, generator=gen)

    loaded_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir(path))
    assert_same_tensors(model.state_dict(), loaded_model.state_dict())
    tok = transformers.AutoTokenizer.from_pretrained(model_dir(path))
    assert tok("1 2 3")["input_ids"] == tiny_tokenizer()("1 2 3")["input_ids"] == [3, 4, 5]

    fresh_opt = torch.optim.AdamW(loaded_model.parameters(), lr=0.5)
    gen2 = torch.Generator()
    got = load_checkpoint(path, optimizer=fresh_opt, generators={"sampler": gen2})
    assert got == state
    want_opt, have_opt = opt.state_dict(), fresh_opt.state_dict()
    assert want_opt["param_groups"] == have_opt["param_groups"]
    assert want_opt["state"].keys() == have_opt["state"].keys()
    for idx in want_opt["state"]:
        assert_same_tensors(want_opt["state"][idx], have_opt["state"][idx])
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert torch.equal(torch.rand(4, generator=gen2), expected[3])


def test_load_without_rng_or_optimizer(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path, "pretrain-000001", model=model, state={"step": 1})
    before = torch.get_rng_state()
    assert load_checkpoint(path, restore_rng=False) == {"step": 1}
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(UserError, match="optimizer"):
        load_checkpoint(path, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(UserError, match="generator"):
        load_checkpoint(path, generators={"missing": torch.Generator()})
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "checkpoints" / "nope")


def test_bad_arguments_write_nothing(tmp_path):
    model = tiny_model()
    for tag in ["", "a/b", ".hidden", "LATEST"]:
        with pytest.raises(UserError):
            save_checkpoint(tmp_path, tag, model=model, state={})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, "rl-000001", model=model, state={"x": object()})
    with pytest.raises(UserError):
        save_checkpoint(tmp_path, "rl-000001", model=model, state={}, keep=-1)
    assert latest_checkpoint(tmp_path) is None
    assert not (tmp_path / "checkpoints" / "rl-000001").exists()


def _tags(run_dir: Path) -> list[str]:
    return sorted(os.listdir(run_dir / "checkpoints"))


def _save_pipeline(run_dir: Path, tags: list[str], keep) -> None:
    """Save checkpoints as a [pretrain, rl] run does (a stage's step-0 one as it starts)."""
    model = tiny_model()
    for tag in tags:
        save_checkpoint(run_dir, tag, model=model, state={"tag": tag}, keep=keep)


PIPELINE = ["pretrain-000000", "pretrain-000010", "pretrain-000020", "rl-000000", "rl-000002",
            "rl-000004", "rl-000006"]


def test_keep_zero_the_default_keeps_every_checkpoint(tmp_path):
    _save_pipeline(tmp_path, PIPELINE, keep=0)
    assert _tags(tmp_path) == ["LATEST", *PIPELINE]
    model = tiny_model()
    save_checkpoint(tmp_path, "rl-000008", model=model, state={})  # keep's default: 0
    assert _tags(tmp_path) == ["LATEST", *PIPELINE, "rl-000008"]


def test_only_the_newest_two_keep_their_optimizer_state(tmp_path):
    """Every checkpoint keeps its model; the optimizer state (twice the weights with AdamW) stays
    only in the two newest, which is all a resume reads."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    for tag in PIPELINE:
        save_checkpoint(tmp_path, tag, model=model, optimizer=optimizer, state={"tag": tag})
    root = tmp_path / "checkpoints"
    with_state = [t for t in PIPELINE if (root / t / "optimizer.pt").is_file()]
    assert with_state == ["rl-000004", "rl-000006"]
    assert all((root / t / "model" / "config.json").is_file() for t in PIPELINE)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_checkpoint(latest_checkpoint(tmp_path), optimizer=fresh)
    assert fresh.state_dict()["state"][0]["exp_avg"].abs().sum() > 0
    with pytest.raises(UserError, match="resume from LATEST"):
        load_checkpoint(root / "rl-000002", optimizer=fresh)


@pytest.mark.parametrize("keep, kept", [
    (1, ["pretrain-000020", "rl-000006"]),  # LATEST, and each stage's last
    (2, ["pretrain-000020", "rl-000004", "rl-000006"]),
    (4, ["pretrain-000020", "rl-000000", "rl-000002", "rl-000004", "rl-000006"]),
])
def test_keep_n_keeps_the_newest_n_and_each_stages_last(tmp_path, keep, kept):
    _save_pipeline(tmp_path, PIPELINE, keep=keep)
    assert _tags(tmp_path) == ["LATEST", *kept]
    assert load_checkpoint(latest_checkpoint(tmp_path), restore_rng=False) == {"tag": "rl-000006"}


def test_latest_and_each_stages_last_are_never_pruned():
    newest_first = ["rl-000004", "rl-000003", "rl-000002", "rl-000000", "pretrain-000020",
                    "pretrain-000010", "pretrain-000000", "odd"]
    # LATEST is not the newest here (a resumed run about to redo rl-000003 and rl-000004)
    assert _to_remove(newest_first, 1, "rl-000002") == [
        "rl-000003", "rl-000000", "pretrain-000010", "pretrain-000000", "odd"]
    assert _to_remove(newest_first, 3, "rl-000000") == ["pretrain-000010", "pretrain-000000",
                                                        "odd"]
    assert _to_remove(newest_first, 0, "rl-000002") == []
    assert stage_and_step("sft2-000150") == ("sft2", 150)
    assert stage_and_step("odd") == (None, None)


def test_same_tag_saved_twice_is_replaced(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path, "rl-000001", model=model, state={"step": 1})
    save_checkpoint(tmp_path, "rl-000002", model=model, state={"step": 2, "run": "first"})
    with torch.no_grad():
        model.lm_head.weight.fill_(2.0)
    path = save_checkpoint(tmp_path, "rl-000002", model=model, state={"step": 2, "run": "again"})
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["LATEST", "rl-000001", "rl-000002"]
    assert load_checkpoint(path, restore_rng=False) == {"step": 2, "run": "again"}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(model_dir(path))
    assert torch.all(loaded.lm_head.weight == 2.0)


def test_crash_leftovers_are_ignored_then_cleaned(tmp_path):
    model = tiny_model()
    first = save_checkpoint(tmp_path, "rl-000001", model=model, state={"step": 1})
    root = tmp_path / "checkpoints"
    partial = root / f".tmp-rl-000002-{os.getpid() + 1}"
    (partial / "model").mkdir(parents=True)
    (partial / "model" / "model.safetensors").write_bytes(b"\x00" * 10)  # torn write
    (root / ".LATEST-424242").write_text("rl-0000")  # LATEST temp file never renamed
    assert latest_checkpoint(tmp_path) == first

    # killed between "rename the old rl-000001 away" and "rename the new one in"
    old = root / ".old-rl-000001-999"
    os.replace(first, old)
    assert latest_checkpoint(tmp_path) == old
    assert load_checkpoint(old, restore_rng=False) == {"step": 1}

    save_checkpoint(tmp_path, "rl-000002", model=model, state={"step": 2})
    assert sorted(os.listdir(root)) == ["LATEST", "rl-000001", "rl-000002"]
    assert latest_checkpoint(tmp_path) == root / "rl-000002"
    assert load_checkpoint(root / "rl-000001", restore_rng=False) == {"step": 1}


def test_latest_pointing_at_missing_checkpoint_is_an_error(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "LATEST").write_text("rl-000007\n")
    with pytest.raises(UserError, match="rl-000007"):
        latest_checkpoint(tmp_path)


# A fork server: imports torch + transformers once, then for every "go" line forks a writer
# that saves checkpoints in a loop until the test kills it with SIGKILL.
_SERVER = textwrap.dedent(
    """
    import os, sys
    import torch, transformers
    from zeroth.pipeline.checkpoint import save_checkpoint
    torch.set_num_threads(1)
    run_dir = sys.argv[1]
    config = transformers.Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    print("up", flush=True)
    for round_ in range(100):
        if sys.stdin.readline().strip() != "go":
            break
        pid = os.fork()
        if pid == 0:
            for i in range(round_ * 1000, round_ * 1000 + 1000):
                with torch.no_grad():
                    model.lm_head.weight.fill_(float(i))
                save_checkpoint(run_dir, f"rl-{i // 2 % 3:06d}", model=model, optimizer=opt,
                                state={"step": i, "round": round_}, generators={"g": gen},
                                keep=1)
                if i == round_ * 1000:
                    print(f"ready {os.getpid()}", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("dead", flush=True)
    """
)


def _line_queue(stream) -> queue.Queue:
    """Lines of `stream`, read by a daemon thread, so the test can wait with a timeout."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.strip())
        lines.put("EOF")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _check_loadable(run_dir: Path) -> int:
    """latest_checkpoint is whole and self-consistent: weights match state.json's step."""
    path = latest_checkpoint(run_dir)
    assert path is not None
    state = json.loads((path / "state.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir(path))
    assert torch.all(model.lm_head.weight == float(state["step"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator()
    assert load_checkpoint(path, optimizer=opt, generators={"g": gen}) == state
    complete = [p for p in path.parent.iterdir()
                if not p.name.startswith(".") and (p / "state.json").is_file()]
    assert len(complete) <= 3  # keep=1 prunes to LATEST and rl-000002 (the stage's last)
    return state["step"]


@pytest.fixture(scope="module", autouse=True)
def crash_server(tmp_path_factory):
    """The fork server of the SIGKILL test, started with the module so that its imports overlap
    the other tests. Yields (process, its stdout lines, run_dir), or None without fork."""
    if not hasattr(os, "fork"):
        yield None
        return
    run_dir = tmp_path_factory.mktemp("crash-run")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    yield server, _line_queue(server.stdout), run_dir
    server.stdin.close()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_sigkill_at_random_moments_leaves_a_loadable_latest(crash_server):
    server, lines, run_dir = crash_server
    rng = random.Random(1234)
    assert lines.get(timeout=60) == "up"
    for round_ in range(4):
        server.stdin.write("go\n")
        server.stdin.flush()
        word, pid = lines.get(timeout=30).split()
        assert word == "ready"
        try:
            lines.get(timeout=rng.uniform(0.0, 0.3))  # the writer prints nothing more: a sleep
        except queue.Empty:
            pass
        os.kill(int(pid), signal.SIGKILL)
        assert lines.get(timeout=30) == "dead"
        assert _check_loadable(run_dir) // 1000 == round_
    path = save_checkpoint(run_dir, "rl-000100", model=tiny_model(), state={"step": 100})
    assert not [p for p in os.listdir(path.parent) if p.startswith(".")]  # leftovers cleaned
    assert latest_checkpoint(run_dir) == path
