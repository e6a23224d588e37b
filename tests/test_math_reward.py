"""math_accuracy: answer extraction, the equivalence table, references, threads and the pool."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from zeroth.rewards.math import (
    configure_math_pool,
    extract_gold,
    extract_math_answer,
    math_accuracy,
    math_pool,
)
from zeroth.rewards.pool import DIED, TIMEOUT, CheckPool

TIMEOUT_S = 1.0  # per-check limit in these tests; a worker is killed 1 s after it
BOUND_S = TIMEOUT_S + 1.0 + 5.0  # the limit, the grace, and a generous slack for a restart


@pytest.fixture(scope="module", autouse=True)
def fast_pool():
    configure_math_pool(timeout=TIMEOUT_S)
    yield
    configure_math_pool()  # stops the workers; the next user starts a default pool


def score(completion: str, gold) -> float | None:
    return math_accuracy([completion], [gold])[0]


@pytest.mark.parametrize("text, strict, marker, last_number", [
    # (completion, answer read with answer_fallback none / marker / last_number)
    ("<think>x</think><answer>42</answer>", "42", "42", "42"),
    ("<answer>2</answer> more <answer>2</answer>", "2", "2", "2"),  # agreeing blocks
    ("<answer>1</answer> more <answer>2</answer>", None, None, None),  # hedging: no answer
    ("<answer>so \\boxed{7} it is</answer>", "7", "7", "7"),  # the box inside the block
    ("text \\boxed{\\frac{1}{2}} end", "\\frac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\fbox{5}", "5", "5", "5"),
    ("\\boxed{\\boxed{4}}", "4", "4", "4"),
    ("\\boxed{3} then \\boxed{3}", "3", "3", "3"),  # agreeing boxes are one answer
    ("\\boxed{3} or \\boxed{4}", "3, 4", "3, 4", "3, 4"),  # disagreeing boxes are a list
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", "\\{1, 2\\}", "\\{1, 2\\}"),  # escaped braces
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", None, "72", "72"),
    ("So the answer is 72. Done", None, "72", "72"),
    ("Final answer: 5!", None, "5!", "5!"),  # a factorial, not an exclamation
    ("the total is 15 apples, then 3/4 of them", None, None, "3/4"),  # the final number
    ("<think>\\boxed{3}</think><answer>4</answer>", "4", "4", "4"),
    ("<think>the answer is 3</think>", None, None, None),  # reasoning never counts
    ("<think>the answer is 3", None, None, None),  # unclosed reasoning: no answer
    ("reasoning</think> the answer is 9", None, "9", "9"),  # R1 templates open <think>
    ("<answer></answer> 3", None, None, None),
    ("so <answer>3", None, None, None),  # a block begun and cut off: no falling back
    ("so \\boxed{3", None, None, None),
    ("```python\n# <answer>7</answer> \\boxed{7}\n```", None, None, None),  # code is no answer
    ("no digits here", None, None, None),
    ("\\boxed{1}" * 30, None, None, None),  # more than 20 boxed answers
])
def test_extract_math_answer(text, strict, marker, last_number):
    assert extract_math_answer(text) == strict
    assert extract_math_answer(text, "marker") == marker
    assert extract_math_answer(text, "last_number") == last_number


def test_an_unknown_fallback_is_refused():
    with pytest.raises(ValueError, match="answer fallback"):
        extract_math_answer("<answer>3</answer>", "loose")


@pytest.mark.parametrize("reference, expected", [
    ("72", "72"), (72, "72"), (0.5, "0.5"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 1,000", "1000"),
    ("So the area is $\\boxed{\\frac{\\pi}{4}}$.", "\\frac{\\pi}{4}"),
    ("$\\frac{1}{2}$", "\\frac{1}{2}"),
    (None, None), ("", None), ("   ", None),
])
def test_extract_gold(reference, expected):
    assert extract_gold(reference) == expected


EQUIVALENT = [  # (reference, answer inside <answer>…</answer>)
    ("3", "\\frac{6}{2}"), ("3", "3.0"), ("3", "x = 3"), ("3", "$3$"), ("3", "The answer is 3."),
    ("3", "\\sqrt{9}"), ("2", "\\log_2 4"), ("3", "\\boxed{\\boxed{3}}"), ("3", "+3"),
    ("72", "\\$72"), ("72", "72 dollars"), ("1000", "1,000"), ("1000", "1{,}000"),
    ("1000", "1\\,000"), ("1,000", "1000"), ("1000", "1e3"), ("0.5", "\\frac{1}{2}"),
    ("0.5", ".5"), ("0.5", "50\\%"), ("50", "50\\%"), ("50\\%", "0.5"), ("50", "50 percent"),
    ("\\frac{1}{3}", "0.333333"), ("-3.5", "-\\frac{7}{2}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("2\\sqrt{3}", "\\sqrt{12}"),
    ("(-\\infty, 3]", "(-\\infty,3]"), ("[1, 2]", "\\left[1, 2\\right]"),
    ("\\{1, 2\\}", "\\{2, 1\\}"), ("\\{3, 4\\}", "\\boxed{3} and \\boxed{4}"),
    ("x^2+2x+1", "(x+1)^2"), ("5", "5 \\text{ cm}"), ("5", "5 cm"), ("3\\pi", "3 \\pi"),
    ("\\infty", "\\infty"), ("x=3", "3"), ("\\text{(B)}", "B"), ("10^{-7}", "0.0000001"),
    ("3", "\\approx 3"), ("3", "3 times"), ("x > 2", "(2, \\infty)"),
    # postfix operators: factorials, double factorials, primes
    ("6", "3!"), ("120", "5!"), ("3628800", "10!"), ("6", "3 !"), ("15", "5!!"), ("105", "7!!"),
    ("\\frac{1}{6}", "\\frac{1}{3!}"), ("\\frac{1}{2004!}", "\\frac{1}{2004!}"),
    ("2004!", "2004 \\cdot 2003!"), ("\\frac{1}{15}", "\\frac{1}{5!!}"), ("f'(x)", "f'(x)"),
]
NOT_EQUIVALENT = [
    ("3", "4"), ("3", "-3"), ("3", "3.000001"), ("\\frac{1}{3}", "0.333"),
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"), ("10^{-7}", "0"), ("3", "\\{3\\}"),
    ("3", "3, 4, 5"), ("3", "3 or 4"), ("3", "\\pm 3"), ("3", "x > 2"), ("3", "[2, 4]"),
    ("(-\\infty, 3]", "(-\\infty, 3)"), ("\\{1, 2\\}", "\\{1, 2, 3\\}"), ("x^2+2x+1", "(x-1)^2"),
    ("300", "3\\%"), ("2\\sqrt{3}", "3\\sqrt{2}"), ("\\pi", "3.14"), ("3", "\\text{three}"),
    ("1000", "100"), ("0.5", "5"), ("\\frac{3}{4}", "\\frac{4}{3}"), ("5", "5.5 cm"),
    ("3", "x"), ("72", "72.5"),
    ("3", "3!"), ("24", "4!!"), ("\\frac{1}{2004!}", "\\frac{1}{2006!}"), ("2004!", "2006!"),
    ("720", "3!!"), ("\\frac{1}{2^{1000}}", "\\frac{1}{2^{1001}}"), ("f(x)", "f'(x)"),
    ("f'(x)", "f(x)"), ("f''(x)", "f'(x)"),
]


@pytest.mark.parametrize("reference, answer", EQUIVALENT)
def test_equivalent_answers_score_one(reference, answer):
    assert score(f"<think>work</think><answer>{answer}</answer>", reference) == 1.0


@pytest.mark.parametrize("reference, answer", NOT_EQUIVALENT)
def test_different_answers_score_zero(reference, answer):
    assert score(f"<think>work</think><answer>{answer}</answer>", reference) == 0.0


def test_reference_formats_and_missing_references():
    completions = ["<answer>72</answer>", "\\boxed{0.5}", "<answer>18</answer>",
                   "<answer>1</answer>", "<answer>1</answer>"]
    references = ["Step 1 ...\n#### 72", "Hence $\\boxed{\\frac{1}{2}}$.", 18, None, ""]
    assert math_accuracy(completions, answer=references) == [1.0, 1.0, 1.0, None, None]
    assert math_accuracy(["#### 18"], answer=[18]) == [0.0]  # free text: only when allowed
    assert math_accuracy(["#### 18"], answer=[18], answer_fallback="marker") == [1.0]


def test_conversational_completions_use_the_last_message():
    completions = [[{"role": "assistant", "content": "<answer>\\frac{6}{2}</answer>"}], []]
    assert math_accuracy(completions, answer=["3", "3"]) == [1.0, 0.0]


def test_a_batch_keeps_the_order_of_its_completions():
    golds = [str(n) for n in range(40)]
    completions = [f"<answer>\\frac{{{2 * n}}}{{2}}</answer>" if n % 2
                   else f"<answer>{n + 1}</answer>" for n in range(40)]
    expected = [1.0 if n % 2 else 0.0 for n in range(40)]
    assert math_accuracy(completions, answer=golds) == expected


def test_math_verify_own_timeout_fails_off_the_main_thread():
    """Why checks run in worker processes: math-verify's SIGALRM timeout refuses other threads."""
    from math_verify import parse, verify

    def check():
        return verify(parse("$3$"), parse("$3$"), timeout_seconds=5)

    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="thread"):
        executor.submit(check).result()


