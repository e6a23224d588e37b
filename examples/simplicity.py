"""A reward of your own, in TRL's convention: shorter correct answers score more.

Use it next to the built-ins, by file path and function name:

    zeroth run "rewards={correct: 1.0, format: 0.1, 'examples/simplicity.py:simplicity': 0.2}"

Every dataset column arrives as a keyword list (here `answer`); during RL zeroth also passes
`completion_ids` (the sampled token ids) and `max_new_tokens`. Return one float per completion,
or None where the reward does not apply (it then adds nothing and is logged as such).
"""

from zeroth.rewards import exact_answer


def simplicity(completions, answer, completion_ids=None, max_new_tokens=None, **_):
    """1 - length / limit for a correct completion (in tokens when known, else characters);
    0 for a wrong one, so brevity never pays on its own."""
    right = exact_answer(completions, answer=answer)
    lengths = completion_ids or completions
    limits = max_new_tokens or [max(len(c), 1) * 2 for c in completions]
    return [ok * max(0.0, 1.0 - len(n) / limit) for ok, n, limit in zip(right, lengths, limits)]
