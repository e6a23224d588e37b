"""Hostile and pathological completions for math_accuracy: every one scores 0.0, each check ends
within its time limit (plus a generous slack), and the calling process lives on."""

from __future__ import annotations

import os
import time

import pytest

from zeroth.rewards.math import configure_math_pool, extract_math_answer, math_accuracy

TIMEOUT_S = 1.0
BOUND_S = TIMEOUT_S + 1.0 + 5.0  # the limit, the worker kill's grace, slack for a restart

HOSTILE = {  # name -> (completion, reference)
    "python power tower": ("<answer>10**10**10</answer>", "3"),
    "latex power tower": ("<answer>9^{9^{9^{9}}}</answer>", "3"),
    "huge power": ("<answer>10^{10^{10}}</answer>", "3"),
    "huge power times zero": ("<answer>3+0\\cdot 10^{10^{10}}</answer>", "3"),
    "huge negative power": ("<answer>3+10^{-10^{10}}</answer>", "3"),
    "huge factorial": ("<answer>(10^{10})!</answer>", "3"),
    "slow simplification": ("<answer>(x+1)^{1000}</answer>", "3"),
    "slow product": ("<answer>\\prod_{n=1}^{1000000} n</answer>", "3"),
    "division by zero": ("<answer>\\frac{1}{0}</answer>", "3"),
    "zero over zero": ("<answer>\\frac{0}{0}</answer>", "3"),
    "nested braces": ("<answer>" + "{" * 5000 + "3" + "}" * 5000 + "</answer>", "3"),
    "nested boxes": ("\\boxed{" * 20000 + "3" + "}" * 20000, "3"),
    "unbalanced boxes": ("\\boxed{" * 100000 + "3", "3"),
    "many boxes": ("\\boxed{3}" * 100000, "3"),
    "megabyte answer": ("<answer>" + "3" * 1_000_000 + "</answer>", "3"),
    "megabyte of threes": ("<answer>" + "3 " * 500_000 + "</answer>", "3"),
    "arabic-indic digit": ("<answer>٣</answer>", "3"),
    "fullwidth digit": ("<answer>３</answer>", "3"),
    "mathematical bold digit": ("<answer>𝟑</answer>", "3"),
    "boxed fullwidth digit": ("so \\boxed{３}", "3"),
    "final look-alike number": ("so the answer is ３", "3"),
    "devanagari digit": ("<answer>३</answer>", "3"),
    "superscript three": ("<answer>³</answer>", "3"),
    "boxed hedge": ("\\boxed{3} or \\boxed{4}", "3"),
    "list hedge": ("<answer>3, 4, 5</answer>", "3"),
    "word hedge": ("<answer>3 or 4</answer>", "3"),
    "text hedge": ("<answer>3 \\text{ or } 4</answer>", "3"),
    "plus-minus hedge": ("<answer>\\pm 3</answer>", "3"),
    "equation hedge": ("<answer>x = 3 \\text{ or } x = 4</answer>", "3"),
    "set containing the answer": ("<answer>\\{1, 2, 3\\}</answer>", "3"),
    "singleton set": ("<answer>\\{3\\}</answer>", "3"),
    "interval containing the answer": ("<answer>[2, 4]</answer>", "3"),
    "inequality": ("<answer>x>2</answer>", "3"),
    "range of inequalities": ("<answer>2 < x < 4</answer>", "3"),
    "text": ("<answer>\\text{anything}</answer>", "3"),
    "answer only in thinking": ("<think>the answer is 3</think><answer>4</answer>", "3"),
    "boxed only in thinking": ("<think>\\boxed{3}</think><answer></answer>", "3"),
    "thinking without answer": ("<think>3</think>", "3"),
    "unclosed thinking": ("<think>so it is 3", "3"),
    "empty answer": ("<answer></answer>", "3"),
    "blank answer": ("<answer>   </answer>", "3"),
    "empty completion": ("", "3"),
    "nan": ("<answer>nan</answer>", "3"),
    "NaN text": ("<answer>\\text{NaN}</answer>", "3"),
    "oo": ("<answer>oo</answer>", "3"),
    "infinity": ("<answer>\\infty</answer>", "3"),
    "tex def": ("<answer>\\def\\x{3}\\x</answer>", "3"),
    "tex input": ("<answer>\\input{/etc/passwd}</answer>", "3"),
    "tex newcommand": ("<answer>\\newcommand{\\three}{3}\\three</answer>", "3"),
    "rounded third": ("<answer>0.333</answer>", "\\frac{1}{3}"),
    "tiny difference hidden by rounding": ("<answer>0</answer>", "10^{-7}"),
    "close powers of two": ("<answer>\\frac{1}{2^{98}}</answer>", "\\frac{1}{2^{99}}"),
}


@pytest.fixture(scope="module", autouse=True)
def fast_pool():
    configure_math_pool(timeout=TIMEOUT_S)
    yield
    configure_math_pool()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completion_scores_zero_in_bounded_time(name):
    completion, reference = HOSTILE[name]
    start = time.monotonic()
    assert math_accuracy([completion], [reference]) == [0.0]
    assert time.monotonic() - start < BOUND_S


def test_all_hostile_completions_in_one_batch():
    completions = [c for c, _ in HOSTILE.values()] + ["<answer>\\frac{6}{2}</answer>"]
    references = [r for _, r in HOSTILE.values()] + ["3"]
    start = time.monotonic()
    assert math_accuracy(completions, references) == [0.0] * len(HOSTILE) + [1.0]
    slow = 2  # the two completions that run into the time limit
    assert time.monotonic() - start < slow * BOUND_S + 10.0


def test_extraction_of_a_megabyte_completion_is_fast():
    text = "<think>" + "x{y}z " * 200_000 + "</think> \\boxed{" * 1000 + "the end"
    start = time.monotonic()
    extract_math_answer(text)
    assert time.monotonic() - start < 2.0


def test_the_process_and_the_pool_live_on():
    pid = os.getpid()
    assert math_accuracy(["<answer>\\sqrt{9}</answer>"], ["3"]) == [1.0]
    assert os.getpid() == pid