def test_calls_from_threads_stay_bounded_and_correct():
    slow = "<answer>(x+1)^{1000}</answer>"  # sympy would simplify this for many seconds
    jobs = [(slow, "3"), ("<answer>\\frac{9}{3}</answer>", "3"), (slow, "3"),
            ("<answer>4</answer>", "3"), ("<answer>\\sqrt{16}</answer>", "4")] * 2
    start = time.monotonic()
    with ThreadPoolExecutor(4) as executor:
        results = list(executor.map(lambda job: score(*job), jobs))
    elapsed = time.monotonic() - start
    assert results == [0.0, 1.0, 0.0, 0.0, 1.0] * 2
    slow_checks_per_worker = -(-4 // math_pool().workers)
    assert elapsed < slow_checks_per_worker * (TIMEOUT_S + 1.0) + 10.0


def test_a_slow_check_does_not_delay_the_others_beyond_its_limit():
    start = time.monotonic()
    assert score("<answer>\\prod_{n=1}^{1000000} n</answer>", "3") == 0.0
    assert time.monotonic() - start < BOUND_S


# ---------------------------------------------------------------- the pool itself


def test_pool_kills_a_worker_stuck_in_c_code_and_goes_on():
    pool = CheckPool("builtins:sum", workers=2, timeout=0.5, grace=0.5)
    try:
        start = time.monotonic()
        stuck = range(10**13)  # sum() of it runs in C and never looks at signals
        assert pool.map([stuck, range(5), stuck, range(7), range(3)]) == \
            [TIMEOUT, 10, TIMEOUT, 21, 3]
        assert time.monotonic() - start < 0.5 + 0.5 + 10.0
        assert pool.map([range(4)]) == [6]  # replaced workers serve the next call
    finally:
        pool.close()


def test_pool_soft_timeout_sleep_and_dead_worker():
    busy = CheckPool("statistics:mean", workers=1, timeout=0.3, grace=30)
    sleeper = CheckPool("time:sleep", workers=1, timeout=0.3, grace=0.5)
    exiter = CheckPool("os:_exit", workers=1, timeout=0.3, grace=0.5)
    try:
        start = time.monotonic()
        assert busy.map([range(10**10), range(5)]) == [TIMEOUT, 2]  # SIGPROF in the worker
        assert time.monotonic() - start < 10.0  # far below the 30 s grace: no kill needed
        assert sleeper.map([30, 0]) == [TIMEOUT, None]  # no CPU used: killed at 0.8 s
        assert exiter.map([1, 2]) == [DIED, DIED]  # each item kills its worker, twice
    finally:
        for pool in (busy, sleeper, exiter):
            pool.close()


def test_pool_that_cannot_start_raises():
    pool = CheckPool("no_such_module_anywhere:check", workers=1)
    with pytest.raises(RuntimeError, match="failed to start"):
        pool.map([1])


def test_an_exception_in_the_check_is_a_verifier_failure():
    pool = CheckPool("builtins:int", workers=1)
    try:
        with pytest.raises(RuntimeError, match="ValueError"):
            pool.map(["not a number", "3"])
        assert pool.map(["5"]) == [5]
    finally:
        pool.close()


def test_pool_shared_by_threads():
    pool = CheckPool("builtins:abs", workers=2, chunk=3)
    barrier = threading.Barrier(4)

    def run(k):
        barrier.wait()
        return pool.map([-n for n in range(k, k + 50)])

    try:
        with ThreadPoolExecutor(4) as executor:
            results = list(executor.map(run, [0, 100, 200, 300]))
        assert results == [list(range(k, k + 50)) for k in (0, 100, 200, 300)]
    finally:
        pool.close()
