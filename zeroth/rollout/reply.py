"""A chat reply as text while it streams: a conversation rendered as a training prompt, the
engine's tokens decoded piece by piece (stopping after the answer block), and the pieces cut
into reasoning and answer. `zeroth chat` (zeroth.cli.chat) shows them; a server could too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

STOP_TEXT = "</answer>"  # a reply ends with its answer block
TAG_KINDS = {"<think>": "thinking", "</think>": "answer", "<answer>": "answer",
             "</answer>": "answer"}  # the kind of text after each tag


# ---------------------------------------------------------------------------------------------
# Reasoning apart from the answer, as the text streams.
# ---------------------------------------------------------------------------------------------


class ReasoningSplitter:
    """Cuts streamed text into ("thinking" | "answer", text) pieces: text inside <think>…</think>
    is thinking, the rest is answer; the tags themselves are dropped. A tag may arrive split
    across pieces, so a trailing "<…" that could still become a tag is held back until it is
    one or cannot be one; `flush()` gives what is left at the end (an unclosed think block stays
    thinking). Start with `thinking=True` when the prompt itself opened the think block."""

    def __init__(self, thinking: bool = False):
        self.kind = "thinking" if thinking else "answer"
        self.held = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        rest = self.held + text
        while rest:
            cut = rest.find("<")
            if cut < 0:
                out.append((self.kind, rest))
                rest = ""
                break
            out.append((self.kind, rest[:cut]))
            rest = rest[cut:]
            tag = next((t for t in TAG_KINDS if rest.startswith(t)), None)
            if tag is not None:
                self.kind, rest = TAG_KINDS[tag], rest[len(tag):]
            elif any(t.startswith(rest) for t in TAG_KINDS):
                break  # "<thi" may still become "<think>": wait for more text
            else:
                out.append((self.kind, "<"))
                rest = rest[1:]
        self.held = rest
        return _merge(out)

    def flush(self) -> list[tuple[str, str]]:
        out, self.held = [(self.kind, self.held)], ""
        return _merge(out)


def _merge(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive pieces of one kind joined, empty ones dropped."""
    out: list[tuple[str, str]] = []
    for kind, text in pieces:
        if not text:
            continue
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


# ---------------------------------------------------------------------------------------------
# Prompts and streamed generation.
# ---------------------------------------------------------------------------------------------


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the assistant's turn. A lone question goes through
    `zeroth.models.hf.prompt_ids`, the very function that renders training prompts."""
    from zeroth.models.hf import prompt_ids

    if len(messages) == 1 and messages[0]["role"] == "user":
        return prompt_ids(tokenizer, [messages[0]["content"]])[0]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)


def supports_history(tokenizer) -> bool:
    """Does the chat template render a conversation of several turns?"""
    turns = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "3"}]
    try:
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 — a template that refuses history means single turns
        return False
    return all(t["content"] in text for t in turns)


def opens_thinking(tokenizer, ids: list[int]) -> bool:
    """Does the prompt end inside an open think block (templates that start the reasoning)?"""
    tail = tokenizer.decode(ids[-8:], skip_special_tokens=False).rstrip()
    return tail.endswith("<think>")



def stream_text(tokenizer, tokens: Iterable[int], stops: Iterable[int] = (),
                stop_text: str = STOP_TEXT, sampled: list[int] | None = None) -> Iterator[str]:
    """The text of streamed token ids, piece by piece: stops at a stop token (left out) or after
    `stop_text`; a piece ending inside a multi-byte character waits for the rest of it. The
    pieces join to `reply_text` of the same ids. `sampled` (a list) collects the ids used.

    Incremental: each token decodes only a short window, the tokens of the piece shown last
    (context for decoders that merge across tokens) and those not shown yet, so a reply costs
    linear time. Pending tokens that still end in a broken character after MAX_PENDING tokens
    (invalid bytes, not a character being spelled out) are shown as they decode."""
    stops, ids = set(stops), []
    window = _Window(stop_text)
    for token in tokens:
        if sampled is not None:
            sampled.append(token)
        if token in stops:
            break
        ids.append(token)
        piece = window.next_piece(tokenizer, ids)
        end = window.stop_at(piece)
        if end >= 0:
            yield from _nonempty(piece[:end])
            return
        if piece.endswith("\ufffd") and len(ids) - window.read < MAX_PENDING:
            continue
        window.advance(ids, piece)
        yield from _nonempty(piece)
    piece = window.next_piece(tokenizer, ids)
    end = window.stop_at(piece)
    yield from _nonempty(piece if end < 0 else piece[:end])


MAX_PENDING = 8  # tokens a broken character may wait for (UTF-8 needs at most 4 bytes)


class _Window:
    """Where streamed decoding stands: ids[prefix:read] made the piece shown last, ids[read:]
    are not shown yet; `tail` is the end of the text shown, to find a stop text split across
    pieces."""

    def __init__(self, stop_text: str):
        self.stop_text = stop_text
        self.prefix = self.read = 0
        self.tail = ""

    def next_piece(self, tokenizer, ids: list[int]) -> str:
        """The text the ids after `read` add to what is shown."""
        if self.read >= len(ids):
            return ""
        shown = tokenizer.decode(ids[self.prefix:self.read], skip_special_tokens=False)
        text = tokenizer.decode(ids[self.prefix:], skip_special_tokens=False)
        return text[len(shown):]

    def stop_at(self, piece: str) -> int:
        """Where `piece` must be cut to end right after the first stop text; -1: none in it."""
        found = (self.tail + piece).find(self.stop_text) if self.stop_text else -1
        return -1 if found < 0 else found + len(self.stop_text) - len(self.tail)

    def advance(self, ids: list[int], piece: str) -> None:
        """`piece` (the text of every id so far) is shown."""
        self.prefix, self.read = self.read, len(ids)
        shown = self.tail + piece  # a stop text may start in what is shown: keep its length
        self.tail = shown[max(len(shown) - len(self.stop_text) + 1, 0):]


def _nonempty(piece: str) -> Iterator[str]:
    if piece:
        yield piece


def reply_text(tokenizer, ids: list[int], stops: Iterable[int] = (),
               stop_text: str = STOP_TEXT) -> str:
    """The reply of completion `ids` as a whole: decoded up to its stop token (special tokens
    kept, as evaluation decodes), cut after the first `stop_text`."""
    stops = set(stops)
    ids = list(ids)
    for i, token in enumerate(ids):
        if token in stops:
            ids = ids[:i]
            break
    text = tokenizer.decode(ids, skip_special_tokens=False)
    end = text.find(stop_text)
    return text if end < 0 else text[:end + len(stop_text)]


def stream_reply(engine, tokenizer, messages: list[dict], *, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, generator=None,
                 stops: Iterable[int] | None = None,
                 sampled: list[int] | None = None) -> Iterator[str]:
    """The assistant's reply to `messages`, streamed as text pieces while `engine` (an Engine
    of zeroth.rollout: `stream`, `model`) generates it."""
    from zeroth.rollout.decoder import stop_ids

    stops = stop_ids(engine.model, tokenizer) if stops is None else set(stops)
    tokens = engine.stream(chat_ids(tokenizer, messages), max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, generator=generator,
                           eos_id=stops)
    return stream_text(tokenizer, tokens, stops, sampled=sampled)
