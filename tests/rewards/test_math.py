"""Tests for jdiff.rewards.math (TraceRL math reward) and the timeout helper."""

import threading
import time

import pytest

from jdiff.rewards import _timeout
from jdiff.rewards.math import (
    last_boxed,
    math_equal,
    math_reward,
    math_verify_available,
    normalize_math_answer,
)

needs_math_verify = pytest.mark.skipif(
    not math_verify_available(), reason="math_verify not installed"
)


# ----------------------------------------------------------------- last_boxed
@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # last one wins
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{x^{2^{3}}+\\sqrt{y}}", "x^{2^{3}}+\\sqrt{y}"),  # deeper nesting
        ("\\fbox{42}", "42"),
        ("\\boxed {7}", "7"),  # space before the brace
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are content
        ("\\boxed{}", ""),
    ],
)
def test_last_boxed(text, expected):
  assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box here",
        "",
        None,
        "\\boxed{\\frac{1}{2}",  # unbalanced
        "\\boxed{1} and \\boxed{2",  # last one unbalanced: no fallback to the first
        "\\boxed 5",  # no brace
    ],
)
def test_last_boxed_none(text):
  assert last_boxed(text) is None


# ------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{2}", "\\frac{1}{2}"),
        ("\\frac{1}2", "\\frac{1}{2}"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("3/4", "\\frac{3}{4}"),
        ("\\sqrt2", "\\sqrt{2}"),
        (".5", "0.5"),
        ("x = 5", "5"),
        ("5\\text{ cm}", "5"),
        ("\\text{Evelyn}", "Evelyn"),  # text-only answers keep their content
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("\\$10", "10"),
        ("50\\%", "50"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("5.", "5"),
        ("1\\!000", "1000"),
        (" 12 \n", "12"),
    ],
)
def test_normalize(raw, expected):
  assert normalize_math_answer(raw) == expected


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.50", "0.5"),
        ("\\dfrac12", "\\frac{1}{2}"),
        (".5", "1/2"),
        ("x = 3", "3"),
        ("10\\text{ cm}", "10"),
        ("1,000", "1000"),
        ("-\\frac{3}{4}", "-0.75"),
    ],
)
def test_math_equal_string_and_numeric(pred, gold):
  # The fast path alone must decide these (no math_verify).
  assert math_equal(pred, gold, use_math_verify=False)


@pytest.mark.parametrize(
    "pred, gold",
    [("3", "4"), ("0.51", "0.5"), ("", "0"), (None, "1"), ("\\text{Bob}", "\\text{Evelyn}")],
)
def test_math_not_equal(pred, gold):
  assert not math_equal(pred, gold, use_math_verify=False)


@needs_math_verify
def test_math_verify_symbolic_equivalence():
  assert math_equal("2x+1", "1+2x")
  assert math_equal("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2")
  assert not math_equal("2x+1", "2x-1")


@needs_math_verify
def test_math_verify_hang_is_cut_by_timeout():
  # sympy evaluates 10^(10^8) in C code: a SIGALRM cannot interrupt it, the
  # worker process is killed instead.  Must return False within ~timeout.
  math_equal("1", "2")  # warm the worker up (imports are outside the timeout)
  start = time.monotonic()
  assert math_equal("10^{10^{8}}", "1", timeout=0.5) is False
  assert time.monotonic() - start < 3.0
  # the worker is restarted transparently afterwards
  assert math_equal("2x+1", "1+2x")


# --------------------------------------------------------------- timeouts
def test_call_with_timeout_process_mode_kills_sleeper():
  start = time.monotonic()
  with pytest.raises(TimeoutError):
    _timeout.call_with_timeout(time.sleep, (30,), timeout=0.3)
  assert time.monotonic() - start < 3.0
  assert _timeout.call_with_timeout(max, (1, 5), timeout=5.0) == 5


def test_call_with_timeout_signal_mode_on_main_thread():
  start = time.monotonic()
  with pytest.raises(TimeoutError):
    _timeout.call_with_timeout(time.sleep, (30,), timeout=0.2, mode="signal")
  assert time.monotonic() - start < 2.0


def test_call_with_timeout_off_main_thread_falls_back_to_process():
  outcome = {}

  def target():
    try:
      _timeout.call_with_timeout(time.sleep, (30,), timeout=0.3, mode="signal")
    except TimeoutError:
      outcome["timed_out"] = True

  thread = threading.Thread(target=target)
  thread.start()
  thread.join(10)
  assert outcome.get("timed_out")


def test_worker_error_propagates():
  with pytest.raises(_timeout.WorkerError, match="ZeroDivisionError"):
    _timeout.call_with_timeout(divmod, (1, 0), timeout=5.0)


# ----------------------------------------------------------------- reward
def test_math_reward_basic():
  completions = [
      "The answer is \\boxed{\\frac{1}{2}}.",
      "I think \\boxed{0.5}",
      "\\boxed{3} wait no \\boxed{4}",
      "no box",
  ]
  answers = ["0.5", "\\frac12", "3", "1"]
  assert math_reward(completions, answers, timeout=0) == [1.0, 1.0, 0.0, 0.0]


def test_math_reward_gold_given_as_solution():
  solution = "Adding gives $2+2=\\boxed{4}$."
  assert math_reward(["\\boxed{4}"], [solution], timeout=0) == [1.0]


def test_math_reward_length_penalty():
  # TraceRL: response_length >= max_tokens - 5 -> counted wrong.
  completions = ["\\boxed{7}"] * 3
  rewards = math_reward(
      completions, ["7"] * 3, response_length=[10, 95, 94], max_tokens=100, timeout=0
  )
  assert rewards == [1.0, 0.0, 1.0]
  with pytest.raises(ValueError, match="response_length"):
    math_reward(completions, ["7"] * 3, max_tokens=100)
