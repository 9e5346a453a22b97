"""Tests for the d1 Countdown reward and its safe arithmetic evaluator."""

import pytest

from jdiff.rewards.countdown import (
    countdown_reward,
    countdown_score,
    extract_countdown_expression,
    safe_eval_arithmetic,
    uses_exact_numbers,
)

NUMS = [3, 5, 7]  # (3 + 5) * 7 = 56


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>(3 + 5) * 7</answer>", 1.0),
        ("<answer>\n 7*(5+3) \n</answer>", 1.0),  # DOTALL + strip
        ("<answer>1+1</answer> ... <answer>(3+5)*7</answer>", 1.0),  # last tag wins
        ("<answer>3 + 5 + 7</answer>", 0.1),  # right numbers, wrong value
        ("<answer>(3 + 5) * 8</answer>", 0.1),  # wrong numbers
        ("<answer>(3 + 5) * 7 * 7</answer>", 0.1),  # a number used twice
        ("<answer>56</answer>", 0.1),
        ("<answer></answer>", 0.1),  # present but empty: format score
        ("no answer at all", 0.0),
        ("I get \\boxed{(3+5)*7}", 1.0),  # jdiff fallback to the last box
        ("<answer>3 ** 5 + 7</answer>", 0.1),  # power is not an allowed operation
        ("<answer>3 / (5 - 5) + 7</answer>", 0.1),  # numbers wrong anyway
    ],
)
def test_countdown_scores(text, expected):
  assert countdown_score(text, NUMS, 56) == pytest.approx(expected)


def test_division_by_zero_is_format_score():
  # numbers match (3, 5, 5), evaluation fails -> 0.1, no exception
  assert countdown_score("<answer>3 / (5 - 5)</answer>", [3, 5, 5], 1) == 0.1


def test_float_tolerance():
  assert countdown_score("<answer>(7 - 5) / 3</answer>", NUMS, 2 / 3) == 1.0


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo pwned')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "lambda: 1",
        "3 if 5 else 7",
        "[3, 5, 7]",
        "3 ** 5 ** 7",  # huge exponent
        "9" * 600,  # absurdly long
        "1 2",
        "(" * 300 + "1" + ")" * 300,
        "1e400",
    ],
)
def test_malicious_or_invalid_expressions_are_rejected(expr):
  assert safe_eval_arithmetic(expr) is None


def test_malicious_expression_rewarded_as_format_only():
  text = "<answer>__import__('os').system('touch /tmp/jdiff_pwned')</answer>"
  assert countdown_score(text, NUMS, 56) == 0.1  # no integers match -> 0.1, never evaluated
  text = "<answer>3 + 5 * 7 + __import__('os').getpid()</answer>"
  assert countdown_score(text, NUMS, 56) == 0.1


def test_safe_eval_values():
  assert safe_eval_arithmetic("(3 + 5) * 7") == 56.0
  assert safe_eval_arithmetic("-3 + +5") == 2.0
  assert safe_eval_arithmetic("7 / 2") == 3.5
  assert safe_eval_arithmetic("1.5 * 2") == 3.0


def test_uses_exact_numbers_is_a_multiset_check():
  assert uses_exact_numbers("7*(5+3)", [3, 5, 7])
  assert not uses_exact_numbers("7*(5+3)+3", [3, 5, 7])
  assert not uses_exact_numbers("7*5", [3, 5, 7])
  assert uses_exact_numbers("3.5 * 7", [3, 5, 7])  # "\d+" runs, as in d1


def test_extract_expression():
  assert extract_countdown_expression("<answer> 1+2 </answer>") == "1+2"
  assert extract_countdown_expression("\\boxed{1+2}") == "1+2"
  assert extract_countdown_expression("nothing") is None


def test_countdown_reward_batch_and_column_types():
  completions = ["<answer>(3+5)*7</answer>", "<answer>3+5+7</answer>", "none"]
  targets = [56, "56", 56.0]
  numbers = [[3, 5, 7], "3,5,7", (3, 5, 7)]
  assert countdown_reward(completions, targets, numbers) == [1.0, 0.1, 0.0]
