"""code_tests: program extraction, HumanEval / MBPP / stdin-stdout tests, scoring modes, the
plain-data channel between test code and program, verifier failures vs wrong answers."""

import sys
import warnings

import pytest

from zeroth.rewards import sandbox
from zeroth.rewards.code import code_tests, extract_program, outputs_match, with_prompt
from zeroth.rewards.sandbox import Limits, SandboxError, run_check, run_program

FAST = {"timeout_s": 3.0}
CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"
RIGHT = "def f(x):\n    return x + 1\n"
HALF = "def f(x):\n    return 2 if x == 1 else 0\n"


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code.rstrip()}\n```"


def test_extract_program_prefers_answer_block_then_last_python_fence():
    assert extract_program(f"a {fenced('x = 1')} b {fenced('x = 2')}") == "x = 2\n"
    assert extract_program(f"{fenced('x = 1')} {fenced('int main(){}', 'cpp')}") == "x = 1\n"
    inside = f"{fenced('x = 1')} <answer>{fenced('x = 2', 'py')}</answer> {fenced('x = 3')}"
    assert extract_program(inside) == "x = 2\n"
    assert extract_program("<think>t</think><answer>\ny = 5\n</answer>") == "y = 5"
    assert extract_program("print(1)") == "print(1)"
    assert extract_program("text\n```python\nz = 1\n") == "z = 1\n"  # cut off before closing


def test_humaneval_style_fraction_and_all_modes():
    comps = [fenced(RIGHT), fenced(HALF), "no code at all", RIGHT]
    cols = {"test": [CHECK] * 4, "entry_point": ["f"] * 4, **FAST}
    assert code_tests(comps, **cols) == [1.0, 0.5, 0.0, 1.0]
    assert code_tests(comps, mode="all", **cols) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown mode"):
        code_tests(comps, mode="most", **cols)


def test_rows_without_tests_are_not_applicable():
    assert code_tests(["x", "y"]) == [None, None]
    assert code_tests([RIGHT, RIGHT], test=[CHECK, None], entry_point=["f", None],
                      **FAST) == [1.0, None]


def test_continuation_of_the_function_header():
    header = 'def f(x):\n    """Add one."""\n'
    assert with_prompt("    return x + 1\n", header, "f") == header + "    return x + 1\n"
    assert with_prompt(RIGHT, header, "f") == RIGHT
    scores = code_tests([fenced("    return x + 1\n"), fenced(RIGHT), "    return x\n"],
                        test=[CHECK] * 3, entry_point=["f"] * 3, code_prompt=[header] * 3,
                        prompt=["the user message"] * 3, **FAST)
    assert scores == [1.0, 1.0, 0.0]


def test_mbpp_style_assert_list_with_setup_code():
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == SENTINEL"]
    program = "def add(a, b):\n    return a + b if a else -1\n"
    scores = code_tests([fenced(program)], test_list=[tests], test_setup_code=["SENTINEL = 0"],
                        **FAST)
    assert scores == [pytest.approx(2 / 3)]


def test_stdio_cases_compare_output_loosely_and_need_a_clean_exit():
    program = "a, b = map(int, input().split())\nprint(a + b, ' ')\nprint()\n"
    cases = [{"input": "1 2\n", "output": "3"}, {"input": "2 2", "output": "4\n\n"},
             {"input": "1 1", "output": "3"}]
    assert code_tests([fenced(program)], cases=[cases], **FAST) == [pytest.approx(2 / 3)]
    assert code_tests([fenced(program)], cases=[cases], mode="all", **FAST) == [0.0]
    io = {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}
    crash = program + "raise SystemExit(3)\n"
    import json
    assert code_tests([program, crash, program], input_output=[io, io, json.dumps(io)],
                      **FAST) == [1.0, 0.0, 1.0]
    assert outputs_match("1 \n2\n\n\n", "1\n2") and not outputs_match("\n1", "1")


def test_large_stdin_and_stdout_pass_through():
    data = "".join(f"{i}\n" for i in range(200_000))  # about 1.3 MB, far over a pipe buffer
    run = run_program("import sys\nsys.stdout.write(sys.stdin.read())\n", data,
                      Limits(timeout_s=5, output_bytes=2 << 20))
    assert run.status == 0 and run.stdout == data


def test_test_code_names_stand_for_the_programs_functions():
    program = "def helper(x):\n    return x * 3\n\ndef f(x):\n    return helper(x) + 1\n"
    test = "def check(candidate):\n    assert helper(2) == 6\n    assert candidate(2) == 7\n"
    assert code_tests([program], test=[test], entry_point=["f"], **FAST) == [1.0]


