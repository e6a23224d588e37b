import math

from zeroth.rewards import combine, exact_answer, extract_answer, tag_count, think_format


def test_format_accepts_direct_and_reasoned_layouts_only():
    good = ["<answer>12</answer>", "<think>1+1</think><answer>2</answer>",
            "<think>a</think>\n<answer>2</answer>\n"]
    bad = ["12", "<answer>1</answer><answer>2</answer>", "<think>x<answer>2</answer>",
           "hi <answer>2</answer>", "<think>a</think>", "<answer>2</answer> trailing",
           "<think><think>a</think></think><answer>2</answer>"]
    assert think_format(good) == [1.0] * len(good)
    assert think_format(bad) == [0.0] * len(bad)


def test_exact_answer_normalises_integers_but_not_loosely():
    comps = ["<answer>0936</answer>", "<answer>1,458</answer>", "<answer>1,45,8</answer>",
             "<answer>936.0</answer>", "936", "<answer> 936 </answer>"]
    answers = ["936", "1458", "1458", "936", "936", "936"]
    assert exact_answer(comps, answer=answers) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") is None  # hedging
    assert extract_answer("<answer>2</answer> then <answer> 2 </answer>") == "2"
    assert extract_answer("<think><answer>2</answer></think>") is None  # reasoning only
    assert extract_answer("<think>x <answer>2</answer>") is None  # still reasoning
    assert extract_answer("<think>x</think><answer>2</answer>") == "2"
    assert extract_answer("x</think><answer>2</answer>") == "2"  # the prompt opened <think>


def test_tag_count_partial_credit():
    assert tag_count(["<think></think><answer>1</answer>", "<answer>1", "x", "<think><think>"]) \
        == [1.0, 0.25, 0.0, 0.0]


def test_combine_weights_and_records_components():
    rows = [{"answer": "3"}, {"answer": "4"}]
    totals, parts = combine(["<answer>3</answer>", "<answer>5</answer>"], rows,
                            {"correct": exact_answer, "format": think_format},
                            {"correct": 1.0, "format": 0.5})
    assert totals == [1.5, 0.5]
    assert parts == [{"correct": 1.0, "format": 1.0}, {"correct": 0.0, "format": 1.0}]


def test_combine_keeps_verifier_failure_apart_from_wrong_answer():
    def broken(completions, **_):
        raise RuntimeError("sandbox down")

    def partial(completions, answer, **_):
        return [None if a == "skip" else 1.0 for a in answer]

    rows = [{"answer": "skip"}, {"answer": "1"}]
    totals, parts = combine(["a", "b"], rows, {"broken": broken, "partial": partial},
                            {"broken": 1.0, "partial": 2.0})
    assert parts[0]["broken"] is None and "sandbox down" in parts[0]["broken_error"]
    assert parts[0]["partial"] is None and parts[1]["partial"] == 1.0
    assert totals == [0.0, 2.0]
    assert not any(isinstance(v, float) and math.isnan(v) for p in parts for v in p.values())


def test_empty_answer_is_not_well_formed():
    empty = ["<answer></answer>", "<answer> </answer>", "<think>x</think><answer></answer>"]
    assert think_format(empty) == [0.0, 0.0, 0.0]


def test_reward_returning_a_non_number_is_a_recorded_failure():
    def sloppy(completions, **_):
        return ["yes" for _ in completions]

    totals, parts = combine(["a"], [{"answer": "1"}], {"sloppy": sloppy}, {"sloppy": 1.0})
    assert parts[0]["sloppy"] is None and "sloppy_error" in parts[0] and totals == [0.0]


def test_rows_with_different_columns_reach_rewards_as_none():
    seen = {}

    def peek(completions, level, **_):
        seen["level"] = level
        return [0.0] * len(completions)

    combine(["a", "b"], [{"answer": "1"}, {"answer": "2", "level": 3}], {"peek": peek},
            {"peek": 1.0})
    assert seen["level"] == [None, 3]


def test_overlong_soft_penalty_matches_dapo():
    from zeroth.rewards import overlong

    # limit 20, cache 4: no penalty up to 16 tokens, then -1/4 per token, -1 at 20 and beyond
    ids = [[0] * n for n in (10, 16, 17, 18, 20, 25)]
    assert overlong([""] * 6, completion_ids=ids, max_new_tokens=[20] * 6, overlong_cache=4) \
        == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong(["a"]) == [None]  # no token counts: not applicable


def test_combine_passes_token_ids_to_rewards():
    from zeroth.rewards import overlong

    totals, _ = combine(["a", "b"], [{"answer": "1"}, {"answer": "2"}], {"overlong": overlong},
                        {"overlong": 1.0}, completion_ids=[[1] * 3, [1] * 64],
                        max_new_tokens=[64, 64])
    assert totals == [0.0, -1.0]


def test_language_consistency_counts_letters_of_the_target_script():
    from zeroth.rewards import language_consistency

    comps = ["<think>add the digits</think><answer>3</answer>",
             "<think>abcd примерно</think><answer>3</answer>",  # 4 latin of 12 letters
             "<think>数字を足す</think><answer>3</answer>",
             "<think>1+2=3</think><answer>3</answer>"]
    assert language_consistency(comps) == [1.0, 4 / 12, 0.0, None]
    assert language_consistency(comps[2:3], language=["cjk"]) == [1.0]


def test_documented_user_reward_example_loads_by_path_and_prefers_short_correct_answers():
    from pathlib import Path

    from zeroth.rewards import REWARDS
    from zeroth.rewards.resolve import resolve_reward

    example = Path(__file__).resolve().parents[1] / "examples" / "simplicity.py"
    fn = resolve_reward(f"{example}:simplicity", REWARDS)
    comps = ["<answer>3</answer>", "<think>3 = 1 + 2, check</think><answer>3</answer>",
             "<answer>4</answer>"]
    short, long, wrong = fn(comps, answer=["3"] * 3, completion_ids=[[0] * 4, [0] * 30, [0] * 4],
                            max_new_tokens=[64] * 3)
    assert 1.0 > short > long > 0.0 and wrong == 0.0


def test_builtins_by_the_names_recipes_use():
    from zeroth.rewards import REWARDS

    assert {"math_accuracy", "code_tests", "format", "overlong", "language_consistency",
            "correct"} <= set(REWARDS)
    assert REWARDS["math_accuracy"](["<answer>\\frac{1}{2}</answer>"], answer=["0.5"]) == [1.0]
