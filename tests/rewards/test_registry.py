"""Tests for the reward registry and compute_rewards."""

import functools

import numpy as np
import pytest

import jdiff.rewards as R
from jdiff.rewards import (
    MissingColumnError,
    UnknownRewardError,
    available_rewards,
    compute_rewards,
    get_reward,
    register_reward,
    unregister_reward,
)

BUILTINS = {
    "math",
    "gsm8k",
    "gsm8k_xmlcount",
    "gsm8k_soft_format",
    "gsm8k_strict_format",
    "gsm8k_int",
    "gsm8k_correctness",
    "countdown",
    "sudoku",
    "code",
}


def test_builtins_registered():
  assert BUILTINS <= set(available_rewards())
  assert available_rewards() == sorted(available_rewards())
  assert get_reward("gsm8k") is R.gsm8k_reward
  assert get_reward("countdown") is R.countdown_reward


def test_unknown_name_lists_available():
  with pytest.raises(KeyError) as info:
    get_reward("nope")
  assert isinstance(info.value, UnknownRewardError)
  message = str(info.value)
  assert "nope" in message and "gsm8k_int" in message and "countdown" in message


def test_register_decorator_and_overwrite():
  @register_reward("test_len")
  def length_reward(completions):
    return [float(len(c)) for c in completions]

  try:
    assert get_reward("test_len") is length_reward
    with pytest.raises(ValueError, match="already registered"):
      register_reward("test_len", lambda completions: [0.0] * len(completions))
    replacement = register_reward("test_len", lambda c: [1.0] * len(c), overwrite=True)
    assert get_reward("test_len") is replacement
  finally:
    unregister_reward("test_len")
  assert "test_len" not in available_rewards()


def test_compute_rewards_passes_only_accepted_columns():
  completions = [
      "<reasoning>\nok\n</reasoning>\n<answer>\n72\n</answer>\n",
      "<answer>(3+5)*7</answer>",
  ]
  columns = dict(
      answer=["72", "0"], target=[1, 56], numbers=[[1], [3, 5, 7]], unrelated=[None, None]
  )
  out = compute_rewards(["gsm8k_correctness", "gsm8k_int", "countdown"], completions, **columns)
  assert out.shape == (2, 3)
  assert out.dtype == np.float64
  # countdown on the GSM8K text: an expression ("72") with the wrong numbers -> 0.1
  np.testing.assert_allclose(out, [[2.0, 0.5, 0.1], [0.0, 0.0, 1.0]])


def test_compute_rewards_weights_and_single_name():
  completions = ["<answer>\n72\n</answer>"]
  out = compute_rewards({"gsm8k_correctness": 0.5, "gsm8k_int": 2.0}, completions, answer=["72"])
  np.testing.assert_allclose(out, [[1.0, 1.0]])
  single = compute_rewards("gsm8k_int", completions)
  assert single.shape == (1, 1)


def test_compute_rewards_accepts_callables_and_kwargs_functions():
  seen = {}

  def everything(completions, **columns):
    seen.update(columns)
    return [1.0] * len(completions)

  out = compute_rewards([everything, "gsm8k_int"], ["a", "b"], foo=[1, 2], bar=[3, 4])
  assert out.shape == (2, 2)
  assert set(seen) == {"foo", "bar"}


def test_missing_column_error_names_function_and_column():
  with pytest.raises(MissingColumnError) as info:
    compute_rewards("countdown", ["<answer>1</answer>"], target=[1])
  message = str(info.value)
  assert "countdown" in message and "numbers" in message
  assert isinstance(info.value, KeyError)


def test_optional_keyword_options_are_not_required():
  # math_reward's response_length / max_tokens / timeout are optional
  out = compute_rewards("math", ["\\boxed{4}"], answer=["4"])
  assert out.tolist() == [[1.0]]
  # ...and a partial with the TraceRL length penalty picks up the column
  penalised = functools.partial(R.math_reward, max_tokens=10, timeout=0)
  out = compute_rewards(
      [penalised], ["\\boxed{4}", "\\boxed{4}"], answer=["4", "4"], response_length=[3, 6]
  )
  assert out[:, 0].tolist() == [1.0, 0.0]


def test_wrong_length_output_is_an_error():
  with pytest.raises(ValueError, match="returned 1 values"):
    compute_rewards([lambda completions: [0.0]], ["a", "b"])


def test_answer_exact_requires_the_tag_and_the_exact_answer():
  from jdiff.rewards import compute_rewards

  out = compute_rewards(
      "answer_exact",
      ["<answer>19</answer>", "19", "<answer> 19 </answer>x", "<answer>18</answer>"],
      answer=["19", "19", "19", "19"],
  )
  assert out[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
