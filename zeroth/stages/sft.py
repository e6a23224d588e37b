"""Supervised fine-tuning on chat data, the loss on the answer (assistant) tokens only.

Data (`sft.data`): `reasoned` (task demonstrations that reason in <think>, and are right),
`demos` (task demonstrations as they come), `rejection` (the file the last rejection stage
wrote), or a JSONL file of `{"messages": [{"role", "content"}, ...]}` lines (the loss on every
assistant turn) or `{"prompt", "completion"}` lines.

Each example is tokenised piece by piece with the chat template: the text up to an assistant
turn (labels -100), then the turn's content and the end token (the labels), so the prompt ids
are exactly those the model sees when it generates, and the model learns to stop. Batches are
a pure function of (seed, stage id, step), so a resumed stage sees the batches an uninterrupted
one would.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from zeroth.errors import UserError
from zeroth.models.hf import end_of_turn
from zeroth.stages import pretrain as pt
from zeroth.stages.supervised import Hyper, batches, token_loss, train

CHANGES_MODEL = True  # the held-out set is evaluated after this stage

ROLES = ("system", "user", "assistant")
MAX_ROUNDS = 20  # `reasoned`: rounds of sft.n demonstrations drawn at most


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                         tokenize=False)


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation: labels are the ids of each assistant turn's content and
    the end token after it, -100 everywhere else. Turns after the last assistant one are cut."""
    eos = end_of_turn(tokenizer)  # what closes a turn: eos, or e.g. ChatML's <|im_end|>
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the template text already emitted

    def add(text: str, trained: bool) -> None:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(toks)
        labels.extend(toks if trained else [-100] * len(toks))

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], generation_prompt=True)
        if not head.startswith(done):
            raise UserError("the chat template renders earlier turns differently once later "
                            "turns follow — give one assistant turn per example")
        add(head[len(done):], trained=False)
        content = message["content"]
        add(content + eos, trained=True)
        after = render(tokenizer, messages[: i + 1], generation_prompt=False)
        closing = after[len(head) + len(content):] if after.startswith(head + content) else ""
        done = head + content + (eos if closing.startswith(eos) else "")
    return ids, labels


def encode_pair(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    return encode_chat(tokenizer, pair(prompt, completion))


def pair(prompt: str, completion: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


class BadRecord(Exception):
    """What is wrong with one data record (read_jsonl adds the file and line)."""


def to_messages(obj) -> list[dict]:
    """The conversation of one JSONL record; BadRecord says what is wrong with it."""
    if not isinstance(obj, dict):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise BadRecord("'messages' must be a non-empty list of {role, content}")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadRecord(f"message {j + 1} needs a role of {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise BadRecord(f"message {j + 1} needs a text 'content'")
        if msgs[0]["role"] == "assistant":
            raise BadRecord("the first message is the assistant's — start with a user message")
        if not any(m["role"] == "assistant" for m in msgs):
            raise BadRecord("no assistant message to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise BadRecord(f"'{key}' must be text")
        return pair(obj["prompt"], obj["completion"])
    raise BadRecord(f"needs 'messages' or 'prompt' and 'completion', got keys {sorted(obj)}")


def read_jsonl(path: str | Path) -> list[list[dict]]:
    """Conversations of a chat JSONL file; a bad line is a UserError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"SFT data file '{path}' not found — sft.data is reasoned, demos, "
                        "rejection or a JSONL file")
    out = []
    with path.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                out.append(to_messages(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
            except BadRecord as exc:
                raise UserError(f"{path} line {n}: {exc}") from None
    return out


def demo_pairs(task, n: int, tag: str, reasoned: bool) -> list[list[dict]]:
    """n task demonstrations as conversations; `reasoned`: only right ones reasoning in <think>."""
    if task.demonstration is None:
        raise UserError(f"task '{task.name}' has no demonstrations — give sft.data a JSONL file "
                        "or rejection")
    if not reasoned:
        return [pair(p, c) for p, c, _ in pt.demonstrations(task, n, tag)]
    out: list[list[dict]] = []
    for k in range(MAX_ROUNDS):
        out += [pair(p, c) for p, c, ok in pt.demonstrations(task, n, f"{tag}-{k}")
                if ok and "<think>" in c]
        if len(out) >= n:
            return out[:n]
        if not out:
            break
    raise UserError(f"only {len(out)} of task '{task.name}' demonstrations reason in <think> "
                    f"(sft.n={n}) — raise demos.reason_fraction, lower sft.n or use sft.data=demos")


def conversations(r) -> list[list[dict]]:
    """The stage's training conversations, from `sft.data`."""
    cfg, tag = r.cfg.sft, f"{r.cfg.run.seed}-{r.stage_id}"
    if cfg.data in ("reasoned", "demos"):
        return demo_pairs(r.task, cfg.n, tag, reasoned=cfg.data == "reasoned")
    if cfg.data == "rejection":
        path = (r.state.get("data") or {}).get("rejection")
        if path is None:
            raise UserError("sft.data=rejection needs a rejection stage before this sft stage "
                            "in run.pipeline, e.g. [pretrain, rejection, sft]")
        return read_jsonl(Path(r.dir) / path)
    return read_jsonl(cfg.data)


def prepare(tokenizer, convs: list[list[dict]], max_len: int):
    """(examples, dropped): (ids, labels) of each conversation that fits in max_len tokens."""
    encoded = [encode_chat(tokenizer, c) for c in convs]
    kept = [e for e in encoded if len(e[0]) <= max_len]
    return kept, len(encoded) - len(kept)


def chat_batches(r, examples, size: int):
    """The stage's batch function over (ids, labels) examples: a function of (seed, stage id,
    step)."""
    return batches(examples, size, f"{r.cfg.run.seed}-{r.stage_id}-sft", r.tokenizer.pad_token_id)


def run(r) -> dict:
    """The SFT stage over r.model; returns its statistics for the run summary."""
    cfg = r.cfg.sft
    convs = conversations(r)
    if not convs and cfg.data == "rejection":  # an outcome of the run, not a user mistake
        r.display.print(f"{r.stage_id}: the rejection stage kept no verified sample — nothing "
                        "to learn, the model is unchanged (raise rejection.prompts/samples)")
        return {"examples": 0, "dropped_long": 0, "final_loss": None, "steps": 0,
                "answer_tokens": 0, "skipped": "no verified samples"}
    limit = min(cfg.max_len, r.model.config.max_position_embeddings)
    examples, dropped = prepare(r.tokenizer, convs, limit)
    if not examples:
        raise UserError(f"no SFT example fits in {limit} tokens (sft.max_len or the model's "
                        f"context; {len(convs)} given) — raise sft.max_len or shorten the data")
    if dropped:
        r.display.print(f"{r.stage_id}: dropped {dropped} of {len(convs)} examples longer than "
                        f"{limit} tokens")
    loss = train(r, r.model, chat_batches(r, examples, cfg.batch_size),
                 partial(token_loss, r.model), Hyper.of(cfg), phase=r.stage_id, checkpoint=True)
    return {"examples": len(examples), "dropped_long": dropped, "final_loss": loss,
            "steps": cfg.steps,
            "answer_tokens": sum(sum(t != -100 for t in lab) for _, lab in examples)}
