"""Task `reasoning_gym`: any reasoning-gym generator as a zeroth task, scored by its own scorer.

    task: {name: reasoning_gym, options: {dataset: leg_counting, config: {max_animals: 4}}}

Options: `dataset` (a reasoning-gym dataset name, required), `config` (keyword arguments of
that dataset's config class, e.g. min_terms / max_terms for basic_arithmetic), `seed` (seed of
the training stream, default 0) and `size` (entries per stream, default 10000: the index range
rows are drawn from; some generators precompute per entry).

Rows: prompt = the entry's question, answer = its answer as text, plus rg_seed / rg_index, the
stream and index that regenerate the entry (reasoning-gym entries are a pure function of both).
Training rows are drawn from the stream seeded by task.options.seed; held-out rows walk a second
stream seeded from the run seed. The two never share a problem, whatever the seeds: as for the
procedural families, a stable hash of the question text decides the split (held out when below
task.heldout_fraction), training keeps only questions above it and evaluation only questions
below it (distinct ones).

Reward "correct": the dataset's own `score_answer(answer, entry)` on the text of the
<answer> block after the reasoning, 1.0 when it gives full credit and 0.0 otherwise. Its
partial scores are kept only with task.options.partial_credit=true: reasoning-gym's default
scorer pays len(reference) / len(answer) to any answer that contains the reference, so number
soup would earn something. No answer block (or several that disagree), or a scorer that raises
on a malformed answer: 0.0. Weights {correct: 1.0, format: 0.1}.

A dataset whose scorer gives full credit to a non-answer, to one short answer on problems with
different answers, or to the right answer hedged with a wrong one (`28080 or 44`: reasoning-gym's
gsm_symbolic, spell_backward, time_intervals, ...) is refused at load: reasoning-gym's `game_of_life_halting` compares
`bool(answer)` with `bool("False")` (every answer scores 1.0), and `coin_flip` gives `0` full
credit for every probability below 1 (a prefix match of "0" in "0.3125").

Demonstrations (for pre-training from scratch): reasoning-gym has no worked solutions, so every
demonstration is the direct reference answer `<answer>…</answer>`, whatever demos.error and
demos.reason_fraction say; its verdict is the scorer's.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import lru_cache
from itertools import pairwise
from random import Random

from zeroth.errors import UserError
from zeroth.rewards import REWARDS
from zeroth.rewards.shaping import extract_answer
from zeroth.seeding import stable_hash
from zeroth.tasks.files import require
from zeroth.tasks.options import Option, flag, integer, mapping, read_options, text
from zeroth.tasks.procedural import collect
from zeroth.types import Row, Task

OPTIONS = {
    "dataset": Option(None, text(), "reasoning-gym dataset name, e.g. leg_counting"),
    "config": Option({}, mapping, "keyword arguments of the dataset's config"),
    "seed": Option(0, integer(0, 2**31 - 1), "seed of the training stream"),
    "size": Option(10_000, integer(1, 10**7), "entries per stream"),
    "partial_credit": Option(False, flag, "keep the scorer's partial scores (off: 1.0 or 0.0)"),
}
_RESERVED = ("seed", "size")
NOT_AN_ANSWER = "zeroth: this is not an answer"  # no scorer may give it full credit
PROBES = ("0", "1", "-1", "0.5", "yes", "no", "True", "False", "None", "[]", "A")


def _registry() -> dict:
    require("reasoning_gym", "task 'reasoning_gym'")
    from reasoning_gym.factory import DATASETS

    return DATASETS


def _check_name(name: str | None, registry: dict) -> str:
    if name in registry:
        return name
    if name is None:
        raise UserError("task 'reasoning_gym' needs task.options.dataset — e.g. "
                        "task.options.dataset=leg_counting")
    close = difflib.get_close_matches(str(name), list(registry), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    some = ", ".join(sorted(registry)[:8])
    raise UserError(f"task.options.dataset must name a reasoning-gym dataset, got {name!r} — "
                    f"{hint}e.g. {some}, … ({len(registry)} in all)")


def _check_config(name: str, config: dict, config_cls) -> None:
    valid = [f.name for f in dataclasses.fields(config_cls) if f.name not in _RESERVED]
    for key in config:
        if key in _RESERVED:
            raise UserError(f"task.options.config.{key}: set task.options.{key} instead")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"task.options.config.{key} is not a setting of reasoning-gym "
                            f"'{name}' — {hint}valid: {', '.join(valid)}")


class Streams:
    """The reasoning-gym dataset objects by seed, and their entries (cached)."""

    def __init__(self, name: str, config: dict, size: int):
        self.name, self.config, self.size = name, config, size
        self.datasets: dict[int, object] = {}
        self.entry = lru_cache(maxsize=16_384)(self._entry)

    def dataset(self, seed: int):
        if seed not in self.datasets:
            import reasoning_gym

            try:
                made = reasoning_gym.create_dataset(self.name, **self.config, seed=seed,
                                                    size=self.size)
            except Exception as exc:  # noqa: BLE001 — any refusal of the user's config
                raise UserError(f"task.options.config: reasoning-gym '{self.name}' rejects it "
                                f"({type(exc).__name__}: {str(exc)[:120]})") from None
            self.datasets[seed] = made
        return self.datasets[seed]

    def _entry(self, seed: int, index: int) -> dict:
        return self.dataset(seed)[index]

    def row(self, seed: int, index: int) -> Row:
        entry = self.entry(seed, index)
        answer = entry.get("answer")
        return {"prompt": str(entry["question"]), "answer": "" if answer is None else str(answer),
                "rg_seed": seed, "rg_index": index}

    def score(self, text: str | None, seed: int, index: int) -> float:
        if text is None:
            return 0.0
        try:
            return float(self.dataset(seed).score_answer(answer=text,
                                                         entry=self.entry(seed, index)))
        except Exception:  # noqa: BLE001 — a scorer that chokes on a malformed answer: wrong
            return 0.0


def _check_scorer(streams: Streams, seed: int, entries: int = 8) -> None:
    """Refuse a scorer that gives full credit to a text that answers nothing, or to one short
    text (`0`, `yes`, ...) on two problems whose reference answers differ by its own verdict."""
    indices = range(min(entries, streams.size))
    for probe in (NOT_AN_ANSWER, *PROBES):
        passed = [i for i in indices if streams.score(probe, seed, i) >= 1.0]
        if probe == NOT_AN_ANSWER and passed:
            raise UserError(f"reasoning-gym '{streams.name}': its score_answer gives full "
                            f"credit to a non-answer ({NOT_AN_ANSWER!r}), so any answer would "
                            "count as right; pick another dataset")
        for a in passed:
            for b in passed:
                if streams.score(streams.row(seed, b)["answer"], seed, a) < 1.0:
                    raise UserError(f"reasoning-gym '{streams.name}': its score_answer gives "
                                    f"full credit to {probe!r} on problems with different "
                                    "answers; pick another dataset")
    _check_hedges(streams, seed, indices)


HEDGES = ("{right} or {wrong}", "{wrong} or {right}", "{right}\n{wrong}", "{right}, {wrong}")


def _check_hedges(streams: Streams, seed: int, indices: range) -> None:
    """Refuse a scorer that gives full credit to the right answer hedged with a wrong one
    (`28080 or 44`): a policy would learn to list every candidate."""
    answers = {i: streams.row(seed, i)["answer"] for i in indices}
    for a, b in pairwise(indices):
        right, wrong = answers[a], answers[b]
        if streams.score(wrong, seed, a) >= 1.0:
            continue  # the two problems share their answer
        for form in HEDGES:
            hedge = form.format(right=right, wrong=wrong)
            if streams.score(hedge, seed, a) >= 1.0:
                raise UserError(f"reasoning-gym '{streams.name}': its score_answer gives full "
                                f"credit to a hedged answer ({hedge!r}); pick another dataset")


def _rows(streams: Streams, rng: Random, n: int, seed: int, *, heldout: bool,
          fraction: float) -> list[Row]:
    """Training rows: random indices of stream `seed`; held-out rows: its indices in order."""
    if heldout:
        indices = iter(range(streams.size))
        rows = collect(rng, n, lambda _: streams.row(seed, next(indices)), heldout=True,
                       fraction=fraction, distinct=True, tries=min(streams.size, 100 * n + 10_000))
    else:
        rows = collect(rng, n, lambda r: streams.row(seed, r.randrange(streams.size)),
                       heldout=False, fraction=fraction, distinct=False, tries=1000 * n + 10_000)
    if rows is None:
        side = "held-out" if heldout else "training"
        raise ValueError(f"reasoning-gym '{streams.name}': the {side} split has fewer than {n} "
                         "problems — raise task.options.size, change task.heldout_fraction or "
                         "lower task.eval_problems")
    return rows


def load(task_cfg, demo_cfg) -> Task:
    opts = read_options("reasoning_gym", task_cfg.options, OPTIONS)
    registry = _registry()
    name = _check_name(opts["dataset"], registry)
    _check_config(name, opts["config"], registry[name][1])
    streams = Streams(name, opts["config"], opts["size"])
    streams.dataset(opts["seed"])  # a bad config fails here, before any run starts
    _check_scorer(streams, opts["seed"])
    fraction = task_cfg.heldout_fraction

    def train_rows(rng: Random, n: int) -> list[Row]:
        return _rows(streams, rng, n, opts["seed"], heldout=False, fraction=fraction)

    def eval_rows(n: int, seed: int) -> list[Row]:
        stream = stable_hash(f"reasoning_gym-heldout-{seed}") % 2**31
        return _rows(streams, Random(0), n, stream, heldout=True, fraction=fraction)

    def correct(completions: list[str], rg_seed: list, rg_index: list, **_) -> list[float]:
        scores = [streams.score(extract_answer(c), s, i)
                  for c, s, i in zip(completions, rg_seed, rg_index)]
        return scores if opts["partial_credit"] else [float(x >= 1.0) for x in scores]

    def demonstration(row: Row, rng: Random) -> tuple[str, bool]:
        text = f"<answer>{row['answer']}</answer>"
        return text, streams.score(extract_answer(text), row["rg_seed"], row["rg_index"]) == 1.0

    correct.__doc__ = f"reasoning-gym '{name}' score_answer on the <answer> text."
    return Task(name="reasoning_gym", train_rows=train_rows, eval_rows=eval_rows,
                rewards={**REWARDS, "correct": correct}, demonstration=demonstration,
                info={"dataset": name, **opts}, accuracy="correct",
                weights={"correct": 1.0, "format": 0.1})
