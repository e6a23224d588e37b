"""No credit for noise: a built-in verifier says "right" only for an answer the completion states.

Two tables: completions that must never score (random bytes, number soup, the answer only in
the reasoning, several answers, an answer in code, the gold answer quoted from the prompt,
look-alikes, near misses) and honest completions that must score 1.0 — for math_accuracy, the
exact verifier of the procedural and jsonl tasks, and countdown's expression checker.
"""

from __future__ import annotations

import random

import pytest

from zeroth.rewards import exact_answer
from zeroth.rewards.math import configure_math_pool, math_accuracy
from zeroth.tasks import countdown
from zeroth.tasks.procedural import verifier

PROMPT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many " \
    "clips in May. How many clips did Natalia sell altogether in April and May?"
COUNTDOWN_ROW = {"numbers": [5, 19, 3], "target": 72}
count_correct = verifier(countdown.check, "countdown")


@pytest.fixture(scope="module", autouse=True)
def fast_pool():
    configure_math_pool(timeout=1.0)
    yield
    configure_math_pool()


def math_score(completion: str, gold: str, fallback: str = "none") -> float | None:
    return math_accuracy([completion], [gold], answer_fallback=fallback)[0]


def exact_score(completion: str, gold: str) -> float:
    return exact_answer([completion], [gold])[0]


def countdown_score(completion: str) -> float:
    return count_correct([completion], **{k: [v] for k, v in COUNTDOWN_ROW.items()})[0]


SCORERS = {"math": math_score, "exact": exact_score}

STATED_IN_FREE_TEXT = ("answer: 72", "#### 72")  # answers only where a task allows free text
ADVERSARIAL = [  # (verifier, completion, gold)
    ("math", "?x7 bq", "7"),  # random bytes that happen to hold the digit
    ("math", "\x00\x17 7 \xff\ufffd", "7"),
    ("math", "7", "7"),  # a bare number is no stated answer when the prompt asks for tags
    ("math", "1 2 3 4 5 6 7", "7"),  # number soup
    ("math", "72 72 72 72 72 72", "72"),
    ("math", "answer: 72", "72"),  # free text (only with task.options.answer_fallback)
    ("math", "#### 72", "72"),
    ("math", PROMPT, "48"),  # the prompt quoted back, holding a number of the problem
    ("math", f"{PROMPT} 72", "72"),
    ("math", "<think>the answer is 72</think>", "72"),  # only in the reasoning
    ("math", "<think><answer>72</answer></think>", "72"),
    ("math", "<think>\\boxed{72}</think>", "72"),
    ("math", "<think>so it is \\boxed{72}", "72"),  # reasoning left open
    ("math", "<answer>71</answer><answer>72</answer>", "72"),  # several answers
    ("math", "<answer>72</answer> or <answer>73</answer>", "72"),
    ("math", "\\boxed{71} \\boxed{72}", "72"),
    ("math", "<answer>71 or 72</answer>", "72"),
    ("math", "<answer>70, 71, 72</answer>", "72"),
    ("math", "<answer>\\pm 72</answer>", "72"),
    ("math", "<answer>[70, 80]</answer>", "72"),
    ("math", "```python\n# answer: 72\nprint(72)\n```", "72"),  # an answer in code
    ("math", "```\n<answer>72</answer>\n```", "72"),
    ("math", "```python\nx = 72  # \\boxed{72}\n```", "72"),
    ("math", "<answer>72", "72"),  # cut off
    ("math", "\\boxed{72", "72"),
    ("math", "<answer></answer> 72", "72"),
    ("math", "<answer>٧٢</answer>", "72"),  # look-alike digits
    ("math", "<answer>７２</answer>", "72"),
    ("math", "<answer>x</answer>", "72"),
    ("math", "<answer>72.000001</answer>", "72"),  # near misses
    ("math", "<answer>\\frac{1}{2006!}</answer>", "\\frac{1}{2004!}"),
    ("math", "<answer>3!</answer>", "3"),
    ("math", "<answer>3!!</answer>", "720"),  # 3!! is 3, not (3!)!
    ("math", "<answer>f(x)</answer>", "f'(x)"),
    ("math", "<answer>\\infty</answer>", "72"),
    ("math", "<answer>72^{10^{10}}</answer>", "72"),
    ("math", "<answer>72\\text{ or 73}</answer>", "72"),  # a hedge dressed as a unit
    ("math", "<answer>72\\mbox{ (or 73)}</answer>", "72"),
    ("math", "<answer>72 \\text{, maybe 73}</answer>", "72"),
    ("math", "<answer>72 \\approx 73</answer>", "72"),  # states 73
    ("math", "The answer is 72? No, it is 80.", "72"),  # free text, even where allowed
    ("math", "The answer is 72; or 80", "72"),
    ("exact", "936", "936"),
    ("exact", "<think><answer>936</answer></think>", "936"),
    ("exact", "<think>x <answer>936</answer>", "936"),
    ("exact", "<answer>826</answer><answer>936</answer>", "936"),
    ("exact", "<answer>936 or 826</answer>", "936"),
    ("exact", "<answer>９３６</answer>", "936"),
    ("exact", "<answer>936.0</answer>", "936"),
    ("exact", "<answer>9,36</answer>", "936"),
]

