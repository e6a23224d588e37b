"""A task of your own, without touching zeroth's code: the parity of a bit string.

    zeroth run task.name=examples/parity.py:load
    zeroth run task.name=examples/parity.py:load task.options.max_bits=16

A procedural family is four small functions (zeroth.tasks.procedural.Family):

- `draw(rng, knobs)`: one problem as a row (prompt, answer, and any column the others read);
- `check(text, row)`: is the extracted answer right (here: the same integer);
- `reasoned(row)`: the worked solution a demonstration writes inside <think> (always right);
- `slip(row)`: the plausible shortcut the other demonstrations answer with (often wrong).

zeroth turns it into a task with a stable held-out split (a hash of the prompt), the R1 format
and answer rewards, and demonstrations: demos.reason_fraction of them reason and are right, the
rest take the shortcut. Here the shortcut answers with the last bit, right half the time, so the
demonstrations are right about 30% + 70% / 2 = 65% of the time: the ceiling imitation reaches.
RL on the verifier alone can then go past it by choosing the reasoning every time.
"""

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, integer_check, load_family


def draw(rng, knobs):
    bits = [rng.randint(0, 1) for _ in range(rng.randint(2, knobs["max_bits"]))]
    return {"prompt": f"What is the parity of {''.join(map(str, bits))}?",
            "answer": str(sum(bits) % 2), "bits": bits, "difficulty": len(bits)}


def reasoned(row):
    """The running count of ones, bit by bit, then whether it is odd."""
    count, steps = 0, []
    for bit in row["bits"]:
        count += bit
        steps.append(str(count))
    return f"ones so far: {' '.join(steps)}; {count} is {'odd' if count % 2 else 'even'}"


FAMILY = Family(
    name="parity",
    knobs={"max_bits": Option(12, integer(2, 64), "strings of 2..max_bits bits")},
    draw=draw,
    check=integer_check,
    reasoned=reasoned,
    slip=lambda row: str(row["bits"][-1]),  # the shortcut: the last bit
)


def load(task_cfg, demos_cfg):
    """task.name=examples/parity.py:load"""
    return load_family(FAMILY, task_cfg, demos_cfg)