def test_each_assert_is_counted_and_a_check_that_stops_counts_one_failure():
    program = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    test = ("def check(c):\n    assert c(1) == 1\n    assert c(-1) == 0\n    assert c(2) == 2\n"
            "    try:\n        c(-5)\n        ok = False\n    except ValueError:\n"
            "        ok = True\n    assert ok\n    c(-2)\n    assert c(3) == 3\n")
    result = run_check(program, test, "f", limits=Limits(timeout_s=3))
    assert (result.passed, result.failed, result.completed) == (3, 1, False)
    assert "ValueError" in result.error
    assert code_tests([program], test=[test], entry_point=["f"], **FAST) == [0.6]


def test_plain_values_cross_exactly():
    program = ("def f():\n    return (1, [2.5, float('inf'), -0.0], {(1, 'a'): {3}},"
               " frozenset({b'x'}), 1j, 10 ** 400, None, True, 'é\\ud800')\n")
    test = ("import math\nv = f()\nassert type(v) is tuple and type(v[1]) is list\n"
            "assert v[1][1] == math.inf and math.copysign(1, v[1][2]) == -1\n"
            "assert v[2] == {(1, 'a'): {3}} and v[3] == frozenset({b'x'}) and v[4] == 1j\n"
            "assert v[5] == 10 ** 400 and v[6] is None and v[7] is True\n"
            "assert v[8] == 'é\\ud800'\n"
            "n = f.__name__\nassert math.isnan(g())\n")
    result = run_check(program + "def g():\n    return float('nan')\n", test,
                       limits=Limits(timeout_s=3))
    assert (result.passed, result.failed, result.completed) == (6, 0, True)


def test_runs_are_deterministic():
    program = "import random\nprint(random.random(), list({'a', 'b', 'c', 'd'}), hash('x'))\n"
    first = run_program(program, limits=Limits(timeout_s=3))
    assert first.status == 0 and first.stdout
    assert run_program(program, limits=Limits(timeout_s=3)).stdout == first.stdout


def test_memory_limit_is_configurable():
    program = "def f():\n    return len(bytearray(300 << 20))\n"
    test = "assert f() == 300 << 20\n"
    assert code_tests([program], test_list=[[test]], memory_mb=128, **FAST) == [0.0]
    assert code_tests([program], test_list=[[test]], memory_mb=1024, **FAST) == [1.0]


def test_sandbox_failure_is_raised_not_scored(monkeypatch):
    with pytest.raises(SyntaxError):
        code_tests([RIGHT], test=["def check(c):\n    assert c(1) ==\n"], entry_point=["f"])
    monkeypatch.setattr(sandbox, "_FORK_SERVER", sandbox._ForkServer())
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with pytest.raises(SandboxError, match="cannot start the sandbox"):
        code_tests([RIGHT], test=[CHECK], entry_point=["f"], **FAST)
    with pytest.raises(SandboxError):
        run_check(RIGHT, CHECK, "f", fresh_interpreter=True)


def test_a_test_the_sandbox_cannot_run_is_not_applicable_or_a_failure():
    lambda_test = "def check(candidate):\n    assert candidate(lambda v: v) == 1\n"
    with pytest.warns(RuntimeWarning, match="not plain data"):
        assert code_tests([RIGHT], test=[lambda_test], entry_point=["f"], **FAST) == [None]
    with pytest.raises(ValueError, match="defines no function 'check'"):
        code_tests([RIGHT], test=["assert f(1) == 2\n"], entry_point=["f"], **FAST)


def test_fresh_interpreter_launcher_gives_the_same_verdicts():
    for program, expected in ((RIGHT, (2, 0)), (HALF, (1, 1))):
        result = run_check(program, CHECK, "f", limits=Limits(timeout_s=3),
                           fresh_interpreter=True)
        assert (result.passed, result.failed) == expected and result.completed


def test_missing_isolation_is_reported_once_and_clearly(monkeypatch):
    monkeypatch.setattr(sandbox, "_warned", type(sandbox._warned)())
    monkeypatch.setattr(sandbox, "_report", {})
    features = dict.fromkeys(sandbox._EXPECTED, True) | {"net_namespace": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sandbox._note_features(features)
        sandbox._note_features(features)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "net_namespace" in message and "network" in message and "Still active" in message


def test_sandbox_report_names_the_active_features():
    report = sandbox.sandbox_report()
    assert set(sandbox._EXPECTED) <= set(report)
    assert all(isinstance(v, bool) for v in report.values())