HONEST = [  # (verifier, completion, gold, answer_fallback)
    ("math", "<think>48/2 = 24, 48 + 24 = 72</think><answer>72</answer>", "72", "none"),
    ("math", "<answer>72</answer>", "72", "none"),
    ("math", "<answer>\\boxed{72}</answer>", "72", "none"),
    ("math", "So in all she sold \\boxed{72} clips.", "72", "none"),
    ("math", "<think>x</think>\\boxed{\\frac{\\pi}{4}}", "\\frac{\\pi}{4}", "none"),
    ("math", "<answer>72.0</answer>", "72", "none"),
    ("math", "<answer>$72$</answer>", "72", "none"),
    ("math", "<answer>\\frac{144}{2}</answer>", "72", "none"),
    ("math", "<answer>The answer is 72.</answer>", "72", "none"),
    ("math", "<answer>72 clips</answer>", "72", "none"),
    ("math", "<answer>\\$72</answer>", "72", "none"),
    ("math", "<answer>1,000</answer>", "1000", "none"),
    ("math", "<answer>\\frac{1}{2}</answer>", "0.5", "none"),
    ("math", "<answer>0.5</answer>", "\\frac{1}{2}", "none"),
    ("math", "<answer>50\\%</answer>", "0.5", "none"),
    ("math", "<answer>x = 3</answer>", "3", "none"),
    ("math", "<answer>\\sqrt{12}</answer>", "2\\sqrt{3}", "none"),
    ("math", "<answer>(x+1)^2</answer>", "x^2+2x+1", "none"),
    ("math", "<answer>3!</answer>", "6", "none"),
    ("math", "<answer>5!!</answer>", "15", "none"),
    ("math", "<answer>\\frac{1}{2004!}</answer>", "\\frac{1}{2004!}", "none"),
    ("math", "<answer>\\frac{1}{6}</answer>", "\\frac{1}{3!}", "none"),
    ("math", "<answer>f'(x)</answer>", "f'(x)", "none"),
    ("math", "<answer>\\{2, 1\\}</answer>", "\\{1, 2\\}", "none"),
    ("math", "reasoning</think><answer>9</answer>", "9", "none"),  # the prompt opened <think>
    ("math", "<think>\\boxed{3}</think><answer>4</answer>", "4", "none"),
    ("math", "<answer>72</answer> <answer>72</answer>", "72", "none"),  # agreeing answers
    ("math", "\\boxed{72}, that is \\boxed{72}", "72", "none"),
    ("math", "48 + 24 = 72\n#### 72", "72", "marker"),  # free text where the task allows it
    ("math", "So the answer is 72. Thanks", "72", "marker"),
    ("math", "Final answer: 5!", "120", "marker"),
    ("math", "She sold 48 + 24 = 72 clips", "72", "last_number"),
    ("math", "<answer>**72**</answer>", "72", "none"),  # markdown bold
    ("math", "<answer>\n```\n72\n```\n</answer>", "72", "none"),  # a fence around it
    ("math", "<answer>f'(x) = 2x</answer>", "2x", "none"),  # the right-hand side counts
    ("math", "<answer>2x</answer>", "f'(x) = 2x", "none"),
    ("math", "<answer>72 \\text{ clips}</answer>", "72", "none"),
    ("math", "The answer is **72**.", "72", "marker"),
    ("exact", "<think>6+3=9 3+9+0=12 4+5+1=10</think><answer>1029</answer>", "1029", "none"),
    ("exact", "<answer>0936</answer>", "936", "none"),
    ("exact", "<answer> 936 </answer>", "936", "none"),
    ("exact", "<answer>1,458</answer>", "1458", "none"),
    ("exact", "x</think><answer>936</answer>", "936", "none"),
    ("exact", "<answer>Paris</answer>", "paris", "none"),
]


