"""A synthetic code task short enough for a tiny character-level model.

Each prompt describes a one-line integer function in words, read left to right, e.g.
``"f(x) = x times 3 then plus 2"``; the target completion is a fenced Python block
``"```python\\nf=lambda x:(x*3)+2\\n```"`` and the row's ``tests`` are ``assert`` lines
checked by the sandboxed ``code`` reward (:mod:`jdiff.rewards.code`: the fraction passed).
All randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

Row = Dict[str, Any]
_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _expression(ops, consts) -> str:
  expr = "x"
  for i, (op, c) in enumerate(zip(ops, consts)):
    expr = f"{expr}{op}{c}" if i == 0 else f"({expr}){op}{c}"
  return expr


def _value(x: int, ops, consts) -> int:
  for op, c in zip(ops, consts):
    x = _APPLY[op](x, c)
  return x


def code_functions(
    n: int, seed: int, num_ops: int = 2, max_const: int = 9, num_tests: int = 3
) -> List[Row]:
  """``n`` rows: ``task``, ``prompt``, ``expression`` (the lambda body), ``tests``.

  ``num_ops`` operations (``+ - *``) with constants in ``1..max_const`` are applied to ``x``
  left to right; ``tests`` asserts ``f`` on ``num_tests`` distinct inputs in ``-9..9``.
  """
  if num_ops < 1:
    raise ValueError(f"code_functions: num_ops must be >= 1, got {num_ops}")
  if not 1 <= max_const <= 9:
    raise ValueError(f"code_functions: max_const must lie in [1, 9], got {max_const}")
  if not 1 <= num_tests <= 19:
    raise ValueError(f"code_functions: num_tests must lie in [1, 19], got {num_tests}")
  rng = np.random.default_rng(seed)
  rows: List[Row] = []
  for _ in range(n):
    ops = [str(o) for o in rng.choice(list(_WORDS), size=num_ops)]
    consts = [int(c) for c in rng.integers(1, max_const + 1, size=num_ops)]
    words = " then ".join(f"{_WORDS[o]} {c}" for o, c in zip(ops, consts))
    xs = [int(x) for x in rng.choice(np.arange(-9, 10), size=num_tests, replace=False)]
    tests = [f"assert f({x})=={_value(x, ops, consts)}" for x in xs]
    rows.append(
        {
            "task": "code",
            "prompt": f"f(x) = x {words}",
            "expression": _expression(ops, consts),
            "tests": tests,
        }
    )
  return rows


def code_completion(row: Row) -> str:
  """SFT target, e.g. ``"```python\\nf=lambda x:(x*3)+2\\n```"``."""
  return f"```python\nf=lambda x:{row['expression']}\n```"
