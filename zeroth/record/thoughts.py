"""Reading a completion: its reasoning apart from its answer, and signs of self-checking.

Shared by the training metrics (`reflect_rate`), the web view, the chat and the plots, so all of
them split a completion and count reflection the same way.

    split_reasoning("<think>2+2 is 4, let me check</think><answer>4</answer>")
        -> ("2+2 is 4, let me check", "4")
"""

from __future__ import annotations

import re

# Phrases a model uses when it goes back over its own work ("aha moments"). Matched as whole
# words, case-insensitively, in the reasoning part of a completion.
REFLECTION_PHRASES = (
    "wait", "let me check", "let me verify", "let me re-check", "let me recheck",
    "double-check", "double check", "verify", "verifying", "re-evaluate", "reconsider",
    "on second thought", "hmm", "actually", "i made a mistake", "that's wrong", "check again",
)
_REFLECTION = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in REFLECTION_PHRASES) + r")\b",
                         re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)(?=</think>|<answer>|$)", re.DOTALL)  # unclosed: to the answer
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


def split_reasoning(completion: str) -> tuple[str, str]:
    """(reasoning, answer) of a completion in the `<think>…</think><answer>…</answer>` layout.

    The reasoning is the text of the think block (an unclosed block runs to the end); the answer
    is the text of the last answer block. A completion without tags is all answer; one with a
    think block and no answer block has an empty answer. When the prompt opened the think block
    (R1-style templates end the prompt with `<think>`), the text before the first `</think>` is
    the reasoning. Both parts are stripped."""
    head, closes, _ = completion.partition("</think>")
    if closes and "<think>" not in head:  # the prompt opened the think block (R1 templates)
        completion = "<think>" + completion
    thinks = _THINK.findall(completion)
    answers = _ANSWER.findall(completion)
    if not thinks and not answers:
        return "", completion.strip()
    reasoning = "\n".join(t.strip() for t in thinks)
    return reasoning.strip(), (answers[-1].strip() if answers else "")


def reflection_count(completion: str) -> int:
    """How many reflection phrases the completion's reasoning (or, untagged, its text) holds."""
    reasoning, answer = split_reasoning(completion)
    return len(_REFLECTION.findall(reasoning if reasoning else answer))


def reflect_rate(completions: list[str]) -> float:
    """The share of completions whose reasoning holds at least one reflection phrase."""
    if not completions:
        return 0.0
    return sum(reflection_count(c) > 0 for c in completions) / len(completions)
