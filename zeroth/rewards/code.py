"""Code rewards: run the program in a completion against the row's tests, in the sandbox.

`code_tests` takes the program from what the completion states after its reasoning (never
from inside `<think>`) — inside <answer>…</answer> first when there is one: the last
```python / ```py / ``` fenced block, else the raw text — and scores it
against whichever tests the row has:

- `test` (+ `entry_point`): HumanEval style, test code defining `check(candidate)`;
- `test_list` (+ `test_setup_code`): MBPP style, a list of assert statements;
- `cases` (a list of {"input", "output"}) or `input_output` ({"inputs", "outputs"}, also as a
  JSON string; APPS / TACO style): one run of the program per stdin, compared on stdout with
  trailing whitespace of each line and trailing blank lines ignored.

`mode="fraction"` scores the share of asserts (or cases) passed — a check that did not run to
its end (time out, crash) counts one failure more; `mode="all"` scores 1.0 only when every
assert passes (at least one) and the check completes. A row with no tests is None (not
applicable). A sandbox that fails raises (a verifier failure), a program that misbehaves
scores 0.0. HumanEval continuation: a program that does not define `entry_point` is appended
to the row's `code_prompt` (the function header), so a completion with only the body works.
Helpers the prompt implements and the test calls (`poly`) come from the prompt, never from
the program (see `with_helpers`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

from zeroth.rewards.sandbox import (
    CaseResult,
    CheckResult,
    Limits,
    free_names,
    run_cases,
    run_check,
)
from zeroth.rewards.shaping import after_thinking, answer_block

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = {"", "python", "py", "python3", "py3"}
MODES = ("fraction", "all")


def extract_program(completion: str) -> str:
    """The last Python fenced block (of the answer block when there is one, else of what follows
    the reasoning); else the answer block's text; else all that follows the reasoning. A
    program written only inside `<think>`, or one of several disagreeing answer blocks, is no
    answer (empty)."""
    stated = after_thinking(completion)
    block = answer_block(completion)
    if block is None and "</answer>" in stated:
        return ""  # several answer blocks that disagree: no program is stated
    sources = ([block] if block is not None else []) + [stated]
    for source in sources:
        blocks = [body for lang, body in _FENCE.findall(source) if lang.lower() in _PYTHON]
        if blocks:
            return blocks[-1]
    return block.strip("\n") if block is not None else stated


def _defines(program: str, name: str) -> bool:
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def with_prompt(program: str, code_prompt: str | None, entry_point: str | None) -> str:
    """HumanEval continuation: `code_prompt` + program when only the prompt defines the entry
    point (the completion is the function's body). A program that writes the whole function
    gets the prompt's context first — its imports, constants and implemented helpers — as it
    would have in a file that starts with the prompt (`from typing import List`, `poly`); its
    own definitions come after and win."""
    if not code_prompt or not entry_point:
        return program
    if _defines(program, entry_point):
        context = _prompt_context(code_prompt, entry_point)
        return f"{ast.unparse(ast.Module(body=context, type_ignores=[]))}\n\n\n{program}" \
            if context else program
    if not _defines(code_prompt, entry_point) and f"def {entry_point}" not in code_prompt:
        return program
    return code_prompt.rstrip(" ") + ("" if code_prompt.endswith("\n") else "\n") + program


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _stub(node: ast.AST) -> bool:
    """A definition whose body is only a docstring, `pass` or `...` (for the program to write)."""
    return all(isinstance(n, ast.Pass) or (isinstance(n, ast.Expr) and
                                           isinstance(n.value, ast.Constant)) for n in node.body)


def _prompt_context(code_prompt: str, entry_point: str | None) -> list[ast.stmt]:
    """The imports, assignments and implemented functions of `code_prompt`, less the entry
    point and the stubs the program is to write; [] when the prompt does not parse."""
    try:
        prompt = ast.parse(code_prompt)
    except SyntaxError:
        return []
    return [n for n in prompt.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign,
                                                     ast.AnnAssign))
            or (isinstance(n, _DEFINITIONS) and n.name != entry_point and not _stub(n))]


def with_helpers(test: str, code_prompt: str | None, entry_point: str | None) -> str:
    """The test code preceded by the imports, assignments and implemented functions of
    `code_prompt` (not the entry point) when the test uses one of them (HumanEval's `poly`,
    `encode_cyclic`, `encode_shift`): they then run on the trusted side, instead of standing
    for the program's functions of those names, which a program could redefine to pass."""
    if not code_prompt:
        return test
    try:
        used = set(free_names(ast.parse(test)))
    except SyntaxError:
        return test
    keep = _prompt_context(code_prompt, entry_point)
    if not any(isinstance(n, _DEFINITIONS) and n.name in used for n in keep):
        return test
    return ast.unparse(ast.Module(body=keep, type_ignores=[])) + "\n\n\n" + test


def outputs_match(got: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""

    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(expected)


def _stdio_cases(cases, input_output) -> tuple[list[str], list[str]] | None:
    """(inputs, expected outputs) from `cases` or `input_output`; None when there are none."""
    if cases:
        return [str(c["input"]) for c in cases], [str(c["output"]) for c in cases]
    if isinstance(input_output, str):
        input_output = json.loads(input_output) if input_output.strip() else None
    if not input_output or not input_output.get("inputs"):
        return None
    if input_output.get("fn_name"):
        raise ValueError("input_output with fn_name (call-based cases) is not supported; "
                         "give HumanEval-style `test` code instead")
    inputs, outputs = input_output["inputs"], input_output["outputs"]
    if len(inputs) != len(outputs):
        raise ValueError(f"input_output has {len(inputs)} inputs for {len(outputs)} outputs")
    return [_text(x) for x in inputs], [_text(x) for x in outputs]


def _text(value) -> str:
    return "\n".join(map(str, value)) + "\n" if isinstance(value, list) else str(value)


def score_check(result: CheckResult, mode: str) -> float | None:
    """The reward of one call-mode run; None when the test itself cannot be run this way (it
    passes the program something that is not plain data: no verdict on the program)."""
    if result.unsupported:
        warnings.warn(f"code_tests: a row's test cannot run in the sandbox, scored None: "
                      f"{result.unsupported}", RuntimeWarning, stacklevel=2)
        return None
    if mode == "all":
        return float(result.completed and result.failed == 0 and result.passed >= 1)
    total = result.passed + result.failed + (0 if result.completed else 1)
    return result.passed / total if total else 0.0


def score_cases(runs: list[CaseResult], expected: list[str], mode: str) -> float:
    """The reward of the stdin/stdout runs: share (or all) of cases with exit status 0 and
    the expected output."""
    ok = [r.status == 0 and not r.truncated and outputs_match(r.stdout, e)
          for r, e in zip(runs, expected)]
    if mode == "all":
        return float(all(ok) and len(ok) == len(expected))
    return sum(ok) / len(expected)


def _at(value, i, default):
    """A per-row value (a column) or one for all rows; `default` where it is missing."""
    value = value[i] if isinstance(value, list) else value
    return default if value is None else value


def _column(value, n: int) -> list:
    return value if value is not None else [None] * n


def _task(program: str, row: dict, mode: str, limits: Limits):
    """A zero-argument callable that scores `program` on the row's tests; None without tests."""
    if row["test"]:
        code = with_prompt(program, row["code_prompt"], row["entry_point"])
        test = with_helpers(row["test"], row["code_prompt"], row["entry_point"])
        return lambda: score_check(
            run_check(code, test, row["entry_point"], "check", limits), mode)
    if row["test_list"]:
        test = (row["test_setup_code"] or "") + "\n" + "\n".join(row["test_list"])
        return lambda: score_check(run_check(program, test, None, None, limits), mode)
    found = _stdio_cases(row["cases"], row["input_output"])
    if found is None:
        return None
    inputs, expected = found
    caps = [max(limits.output_bytes, 2 * len(e.encode()) + 4096) for e in expected]
    return lambda: score_cases(
        run_cases(program, inputs, limits, caps, stop_on_failure=mode == "all"), expected, mode)


def code_tests(completions: list[str], test=None, entry_point=None, test_list=None,
               test_setup_code=None, cases=None, input_output=None, code_prompt=None,
               mode="fraction", timeout_s=10.0, memory_mb=512, **_: object) -> list[float | None]:
    """Run each completion's program against its row's tests in the sandbox, all in parallel
    (one worker per core). See the module docstring for the columns and the modes; `mode`,
    `timeout_s` and `memory_mb` may be single values or one per row."""
    n = len(completions)
    columns = {"test": test, "entry_point": entry_point, "test_list": test_list,
               "test_setup_code": test_setup_code, "cases": cases,
               "input_output": input_output, "code_prompt": code_prompt}
    columns = {k: _column(v, n) for k, v in columns.items()}
    tasks = []
    for i, completion in enumerate(completions):
        row_mode = _at(mode, i, "fraction")
        if row_mode not in MODES:
            raise ValueError(f"unknown mode {row_mode!r}; use one of {', '.join(MODES)}")
        limits = Limits(timeout_s=float(_at(timeout_s, i, 10.0)),
                        memory_mb=int(_at(memory_mb, i, 512)))
        row = {k: v[i] for k, v in columns.items()}
        tasks.append(_task(extract_program(completion), row, row_mode, limits))
    runnable = [t for t in tasks if t is not None]
    if not runnable:
        return [None] * n
    with ThreadPoolExecutor(max_workers=min(len(runnable), os.cpu_count() or 1)) as pool:
        futures = [pool.submit(t) if t is not None else None for t in tasks]
        return [f.result() if f is not None else None for f in futures]
