"""Math word problems from local files: GSM8K-style and MATH-style, scored by math_accuracy.

`gsm8k`: columns question / answer, where the answer is the worked solution ending in a line
`#### 72`; the row keeps the solution (calculator notes `<<48/2=24>>` removed) in `solution`
and the final number in `answer`. `math`: columns problem / solution, the answer being the last
`\\boxed{…}` of the solution (braces balanced), or an explicit `answer` column (MATH-500);
`level` ("Level 3" or 3) becomes the `difficulty` column, `type` / `subject` the `subject`
column. Both also read already-normalised prompt / answer rows, and the column names can be
set with task.options.prompt_field / answer_field / solution_field.

The prompt is the problem text as is, plus task.options.instruction when set (the chat template
and any system prompt are applied elsewhere). Rewards: math_accuracy (also under "correct"),
weights {math_accuracy: 1.0, format: 0.1}. Only an answer stated in `<answer>…</answer>` or
`\\boxed{}` scores, unless task.options.answer_fallback lets free text state it ("marker": a
final `#### n` or "the answer is n"; "last_number": the text's last number) — for a prompt
that asks for that form, never for one that asks for tags or boxes. Demonstrations for pre-training from scratch are the
reference solutions, `<think>solution</think><answer>answer</answer>` (or a `demo` column);
without either the task has none and needs model.path.
"""

from __future__ import annotations

import re
from functools import partial

from zeroth.errors import UserError
from zeroth.rewards.math import FALLBACKS
from zeroth.tasks.files import add_instruction, demonstrations, file_task, load_rows, pick
from zeroth.tasks.options import Option, choice, read_options, text
from zeroth.types import Row, Task, bind_reward

OPTIONS = {
    "prompt_field": Option(None, text(), "column holding the problem"),
    "answer_field": Option(None, text(), "column holding the answer"),
    "solution_field": Option(None, text(), "column holding the worked solution"),
    "instruction": Option(None, text(), "text added after every problem"),
    "answer_fallback": Option("none", choice(*FALLBACKS),
                              "free text read as the answer when no <answer> or \\boxed{} states "
                              "one: none, marker (#### n, 'the answer is n'), last_number"),
}
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(solution: str) -> str | None:
    """The contents of the last \\boxed{…} (or \\fbox{…}) with balanced braces; None if none."""
    for match in reversed(list(_BOXED.finditer(solution))):
        start = match.end()
        if start < len(solution) and solution[start] == "{":
            depth = 0
            for i in range(start, len(solution)):
                depth += {"{": 1, "}": -1}.get(solution[i], 0)
                if depth == 0:
                    return solution[start + 1:i].strip()
        elif match.group(0).endswith(" "):  # \boxed 5
            word = solution[start:].split("$")[0].split()
            if word:
                return word[0]
    return None


def _names(opts: dict, key: str, defaults: tuple[str, ...]) -> tuple[str, ...]:
    return (opts[key],) if opts.get(key) else defaults


def _base(record: dict, where: str, opts: dict, prompts: tuple[str, ...]) -> Row:
    prompt = str(pick(record, _names(opts, "prompt_field", prompts), where)).strip()
    row = {"prompt": prompt}
    if isinstance(record.get("demo"), str):
        row["demo"] = record["demo"]
    return row


def gsm8k_row(record: dict, where: str, *, opts: dict) -> Row:
    row = _base(record, where, opts, ("question", "prompt", "problem"))
    raw = str(pick(record, _names(opts, "answer_field", ("answer",)), where))
    if "####" in raw:
        solution, final = raw.rsplit("####", 1)
    else:
        names = _names(opts, "solution_field", ("solution",))
        solution, final = str(pick(record, names, where, required=False) or ""), raw
    final = final.strip()
    row["answer"] = final.replace(",", "") if _THOUSANDS.fullmatch(final) else final
    row["solution"] = _CALCULATOR.sub("", solution).strip()
    return row


def _level(value) -> int | str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", str(value or ""), re.IGNORECASE)
    return int(found.group(1)) if found else (str(value) if value else None)


def math_row(record: dict, where: str, *, opts: dict) -> Row:
    row = _base(record, where, opts, ("problem", "prompt", "question"))
    names = _names(opts, "solution_field", ("solution",))
    solution = str(pick(record, names, where, required=False) or "")
    answer = pick(record, _names(opts, "answer_field", ("answer",)), where, required=False)
    if answer is None:
        answer = last_boxed(solution)
        if answer is None:
            raise UserError(f"{where}: no answer column and no \\boxed{{...}} in the solution "
                            "— add an 'answer' or set task.options.answer_field")
    row.update(answer=str(answer).strip(), solution=solution.strip())
    level = _level(record.get("level"))
    if level is not None:
        row["difficulty"] = level
    subject = record.get("type") or record.get("subject")
    if subject:
        row["subject"] = str(subject)
    return row


def reference_solution(row: Row) -> str | None:
    """The reference solution as a demonstration (always right), when the row has one."""
    if not row.get("solution"):
        return None
    return f"<think>{row['solution']}</think><answer>{row['answer']}</answer>"


def allow_fallback(task: Task, fallback: str) -> None:
    """Let the task's math verifier read free text as the answer (task.options.answer_fallback;
    "none", the default, credits only an `<answer>` block or a `\\boxed{}`)."""
    if fallback != "none":
        bind_reward(task, "math_accuracy", answer_fallback=fallback)


def _load(name: str, normalise, task_cfg) -> Task:
    opts = read_options(name, task_cfg.options, OPTIONS)
    train, held = load_rows(task_cfg, partial(normalise, opts=opts))
    add_instruction(opts["instruction"], train, held)
    task = file_task(name, train, held, accuracy="math_accuracy", info={"path": task_cfg.path})
    allow_fallback(task, opts["answer_fallback"])
    task.demonstration = demonstrations(train, task.rewards["correct"], reference_solution)
    return task


def load_gsm8k(task_cfg, demo_cfg) -> Task:
    return _load("gsm8k", gsm8k_row, task_cfg)


def load_math(task_cfg, demo_cfg) -> Task:
    return _load("math", math_row, task_cfg)
