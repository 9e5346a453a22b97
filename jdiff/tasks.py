"""Tasks: where prompts come from, how completions are rewarded, what counts as correct.

Synthetic tasks (arithmetic, countdown, sudoku, sort, code) are generated with a seed and need no
download; file tasks (gsm8k, math) read local files through :func:`jdiff.data.load_prompts`
with a field mapping. Rewards are names from :mod:`jdiff.rewards`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from jdiff.data import synthetic
from jdiff.registry import Registry

Row = Dict[str, object]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  reward: object  # a reward spec for jdiff.rewards.compute_rewards
  correct_at: float  # a completion is correct when its summed reward >= this
  generate: Optional[Callable[..., List[Row]]] = None  # synthetic: (n, seed, **kw) -> rows
  completion: Optional[Callable[[Row], str]] = None  # SFT target text, when known
  columns: Sequence[str] = ()  # row fields the reward reads

  def correct(self, rewards: np.ndarray) -> np.ndarray:
    return np.asarray(rewards).reshape(len(rewards), -1).sum(-1) >= self.correct_at - 1e-9


TASKS = Registry("task")
for _task in (
    Task(
        "arithmetic",
        "answer_exact",
        1.0,
        synthetic.arithmetic,
        synthetic.arithmetic_completion,
        ("answer",),
    ),
    Task(
        "countdown",
        "countdown",
        1.0,
        synthetic.countdown,
        synthetic.countdown_completion,
        ("numbers", "target"),
    ),
    Task(
        "sudoku",
        "sudoku",
        1.0,
        synthetic.sudoku4x4,
        synthetic.sudoku_completion,
        ("puzzle", "solution"),
    ),
    Task(
        "sort",
        "answer_exact",
        1.0,
        synthetic.digit_sort,
        synthetic.digit_sort_completion,
        ("answer",),
    ),
    # Fraction of the row's asserts passed in the sandbox; correct = all of them.
    Task("code", "code", 1.0, synthetic.code_functions, synthetic.code_completion, ("tests",)),
    # Accuracy on GSM8K is d1's 2.0 correctness term alone (train with reward="gsm8k").
    Task("gsm8k", "gsm8k_correctness", 2.0, columns=("answer",)),
    Task("math", "math", 1.0, columns=("answer",)),
):
  TASKS.register(_task.name, _task)
del _task


def get_task(name: str) -> Task:
  return TASKS.get(name)
