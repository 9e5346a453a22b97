"""The synthetic code task: generated rows, their SFT targets and the sandboxed reward."""

import numpy as np
import pytest

from jdiff.data import synthetic
from jdiff.data.char_tokenizer import build_char_tokenizer
from jdiff.rewards import compute_rewards
from jdiff.tasks import get_task


def _by_hand(expression, x):
  """The lambda body evaluated with Python's own parser (independent of the generator)."""
  return eval(expression, {"x": x})  # noqa: S307  (our own generated arithmetic)


def test_rows_are_deterministic_and_consistent():
  rows = synthetic.code_functions(50, seed=3)
  assert rows == synthetic.code_functions(50, seed=3)
  assert rows != synthetic.code_functions(50, seed=4)
  for row in rows:
    assert row["task"] == "code" and row["prompt"].startswith("f(x) = x ")
    assert len(row["tests"]) == 3
    for test in row["tests"]:
      call, want = test[len("assert f(") :].split(")==")
      assert _by_hand(row["expression"], int(call)) == int(want)
  with pytest.raises(ValueError, match="num_ops"):
    synthetic.code_functions(1, 0, num_ops=0)


def test_targets_fit_the_character_tokenizer():
  tok = build_char_tokenizer()
  unk = tok.convert_tokens_to_ids("<unk>")
  for row in synthetic.code_functions(100, seed=0):
    for text in (row["prompt"], synthetic.completion_for(row)):
      assert unk not in tok.encode(text), text
    assert len(tok.encode(synthetic.completion_for(row))) <= 35  # config: 36 tokens with EOS


def test_rewards_run_in_the_sandbox():
  task = get_task("code")
  rows = synthetic.code_functions(2, seed=1)
  right = synthetic.completion_for(rows[0])
  # Right for the first row; a constant function passes none of the second row's tests
  # unless it happens to match one of them; a crash and a missing block score 0.
  wrong_const = "```python\nf=lambda x:12345\n```"
  crash = "```python\nf=lambda x:1/0\n```"
  texts = [right, wrong_const, crash, "no code here"]
  tests = [rows[0]["tests"], rows[1]["tests"], rows[0]["tests"], rows[0]["tests"]]
  rewards = compute_rewards(task.reward, texts, tests=tests).sum(-1)
  np.testing.assert_array_equal(rewards, [1.0, 0.0, 0.0, 0.0])
  assert list(task.correct(rewards)) == [True, False, False, False]
  # Partly right: one of three tests passes.
  x0, y0 = rows[0]["tests"][0][len("assert f(") :].split(")==")
  partial = f"```python\nf=lambda x:{y0} if x=={x0} else 10**9\n```"
  got = compute_rewards(task.reward, [partial], tests=[rows[0]["tests"]]).sum(-1)
  np.testing.assert_allclose(got, [1 / 3])
