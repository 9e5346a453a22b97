"""d1's Countdown reward (diffu-GRPO ``reward_func.py``, TinyZero-style scoring).

Source: ``shared/docs/methods.md`` §2.3.  Given ``numbers`` and a
``target``:

1. Take the last ``<answer>(.*?)</answer>`` (DOTALL), stripped.  If there is
   no answer tag we fall back to the last ``\\boxed{}`` (a jdiff addition:
   d1's *eval* prompt asks for ``\\boxed{expr}``; d1's training reward would
   give 0 here).  No expression at all -> **0.0**.
2. The multiset of integers in the expression (``\\d+`` runs) must equal
   ``numbers``, else **0.1** (the "format score").
3. Only digits, ``+ - * / ( ) .`` and whitespace are allowed, and the
   expression must evaluate; otherwise **0.1**.
4. ``|value - target| < 1e-5`` -> **1.0**, else **0.1**.

Evaluation never calls ``eval``: the expression is parsed with ``ast`` and
only number constants, unary +/-, and binary + - * / are interpreted.  ``**``
is rejected (d1's ``eval`` would have accepted it, but it is not one of the
four allowed operations and enables huge exponents).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import List, Optional, Sequence

from jdiff.rewards.math import last_boxed

FORMAT_SCORE = 0.1
CORRECT_SCORE = 1.0

_ALLOWED_CHARS = re.compile(r"^[\d+\-*/().\s]+$")
_MAX_EXPR_CHARS = 512  # a 3-4 number expression is tiny; refuse pathological input early
_MAX_ABS_VALUE = 1e100  # intermediate results beyond this are treated as invalid

_BIN_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY_OPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def extract_countdown_expression(text: str) -> Optional[str]:
  """The last ``<answer>...</answer>`` content, else the last ``\\boxed{}``; stripped."""
  matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
  if matches:
    return matches[-1].strip()
  boxed = last_boxed(text)
  return boxed.strip() if boxed is not None else None


def uses_exact_numbers(expression: str, numbers: Sequence[int]) -> bool:
  """True if the integers appearing in ``expression`` are exactly ``numbers`` (as a multiset)."""
  found = sorted(int(tok) for tok in re.findall(r"\d+", expression))
  return found == sorted(int(n) for n in numbers)


def safe_eval_arithmetic(expression: str) -> Optional[float]:
  """Evaluate ``+ - * /`` arithmetic on numeric literals; ``None`` if invalid.

  Invalid means: disallowed characters, syntax errors, any node other than
  number constants / unary +- / binary + - * /, division by zero, or a
  magnitude above 1e100.  Never executes code.
  """
  if not expression or len(expression) > _MAX_EXPR_CHARS or not _ALLOWED_CHARS.match(expression):
    return None
  try:
    tree = ast.parse(expression.strip(), mode="eval")
    value = _eval_node(tree.body)
  except (
      SyntaxError,
      ValueError,
      TypeError,
      ZeroDivisionError,
      OverflowError,
      RecursionError,
      MemoryError,
  ):
    return None
  return float(value)


def _check(value):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError("not a number")
  if not math.isfinite(value) or abs(value) > _MAX_ABS_VALUE:
    raise OverflowError("value out of range")
  return value


def _eval_node(node):
  if isinstance(node, ast.Constant):
    return _check(node.value)
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
    return _check(_UNARY_OPS[type(node.op)](_eval_node(node.operand)))
  if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
    left, right = _eval_node(node.left), _eval_node(node.right)
    return _check(_BIN_OPS[type(node.op)](left, right))
  raise ValueError(f"disallowed syntax: {type(node).__name__}")


def _as_numbers(entry) -> List[int]:
  """``numbers`` column entry: a list of ints, or a string like "3,5,7" / "3 5 7"."""
  if isinstance(entry, str):
    return [int(tok) for tok in re.findall(r"-?\d+", entry)]
  return [int(n) for n in entry]


def countdown_score(text: str, numbers: Sequence[int], target: float) -> float:
  """Score one completion (see module docstring)."""
  expression = extract_countdown_expression(text)
  if expression is None:
    return 0.0
  if not uses_exact_numbers(expression, numbers):
    return FORMAT_SCORE
  value = safe_eval_arithmetic(expression)
  if value is None:
    return FORMAT_SCORE
  return CORRECT_SCORE if abs(value - float(target)) < 1e-5 else FORMAT_SCORE


def countdown_reward(completions: List[str], target: Sequence, numbers: Sequence) -> List[float]:
  """d1 Countdown reward: 1.0 correct, 0.1 well-formed but wrong, 0.0 no expression."""
  return [
      countdown_score(c, _as_numbers(nums), float(t))
      for c, t, nums in zip(completions, target, numbers, strict=True)
  ]
