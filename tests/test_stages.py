"""The SFT, rejection-sampling and distillation stages on tiny models, through a fake runner."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from zeroth.errors import UserError
from zeroth.models.hf import load_model, prompt_ids, train_tokenizer
from zeroth.models.locate import latest_checkpoint, model_dir
from zeroth.pipeline.checkpoint import load_checkpoint, save_checkpoint
from zeroth.pipeline.ledger import Ledger
from zeroth.record.progress import Display
from zeroth.rollout.decoder import stop_ids
from zeroth.rollout.torch_engine import TorchEngine
from zeroth.stages import distill, rejection, sft, supervised
from zeroth.stages.eval import evaluate


class Killed(Exception):
    """Stands for a kill right after a checkpoint."""


class FakeRunner:
    """The attributes of the pipeline runner the stages use, over a tmp run directory."""

    def __init__(self, run_dir, cfg, task, model, tokenizer, stage_id, *, state=None,
                 resume_ckpt=None, kill_at=None):
        self.dir, self.cfg, self.task, self.stage_id = Path(run_dir), cfg, task, stage_id
        self.model, self.tokenizer = model, tokenizer
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.dir / "ledger.sqlite")
        self.display = Display(quiet=True)
        self.state = state if state is not None else {"step": 0, "data": {}}
        self.resume_ckpt, self.kill_at = resume_ckpt, kill_at
        self.device = torch.device("cpu")

    def save(self, step, optimizer=None):
        self.state["step"] = step
        save_checkpoint(self.dir, f"{self.stage_id}-{step:06d}", model=self.model,
                        tokenizer=self.tokenizer, optimizer=optimizer, state=self.state,
                        keep=0)
        if step == self.kill_at:
            raise Killed

    def evaluate(self, phase):
        rows = self.task.eval_rows(self.cfg.task.eval_problems, self.cfg.run.seed)
        metrics, samples = evaluate(TorchEngine(self.model), self.tokenizer, self.task, rows,
                                    self.cfg.eval, self.cfg.run.seed)
        self.ledger.log_eval(phase, samples)
        self.ledger.log_metrics(phase, 0, metrics)
        return metrics


def resumed(run_dir, cfg, task, stage_id):
    """A runner continuing run_dir from its latest checkpoint, as the pipeline would."""
    ckpt = latest_checkpoint(run_dir)
    model, tokenizer = load_model(model_dir(ckpt))
    state = load_checkpoint(ckpt)  # as Runner.enter: a step-0 checkpoint is a fresh start
    return FakeRunner(run_dir, cfg, task, model, tokenizer, stage_id,
                      state=state, resume_ckpt=ckpt if state["step"] > 0 else None)


def _coin(completions, **_):  # a deterministic "verifier" that passes about half of any text
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def _shape(completions, **_):
    return [float(sum(map(ord, c)) % 3 != 0) for c in completions]


@pytest.fixture()
def coin_task(tiny_task):
    """The tiny addition task (rows, demonstrations) with rewards a random model can pass."""
    return replace(tiny_task, rewards={"correct": _coin, "format": _shape})


@pytest.fixture()
def cfg(tiny_cfg):
    return replace(
        tiny_cfg, task=replace(tiny_cfg.task, eval_problems=4),
        eval=replace(tiny_cfg.eval, max_new_tokens=8),
        sft=replace(tiny_cfg.sft, n=16, steps=20, batch_size=8, lr=3e-3, warmup=2,
                    checkpoint_every=10),
        rejection=replace(tiny_cfg.rejection, prompts=6, samples=4, max_new_tokens=12,
                          keep_per_prompt=2, batch_size=16),
        distill=replace(tiny_cfg.distill, prompts=8, samples=2, max_new_tokens=12, steps=12,
                        batch_size=4, lr=3e-3, warmup=2, checkpoint_every=4),
        student=replace(tiny_cfg.model, hidden_size=16, intermediate_size=32),
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _mean_loss(model, examples):
    ids, labels = supervised.batch_at(examples, 0, 16, "probe-sft", 0)
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


# ---- SFT ----------------------------------------------------------------------------------


def test_sft_labels_mask_the_prompt_exactly(tiny_model):
    _, tok = tiny_model
    prompt, completion = "What is 12+34?", "<think>2+4+0=06</think><answer>46</answer>"
    ids, labels = sft.encode_pair(tok, prompt, completion)
    head = prompt_ids(tok, [prompt])[0]
    assert ids[: len(head)] == head and labels[: len(head)] == [-100] * len(head)
    trained = [i for i, label in zip(ids, labels) if label != -100]
    assert trained == ids[len(head):]
    assert tok.decode(trained, skip_special_tokens=False) == completion + tok.eos_token


def test_sft_labels_every_assistant_turn(tiny_model):
    _, tok = tiny_model
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "1+1"},
            {"role": "assistant", "content": "<answer>2</answer>"}]
    ids, labels = sft.encode_chat(tok, msgs)
    trained = tok.decode([i for i, label in zip(ids, labels) if label != -100],
                         skip_special_tokens=False)
    assert trained == f"yo{tok.eos_token}<answer>2</answer>{tok.eos_token}"
    assert "be brief" in tok.decode(ids) and "1+1" in tok.decode(ids)


def test_sft_from_jsonl_messages_and_pairs(tmp_path, cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    lines = [{"messages": [{"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "<answer>4</answer>"}]},
             {"prompt": "3+3?", "completion": "<answer>6</answer>"},
             {"prompt": "long?", "completion": "9 " * 200}]  # longer than the 64-token context
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    assert sft.read_jsonl(data)[1] == sft.pair("3+3?", "<answer>6</answer>")
    cfg = replace(cfg, sft=replace(cfg.sft, data=str(data), steps=3, checkpoint_every=2))
    r = FakeRunner(tmp_path / "run", cfg, tiny_task, model, tok, "sft")
    before = _weights(model)
    out = sft.run(r)
    assert out["examples"] == 2 and out["dropped_long"] == 1 and out["steps"] == 3
    assert out["answer_tokens"] > 0 and out["final_loss"] > 0
    assert r.state["step"] == 3 and latest_checkpoint(r.dir).name == "sft-000003"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m["step"] for m in r.ledger.metrics("sft")] == [3]


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"prompt": "x"}', "'completion' must be text"),
    ('{"text": "x"}', "needs 'messages' or 'prompt' and 'completion'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "message 1 needs a role"),
])
def test_bad_jsonl_line_names_the_line_and_the_problem(tmp_path, line, problem):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"line 2: .*{problem}"):
        sft.read_jsonl(data)


def test_sft_rejection_data_needs_a_rejection_stage(tmp_path, cfg, tiny_task, tiny_model):
    cfg = replace(cfg, sft=replace(cfg.sft, data="rejection"))
    r = FakeRunner(tmp_path, cfg, tiny_task, *tiny_model, "sft")
    with pytest.raises(UserError, match="rejection stage before"):
        sft.run(r)


def test_sft_lowers_the_loss_on_its_data(tmp_path, cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    r = FakeRunner(tmp_path, cfg, tiny_task, model, tok, "sft2")
    convs = sft.conversations(r)
    assert len(convs) == cfg.sft.n and all("<think>" in c[1]["content"] for c in convs)
    examples, _ = sft.prepare(tok, convs, 64)
    first = _mean_loss(model, examples)
    out = sft.run(r)
    assert _mean_loss(model, examples) < first - 0.5
    assert out["final_loss"] < first
    assert [m["step"] for m in r.ledger.metrics("sft2")] == [10, 20]


def test_length_buckets_trim_each_group_to_its_longest_row():
    ids = torch.arange(5 * 8).reshape(5, 8)
    labels = ids.clone()
    for row, length in enumerate((8, 2, 5, 3, 7)):
        labels[row, length:] = -100  # padding after each row's last labelled token
    labels[2, :2] = -100  # an unlabelled prompt changes nothing
    groups = supervised.by_length(ids, labels, 2)
    assert [g[0][:, 0].tolist() for g in groups] == [[8, 24, 16], [32, 0]]  # rows 1, 3, 2 | 4, 0
    assert [g[0].shape[1] for g in groups] == [5, 8]
    assert all(torch.equal(g[1], labels[g[0][:, 0] // 8, : g[1].shape[1]]) for g in groups)
    assert supervised.by_length(ids, labels, 1)[0][0] is ids


@pytest.mark.parametrize("buckets", [2, 4])
def test_length_buckets_give_the_whole_batchs_loss_and_gradient(tiny_model, buckets):
    model, _ = tiny_model
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 200, (6, 12), generator=g)
    labels = ids.clone()
    for row, length in enumerate((12, 4, 9, 5, 11, 3)):
        labels[row, length:] = -100
    labels[2, :3] = -100
    r = FakeRunner.__new__(FakeRunner)
    r.device = torch.device("cpu")
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(parts):
        model.zero_grad(set_to_none=True)
        loss, _ = supervised._forward_backward(
            r, model, lambda i, lab, **kw: supervised.token_loss(model, i, lab, **kw),
            ids, labels, None, parts)
        return loss, [p.grad.clone() for p in params]

    whole, whole_grads = grads(1)
    split, split_grads = grads(buckets)
    assert split == pytest.approx(whole, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(split_grads, whole_grads))


# ---- rejection sampling ---------------------------------------------------------------------


def test_rejection_keeps_verified_well_formed_distinct(tiny_task, tiny_model):
    model, tok = tiny_model
    task = replace(tiny_task)  # real verifiers: exact answer and the strict R1 format
    rows = [{"prompt": "What is 3+4?", "answer": "7"}, {"prompt": "What is 1+1?", "answer": "2"}]
    scripted = [  # 5 samples for each prompt, in order
        "<answer>7</answer>", " <answer>7</answer> ", "<answer>8</answer>", "7",
        "<think>3+4</think><answer>7</answer>",
        "<answer>3</answer>", "<think>1+1</think><answer>2</answer>",
        "<answer>2</answer> and more", "<think>1 + 1</think><answer>2</answer>",
        "<answer>2</answer>"]
    eos = tok.eos_token_id

    class Scripted(TorchEngine):  # the model's stop tokens, the scripted completions
        def generate(self, prompts, **kw):
            return [tok(t, add_special_tokens=False)["input_ids"] + [eos]
                    for t in scripted[:len(prompts)]]

    kept, rollouts, stats = rejection.sample_verified(
        Scripted(model), tok, task, rows, samples=5, temperature=1.0, max_new_tokens=16,
        keep_per_prompt=2, require_format=True, batch_size=64, seed_tag="t")
    # prompt 0: a whitespace duplicate, a wrong answer and a bare answer are dropped;
    # prompt 1: text after </answer> breaks the format; the cap keeps the first two
    assert [k["completion"] for k in kept] == [
        "<answer>7</answer>", "<think>3+4</think><answer>7</answer>",
        "<think>1+1</think><answer>2</answer>", "<think>1 + 1</think><answer>2</answer>"]
    assert kept[0]["messages"][1]["content"] == kept[0]["completion"]
    assert kept[0]["answer"] == "7" and kept[2]["prompt"] == "What is 1+1?"
    assert len(rollouts) == 10 and [r["extra"]["kept"] for r in rollouts].count(True) == 4
    assert rollouts[2]["rewards"]["correct"] == 0.0
    assert stats["prompts"] == 2 and stats["samples"] == 10 and stats["kept"] == 4
    assert stats["prompts_covered"] == 2 and stats["verified_rate"] == 6 / 10
    assert rejection.normalised(" a \n b\t") == "a b"


def test_rejection_stage_writes_a_deterministic_dataset(tmp_path, cfg, coin_task, tiny_model):
    model, tok = tiny_model
    files, states = [], []
    for name in ("a", "b"):
        r = FakeRunner(tmp_path / name, cfg, coin_task, model, tok, "rejection")
        stats = rejection.run(r)
        files.append((r.dir / "data" / "rejection.jsonl").read_bytes())
        states.append(r.state["data"])
        assert len(r.ledger.rollouts("rejection", step=0)) == stats["samples"] == 24
    assert files[0] == files[1] and states[0] == {"rejection": "data/rejection.jsonl"}
    records = [json.loads(line) for line in files[0].decode().splitlines()]
    assert 0 < len(records) == stats["kept"] <= 6 * 2
    for rec in records:
        assert _coin([rec["completion"]]) == [1.0] and _shape([rec["completion"]]) == [1.0]
    # rerun in the same directory (a resume): same file, the ledger not doubled
    r = FakeRunner(tmp_path / "a", cfg, coin_task, model, tok, "rejection")
    rejection.run(r)
    assert (r.dir / "data" / "rejection.jsonl").read_bytes() == files[0]
    assert len(r.ledger.rollouts("rejection")) == 24
    # a later SFT stage reads it
    r.stage_id, r.cfg = "sft", replace(cfg, sft=replace(cfg.sft, data="rejection", steps=2))
    assert sft.run(r)["examples"] == len(records)


# ---- distillation ---------------------------------------------------------------------------


def test_logit_kl_is_zero_for_the_same_model_and_positive_otherwise(tiny_model, tiny_cfg):
    model, tok = tiny_model
    ids, labels = supervised.batch_at(
        [sft.encode_pair(tok, "What is 1+2?", "<answer>3</answer>")], 0, 2, "kl-sft",
        tok.pad_token_id)
    _, stats = distill.distill_loss(model, model, ids, labels, alpha=0.5)
    assert abs(stats["kl"]) < 1e-6
    torch.manual_seed(1)
    other = type(model)(model.config)
    _, stats = distill.distill_loss(other, model, ids, labels, alpha=0.5)
    assert stats["kl"] > 1e-3
    logits = torch.randn(2, 3, 10)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert distill.token_kl(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_logits_on_with_different_tokenizers_is_refused(tiny_model):
    _, tok = tiny_model
    other = train_tokenizer(["zebra quagga okapi"] * 20, 270)
    with pytest.raises(UserError, match="share a tokenizer"):
        distill.use_logits("on", tok, other)
    assert distill.use_logits("auto", tok, other) is False
    assert distill.use_logits("auto", tok, tok) is True
    assert distill.use_logits("off", tok, tok) is False


def test_teacher_folder_accepts_models_and_runs(tmp_path, tiny_model):
    model, tok = tiny_model
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert distill.teacher_folder(str(tmp_path / "m")) == (tmp_path / "m", False)
    save_checkpoint(tmp_path / "run", "rl-000004", model=model, tokenizer=tok, state={})
    assert distill.teacher_folder(str(tmp_path / "run")) == (
        tmp_path / "run" / "checkpoints" / "rl-000004" / "model", True)
    with pytest.raises(UserError, match="neither a model folder"):
        distill.teacher_folder(str(tmp_path))


@pytest.mark.parametrize("kill_at", [0, 8])
def test_distill_resumes_to_identical_weights(tmp_path, cfg, coin_task, tiny_model, kill_at):
    teacher, tok = tiny_model
    cfg = replace(cfg, distill=replace(cfg.distill, student_pretrain_steps=3))
    whole = FakeRunner(tmp_path / "whole", cfg, coin_task, teacher, tok, "distill")
    out = distill.run(whole)
    assert whole.model is not teacher and out["logit_distillation"] is True
    assert out["student_params"] == sum(p.numel() for p in whole.model.parameters())
    assert out["traces"] > 0 and set(out["student_before"]) >= {"pass1", "greedy"}
    assert (whole.dir / "teacher" / "config.json").is_file()
    assert whole.ledger.metrics("eval_distill_before")

    part = FakeRunner(tmp_path / "part", cfg, coin_task, teacher, tok, "distill",
                      kill_at=kill_at)
    with pytest.raises(Killed):
        distill.run(part)
    again = resumed(tmp_path / "part", cfg, coin_task, "distill")
    assert again.state["step"] == kill_at
    out2 = distill.run(again)
    assert out2 == out
    final = _weights(whole.model)
    assert all(torch.equal(final[k], v) for k, v in again.model.state_dict().items())


def test_distill_lowers_the_students_loss_on_the_traces(tmp_path, cfg, coin_task, tiny_model):
    teacher, tok = tiny_model
    cfg = replace(cfg, distill=replace(cfg.distill, steps=20, logits="off"))
    r = FakeRunner(tmp_path, cfg, coin_task, teacher, tok, "distill")
    out = distill.run(r)
    assert out["logit_distillation"] is False
    assert not (tmp_path / "teacher").exists()  # no copy when its logits are not needed
    convs = sft.read_jsonl(tmp_path / "data" / "distill.jsonl")
    examples, _ = sft.prepare(r.tokenizer, convs, 64)
    start, _ = load_model(model_dir(tmp_path / "checkpoints" / "distill-000000"))
    assert _mean_loss(r.model, examples) < _mean_loss(start, examples) - 0.5
    assert stop_ids(r.model, r.tokenizer)  # the student generates with the teacher's tokenizer


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_chatml_turn_ends_with_its_own_token_not_eos(tiny_model):
    """Qwen2.5 base models: ChatML template, eos <|endoftext|>. Generation must stop at
    <|im_end|> and SFT must teach it, or a tuned model never ends its turn."""
    from zeroth.models.hf import end_of_turn
    from zeroth.rollout.decoder import stop_ids
    from zeroth.stages.sft import encode_pair

    model, tok = tiny_model
    assert end_of_turn(tok) == tok.eos_token  # zeroth's own template closes with eos
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    assert end_of_turn(tok) == "<|im_end|>"
    ids, labels = encode_pair(tok, "1+1", "2")
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "2<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_ids(model, tok)
