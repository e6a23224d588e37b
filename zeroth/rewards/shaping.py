"""Format rewards: the R1-Zero layout `<think> reasoning </think><answer> result </answer>`,
and the one reading of a stated answer that every exact verifier shares (`extract_answer`).

The think block is optional (a direct answer is well formed); anything outside the two blocks,
a second answer, or an unclosed tag makes the completion malformed.
"""

from __future__ import annotations

import re
import unicodedata

_LAYOUT = re.compile(r"\s*(<think>(?:(?!</?think>|</?answer>).)*</think>\s*)?"
                     r"<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def after_thinking(completion: str) -> str:
    """What the completion says after its reasoning: the text after the last `</think>` (R1
    templates may open the think block in the prompt, so a completion can start inside it);
    empty while a `<think>` is left open. Reasoning is never read as the answer."""
    end = completion.rfind("</think>")
    if end >= 0:
        return completion[end + len("</think>"):]
    return "" if "<think>" in completion else completion


def answer_block(completion: str) -> str | None:
    """The raw text inside the `<answer>…</answer>` after the reasoning (indentation kept);
    None when there is none, or when several blocks disagree (hedging states no answer)."""
    found = _ANSWER.findall(after_thinking(completion))
    if len({block.strip() for block in found}) != 1:
        return None
    return found[-1]


def extract_answer(completion: str) -> str | None:
    """The stated answer, stripped: the `<answer>` block after the reasoning; None when there is
    none, when it sits only inside `<think>`, or when several blocks disagree."""
    block = answer_block(completion)
    return None if block is None else block.strip()


def _well_formed(completion: str) -> bool:
    match = _LAYOUT.fullmatch(completion)
    return bool(match) and match.group(2).strip() != ""


def think_format(completions: list[str], **_: object) -> list[float]:
    """1.0 when the whole completion is `[<think>…</think>]<answer>…</answer>` with a non-empty
    answer, else 0.0."""
    return [1.0 if _well_formed(c) else 0.0 for c in completions]


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def tag_count(completions: list[str], **_: object) -> list[float]:
    """Soft format credit: 0.25 for each of the four tags that appears exactly once.

    Gives a learning signal before any completion is fully well formed (useful for models
    trained from zero); `think_format` is the strict check.
    """
    return [sum(0.25 for tag in _TAGS if c.count(tag) == 1) for c in completions]


def overlong(completions: list[str], completion_ids: list[list[int]] | None = None,
             max_new_tokens: list[int] | None = None,
             overlong_cache: int | list[int] = 16, **_: object) -> list[float | None]:
    """DAPO's soft overlong penalty, with L = len(completion_ids), cap = max_new_tokens and
    cache = overlong_cache (one int, or one per completion):

        0                          L <= cap - cache
        (cap - cache - L) / cache  cap - cache < L <= cap   (falls linearly to -1 at the cap)
        -1                         L > cap

    None when token counts are not given."""
    if completion_ids is None or max_new_tokens is None:
        return [None] * len(completions)
    caches = ([overlong_cache] * len(completion_ids) if isinstance(overlong_cache, int)
              else overlong_cache)
    scores = []
    for ids, limit, cache in zip(completion_ids, max_new_tokens, caches):
        if cache < 1:
            raise ValueError(f"overlong_cache must be >= 1, got {cache}")
        over = len(ids) - (limit - cache)  # tokens into the soft zone
        scores.append(0.0 if over <= 0 else max(-1.0, -over / cache))
    return scores


_SCRIPTS = {  # script name -> prefixes of the Unicode character names that belong to it
    "latin": ("LATIN",), "cyrillic": ("CYRILLIC",), "greek": ("GREEK",),
    "arabic": ("ARABIC",), "hebrew": ("HEBREW",), "devanagari": ("DEVANAGARI",),
    "cjk": ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"),
}
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _script_share(text: str, prefixes: tuple[str, ...]) -> float | None:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    inside = sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters)
    return inside / len(letters)


def language_consistency(completions: list[str], language: list[str] | None = None,
                         **_: object) -> list[float | None]:
    """Share of the letters in the reasoning (the <think> block, else the whole completion)
    written in the target script: a `language` column (latin, cjk, cyrillic, greek, arabic,
    hebrew, devanagari), latin by default. None when the reasoning has no letters."""
    targets = language or ["latin"] * len(completions)
    scores = []
    for text, target in zip(completions, targets):
        if target not in _SCRIPTS:
            raise ValueError(f"unknown script {target!r}; known: {', '.join(_SCRIPTS)}")
        found = _THINK.search(text)
        scores.append(_script_share(found.group(1) if found else text, _SCRIPTS[target]))
    return scores
