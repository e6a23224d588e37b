"""zeroth.record.thoughts: reasoning apart from the answer, and reflection phrases."""

import pytest

from zeroth.record.thoughts import reflect_rate, reflection_count, split_reasoning


@pytest.mark.parametrize("text, want", [
    ("<think> 2+2 is 4 </think><answer> 4 </answer>", ("2+2 is 4", "4")),
    ("<answer>7</answer>", ("", "7")),
    ("just 7", ("", "just 7")),
    ("<think>still going", ("still going", "")),  # cut off by the length limit
    ("<think>a</think><answer>1</answer><answer>2</answer>", ("a", "2")),  # the last answer
    ("<think>a</think><think>b</think><answer>x", ("a\nb", "x")),
    ("2+3 is 5, wait, yes</think><answer>5</answer>", ("2+3 is 5, wait, yes", "5")),  # R1 prompt
    ("<think>sum it<answer>5</answer>", ("sum it", "5")),  # unclosed think, then the answer
])
def test_split_reasoning(text, want):
    assert split_reasoning(text) == want


def test_reflection_counts_whole_phrases_in_the_reasoning_only():
    text = "<think>Wait, 3*4=12. Let me check: yes. Hmm.</think><answer>wait</answer>"
    assert reflection_count(text) == 3  # "wait" in the answer does not count
    assert reflection_count("<think>the waiter awaits</think><answer>1</answer>") == 0
    assert reflection_count("no tags, but let me verify") == 1
    assert reflect_rate(["<think>wait</think><answer>1</answer>", "<answer>1</answer>"]) == 0.5
    assert reflect_rate([]) == 0.0