@pytest.mark.parametrize("kind, completion, gold", ADVERSARIAL)
def test_noise_and_tricks_never_score(kind, completion, gold):
    assert SCORERS[kind](completion, gold) in (0.0, None)
    if kind == "math" and completion not in STATED_IN_FREE_TEXT:  # nor where free text counts
        assert math_score(completion, gold, "marker") in (0.0, None)


@pytest.mark.parametrize("kind, completion, gold, fallback", HONEST)
def test_stated_answers_score(kind, completion, gold, fallback):
    score = math_score(completion, gold, fallback) if kind == "math" else exact_score(completion,
                                                                                      gold)
    assert score == 1.0


def test_the_tables_are_large_enough():
    assert len(ADVERSARIAL) >= 30 and len(HONEST) >= 30


@pytest.mark.parametrize("completion, expected", [
    ("<answer>(5+19)*3</answer>", 1.0),
    ("<think>5+19=24, 24*3=72</think><answer>3*(19+5)</answer>", 1.0),
    ("<think><answer>(5+19)*3</answer></think>", 0.0),  # only in the reasoning
    ("<answer>72</answer>", 0.0),  # the target is no expression of the numbers
    ("<answer>(5+19)*3</answer><answer>5*19-3</answer>", 0.0),  # several answers
    ("(5+19)*3", 0.0),
])
def test_countdown_credits_one_stated_expression(completion, expected):
    assert countdown_score(completion) == expected


def test_random_text_earns_nothing_where_the_last_number_would():
    """Garbage built from digits, letters and punctuation scores 0 by default; read with the
    last-number fallback a share of it would score (the hole this closes)."""
    rng = random.Random(0)
    alphabet = "0123456789 abcxyz?!.,-+=\n"
    golds = [str(rng.randint(0, 9)) for _ in range(300)]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in golds]
    strict = math_accuracy(texts, golds)
    loose = math_accuracy(texts, golds, answer_fallback="last_number")
    assert sum(strict) == 0.0
    assert sum(loose) > 10  # the same garbage did score through the old fallback


def test_free_text_is_a_per_task_option_off_by_default(tmp_path):
    """task.options.answer_fallback of the math tasks: off by default, `marker` reads `#### n`,
    a bad value is refused with a line naming it."""
    import json

    from zeroth.config import load_config
    from zeroth.errors import UserError
    from zeroth.tasks import load_task

    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?",
                                        "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                            for i in range(40)), encoding="utf-8")

    def correct(*options):
        task = load_task(load_config(None, ["task.name=gsm8k", f"task.path={path}", *options]))
        row = task.eval_rows(1, 0)[0]
        said = [f"so\n#### {row['answer']}", f"<answer>{row['answer']}</answer>"]
        return [task.rewards[name](said, answer=[row["answer"]] * 2)
                for name in ("correct", "math_accuracy")]

    assert correct() == [[0.0, 1.0]] * 2
    assert correct("task.options.answer_fallback=marker") == [[1.0, 1.0]] * 2
    with pytest.raises(UserError, match="task.options.answer_fallback"):
        correct("task.options.answer_fallback=loose")


def test_reasoning_gym_gives_no_partial_credit_to_soup_unless_asked():
    """reasoning-gym's default scorer pays len(reference)/len(answer) to any answer holding the
    reference; zeroth keeps only full credit unless task.options.partial_credit is set."""
    from random import Random

    from zeroth.config import load_config
    from zeroth.tasks import load_task

    def gym(partial: bool):
        cfg = load_config(None, ["task.name=reasoning_gym", "task.options.size=200"])
        cfg.task.options = {"dataset": "leg_counting", "config": {"max_animals": 3},
                            "partial_credit": partial}
        return load_task(cfg)

    for partial in (False, True):
        task = gym(partial)
        rows = task.train_rows(Random(0), 10)
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        soup = [f"<answer>{' '.join(str(n) for n in range(1000))}</answer>" for _ in rows]
        right = [f"<answer>{r['answer']}</answer>" for r in rows]
        scores = task.rewards["correct"](soup, **columns)
        assert task.rewards["correct"](right, **columns) == [1.0] * 10
        assert (max(scores) > 0.0) if partial else scores == [0.0] * 10


def test_code_from_the_reasoning_or_from_disagreeing_answers_is_no_program():
    from zeroth.rewards.code import extract_program

    def fence(code: str) -> str:
        return f"```python\n{code}\n```"

    assert extract_program(f"<think>{fence('x = 1')}</think>") == ""
    assert extract_program(f"<answer>{fence('x = 1')}</answer><answer>{fence('x = 2')}</answer>") \
        == ""
    assert extract_program(f"<think>t</think><answer>{fence('x = 2')}</answer>") == "x = 2\n"
