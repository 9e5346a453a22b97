"""Seeded synthetic task generators for tiny-model RL experiments.

Every generator takes ``n`` and ``seed``, draws all randomness from
``numpy.random.default_rng(seed)`` and is therefore fully deterministic.  Rows
are plain dicts with a ``task`` name, a short ``prompt`` and task columns that
the reward functions need.  The ``*_completion`` functions render the target
completion used for SFT warm-up; answers are always wrapped as
``<answer>...</answer>`` so that one parser serves every task.

Formats (``{...}`` are placeholders)::

    sudoku     prompt "Solve: 1030 0201 0300 2004"   (rows of the puzzle, 0 = blank)
               completion "<answer>1432321423414123</answer>"  (16 solution digits)
    countdown  prompt "Use 3 5 7 to get 22"
               completion "<answer>3*5+7</answer>"
    arithmetic prompt "Compute 12*34"
               completion "<answer>408</answer>"
    sort       prompt "Sort 3142"
               completion "<answer>1234</answer>"
    code       prompt "f(x) = x times 3 then plus 2"   (jdiff.data.synthetic_code)
               completion "```python\nf=lambda x:(x*3)+2\n```"  (rewarded by running tests)
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from jdiff.data.synthetic_code import code_completion, code_functions

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

Row = Dict[str, Any]


def wrap_answer(text: str) -> str:
  """Wrap ``text`` in the answer tags every task uses."""
  return f"{ANSWER_OPEN}{text}{ANSWER_CLOSE}"


def _int_range(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
  """Normalise ``k`` or ``(lo, hi)`` (inclusive) to a validated ``(lo, hi)``."""
  if isinstance(value, (int, np.integer)):
    lo = hi = int(value)
  else:
    lo, hi = (int(v) for v in value)
  if lo > hi:
    raise ValueError(f"{name}: lower bound {lo} exceeds upper bound {hi}")
  return lo, hi


# --------------------------------------------------------------------------
# Safe arithmetic evaluation (exact, via fractions)
# --------------------------------------------------------------------------

_BINOPS: Dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate_expression(expr: str) -> Fraction:
  """Exactly evaluate an integer expression with ``+ - * /`` and parentheses.

  Only integer literals, the four binary operators and unary minus are
  accepted; anything else raises ``ValueError``.  Division by zero raises
  ``ZeroDivisionError``.
  """

  def ev(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
      return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      return -ev(node.operand)
    raise ValueError(f"unsupported syntax in expression {expr!r}")

  return ev(ast.parse(expr, mode="eval"))


# --------------------------------------------------------------------------
# Sudoku 4x4
# --------------------------------------------------------------------------

# Two base grids; relabelling + row/col permutations within bands/stacks +
# band/stack swaps + transposition of these reach all 288 valid 4x4 grids.
_SUDOKU_BASES = (
    (1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1),
    (1, 2, 3, 4, 3, 4, 1, 2, 2, 3, 4, 1, 4, 1, 2, 3),
)
# Cell index groups that must each contain 1..4 exactly once.
_SUDOKU_UNITS = tuple(
    [tuple(range(r * 4, r * 4 + 4)) for r in range(4)]
    + [tuple(range(c, 16, 4)) for c in range(4)]
    + [
        tuple((br + r) * 4 + bc + c for r in range(2) for c in range(2))
        for br in (0, 2)
        for bc in (0, 2)
    ]
)
_CELL_PEERS = tuple(
    tuple(sorted({j for unit in _SUDOKU_UNITS if i in unit for j in unit if j != i}))
    for i in range(16)
)


def is_valid_sudoku_solution(grid: Union[str, Sequence[int]]) -> bool:
  """True iff ``grid`` (16 digits) is a complete valid 4x4 sudoku."""
  cells = [int(c) for c in grid]
  if len(cells) != 16:
    return False
  return all(sorted(cells[i] for i in unit) == [1, 2, 3, 4] for unit in _SUDOKU_UNITS)


def count_sudoku_solutions(puzzle: Union[str, Sequence[int]], limit: int = 2) -> int:
  """Count solutions of a 4x4 puzzle (0 = blank), stopping at ``limit``."""
  cells = [int(c) for c in puzzle]
  if len(cells) != 16:
    raise ValueError("a 4x4 sudoku has 16 cells")
  for i, v in enumerate(cells):  # reject inconsistent givens up front
    if v and any(cells[j] == v for j in _CELL_PEERS[i]):
      return 0

  def search() -> int:
    best, best_cands = -1, None
    for i in range(16):
      if cells[i] == 0:
        used = {cells[j] for j in _CELL_PEERS[i]}
        cands = [d for d in (1, 2, 3, 4) if d not in used]
        if best_cands is None or len(cands) < len(best_cands):
          best, best_cands = i, cands
    if best_cands is None:
      return 1
    total = 0
    for d in best_cands:
      cells[best] = d
      total += search()
      cells[best] = 0
      if total >= limit:
        break
    return total

  return search()


def _random_sudoku_grid(rng: np.random.Generator) -> List[int]:
  """A uniformly transformed valid grid drawn from the base grids."""
  base = _SUDOKU_BASES[int(rng.integers(len(_SUDOKU_BASES)))]
  relabel = rng.permutation(4) + 1

  def order() -> List[int]:
    groups = rng.permutation(2)
    return [int(g) * 2 + int(k) for g in groups for k in rng.permutation(2)]

  rows, cols = order(), order()
  grid = [int(relabel[base[rows[r] * 4 + cols[c]] - 1]) for r in range(4) for c in range(4)]
  if rng.integers(2):
    grid = [grid[c * 4 + r] for r in range(4) for c in range(4)]
  return grid


def _make_unique_puzzle(
    solution: List[int], blanks: int, rng: np.random.Generator, tries: int = 20
) -> Optional[List[int]]:
  """Blank ``blanks`` cells keeping a unique solution (greedy, with retries)."""
  for _ in range(tries):
    puzzle = list(solution)
    removed = 0
    for cell in rng.permutation(16):
      if removed == blanks:
        break
      keep = puzzle[cell]
      puzzle[cell] = 0
      if count_sudoku_solutions(puzzle, limit=2) == 1:
        removed += 1
      else:
        puzzle[cell] = keep
    if removed == blanks:
      return puzzle
  return None


def sudoku_prompt(puzzle: str) -> str:
  """``"Solve: 1030 0201 0300 2004"`` from a 16-char puzzle string."""
  return "Solve: " + " ".join(puzzle[i : i + 4] for i in range(0, 16, 4))


def sudoku4x4(n: int, seed: int, num_blanks: Union[int, Tuple[int, int]] = (4, 10)) -> List[Row]:
  """Generate ``n`` 4x4 sudoku puzzles (2x2 boxes), each with a unique solution.

  Columns: ``task``, ``prompt``, ``puzzle`` and ``solution`` (16-char digit
  strings, ``'0'`` marks a blank in ``puzzle``).  ``num_blanks`` is a fixed
  count or an inclusive ``(lo, hi)`` range; at most 12 blanks are possible.
  """
  lo, hi = _int_range(num_blanks, "num_blanks")
  if lo < 0 or hi > 12:
    raise ValueError("num_blanks must lie in [0, 12] for a unique 4x4 puzzle")
  rng = np.random.default_rng(seed)
  rows: List[Row] = []
  while len(rows) < n:
    solution = _random_sudoku_grid(rng)
    puzzle = _make_unique_puzzle(solution, int(rng.integers(lo, hi + 1)), rng)
    if puzzle is None:
      continue
    p = "".join(map(str, puzzle))
    rows.append(
        {
            "task": "sudoku",
            "prompt": sudoku_prompt(p),
            "puzzle": p,
            "solution": "".join(map(str, solution)),
        }
    )
  return rows


def sudoku_completion(row: Row) -> str:
  """SFT target, e.g. ``"<answer>1432321423414123</answer>"``."""
  return wrap_answer(row["solution"])


# --------------------------------------------------------------------------
# Countdown
# --------------------------------------------------------------------------

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_LEAF_PREC = 3


def _combine(
    left: Tuple[int, str, int], right: Tuple[int, str, int], op: str
) -> Tuple[int, str, int]:
  """Join two (value, text, precedence) nodes, adding only needed parentheses."""
  (a, ta, pa), (b, tb, pb) = left, right
  prec = _PREC[op]
  if pa < prec:
    ta = f"({ta})"
  if pb < prec or (pb == prec and op in "-/"):
    tb = f"({tb})"
  value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
  return value, f"{ta}{op}{tb}", prec


def _random_countdown_expression(numbers: List[int], rng: np.random.Generator) -> Tuple[int, str]:
  """Combine all ``numbers`` by a random expression tree; returns (value, text).

  Subtraction is used only when the result stays positive and division only
  when it is exact (and not by 1), so every intermediate is a positive int.
  """
  pool = [(v, str(v), _LEAF_PREC) for v in numbers]
  while len(pool) > 1:
    i, j = (int(k) for k in rng.choice(len(pool), size=2, replace=False))
    left, right = pool[i], pool[j]
    a, b = left[0], right[0]
    ops = ["+", "*"]
    if a - b > 0:
      ops.append("-")
    if b > 1 and a % b == 0:
      ops.append("/")
    node = _combine(left, right, ops[int(rng.integers(len(ops)))])
    pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [node]
  return pool[0][0], pool[0][1]


def countdown_prompt(numbers: Sequence[int], target: int) -> str:
  """``"Use 3 5 7 to get 22"``."""
  return f"Use {' '.join(map(str, numbers))} to get {target}"


def countdown(
    n: int,
    seed: int,
    num_numbers: Union[int, Tuple[int, int]] = 3,
    max_number: int = 20,
    min_number: int = 1,
    max_target: int = 100,
) -> List[Row]:
  """Generate ``n`` Countdown problems with a target reachable by construction.

  Each number in ``numbers`` must be used exactly once with ``+ - * /``.
  Columns: ``task``, ``prompt``, ``numbers`` (list[int]), ``target`` (int in
  ``[1, max_target]``) and ``solution`` (one valid expression string).
  """
  lo, hi = _int_range(num_numbers, "num_numbers")
  if lo < 2:
    raise ValueError("countdown needs at least 2 numbers")
  if not 1 <= min_number <= max_number:
    raise ValueError("need 1 <= min_number <= max_number")
  rng = np.random.default_rng(seed)
  rows: List[Row] = []
  while len(rows) < n:
    k = int(rng.integers(lo, hi + 1))
    numbers = [int(x) for x in rng.integers(min_number, max_number + 1, size=k)]
    target, solution = _random_countdown_expression(numbers, rng)
    if not 1 <= target <= max_target:
      continue
    rows.append(
        {
            "task": "countdown",
            "prompt": countdown_prompt(numbers, target),
            "numbers": numbers,
            "target": int(target),
            "solution": solution,
        }
    )
  return rows


def countdown_completion(row: Row) -> str:
  """SFT target, e.g. ``"<answer>3*5+7</answer>"``."""
  return wrap_answer(row["solution"])


# --------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------


def _random_operand(rng: np.random.Generator, lo_digits: int, hi_digits: int) -> int:
  d = int(rng.integers(lo_digits, hi_digits + 1))
  low = 0 if d == 1 else 10 ** (d - 1)
  return int(rng.integers(low, 10**d))


def arithmetic(
    n: int,
    seed: int,
    digits: Union[int, Tuple[int, int]] = (1, 3),
    ops: str = "+-*",
    num_operands: Union[int, Tuple[int, int]] = 2,
) -> List[Row]:
  """Generate ``n`` integer arithmetic questions such as ``"Compute 12*34"``.

  Operands have a digit count drawn from ``digits`` (inclusive range), the
  operators are drawn from ``ops`` (any of ``+-*/``; ``/`` only where the
  whole expression is an integer) and normal precedence applies.  Columns:
  ``task``, ``prompt``, ``expression`` and ``answer`` (the integer result as
  a string, possibly negative).
  """
  lo_d, hi_d = _int_range(digits, "digits")
  lo_k, hi_k = _int_range(num_operands, "num_operands")
  if lo_d < 1 or lo_k < 2:
    raise ValueError("need digits >= 1 and num_operands >= 2")
  if not ops or any(o not in "+-*/" for o in ops):
    raise ValueError(f"ops must be a non-empty subset of '+-*/', got {ops!r}")
  rng = np.random.default_rng(seed)
  rows: List[Row] = []
  while len(rows) < n:
    k = int(rng.integers(lo_k, hi_k + 1))
    parts = [str(_random_operand(rng, lo_d, hi_d))]
    for _ in range(k - 1):
      parts += [ops[int(rng.integers(len(ops)))], str(_random_operand(rng, lo_d, hi_d))]
    expr = "".join(parts)
    try:
      value = evaluate_expression(expr)
    except ZeroDivisionError:
      continue
    if value.denominator != 1:
      continue
    rows.append(
        {
            "task": "arithmetic",
            "prompt": f"Compute {expr}",
            "expression": expr,
            "answer": str(value.numerator),
        }
    )
  return rows


def arithmetic_completion(row: Row) -> str:
  """SFT target, e.g. ``"<answer>408</answer>"``."""
  return wrap_answer(row["answer"])


# --------------------------------------------------------------------------
# Digit sorting
# --------------------------------------------------------------------------


def digit_sort(
    n: int,
    seed: int,
    length: Union[int, Tuple[int, int]] = 4,
    max_digit: int = 9,
) -> List[Row]:
  """Generate ``n`` digit-sorting problems such as ``"Sort 3142"``.

  Each problem lists ``length`` digits (a fixed count or an inclusive
  ``(lo, hi)`` range) drawn uniformly, with repetition, from ``0..max_digit``;
  the answer is the same digits in ascending order.  Held-out problems are
  unseen digit strings, yet the rule is easy for a tiny transformer to learn,
  which makes this the embedded RL default.  Columns: ``task``, ``prompt``,
  ``digits`` (the unsorted string) and ``answer`` (the sorted string).
  """
  lo, hi = _int_range(length, "length")
  if lo < 1:
    raise ValueError("length must be >= 1")
  if not 0 <= max_digit <= 9:
    raise ValueError("max_digit must lie in [0, 9]")
  rng = np.random.default_rng(seed)
  rows: List[Row] = []
  while len(rows) < n:
    k = int(rng.integers(lo, hi + 1))
    digits = "".join(str(int(d)) for d in rng.integers(0, max_digit + 1, size=k))
    rows.append(
        {
            "task": "sort",
            "prompt": f"Sort {digits}",
            "digits": digits,
            "answer": "".join(sorted(digits)),
        }
    )
  return rows


def digit_sort_completion(row: Row) -> str:
  """SFT target, e.g. ``"<answer>1234</answer>"``."""
  return wrap_answer(row["answer"])


# --------------------------------------------------------------------------
# Registry and splitting
# --------------------------------------------------------------------------

GENERATORS: Dict[str, Callable[..., List[Row]]] = {
    "sudoku": sudoku4x4,
    "countdown": countdown,
    "arithmetic": arithmetic,
    "sort": digit_sort,
    "code": code_functions,
}
COMPLETIONS: Dict[str, Callable[[Row], str]] = {
    "sudoku": sudoku_completion,
    "countdown": countdown_completion,
    "arithmetic": arithmetic_completion,
    "sort": digit_sort_completion,
    "code": code_completion,
}


def completion_for(row: Row) -> str:
  """Render the SFT completion of any generated row (dispatch on ``task``)."""
  return COMPLETIONS[row["task"]](row)


def split_train_eval(
    rows: Sequence[Row],
    eval_fraction: Optional[float] = None,
    n_eval: Optional[int] = None,
    *,
    seed: int = 0,
    dedupe_key: Optional[str] = "prompt",
) -> Tuple[List[Row], List[Row]]:
  """Shuffle ``rows`` with ``seed`` and split off an eval set.

  Give exactly one of ``eval_fraction`` (rounded, at least 1 when > 0) or
  ``n_eval``.  When ``dedupe_key`` is set, rows with a repeated value of
  that column are dropped first (first occurrence kept), so no eval prompt
  also appears in the train split.
  """
  if (eval_fraction is None) == (n_eval is None):
    raise ValueError("give exactly one of eval_fraction or n_eval")
  items = list(rows)
  if dedupe_key is not None:
    seen: Set[Any] = set()
    unique = []
    for row in items:
      key = repr(row[dedupe_key])
      if key not in seen:
        seen.add(key)
        unique.append(row)
    items = unique
  if n_eval is None:
    if not 0.0 <= eval_fraction < 1.0:  # type: ignore[operator]
      raise ValueError("eval_fraction must lie in [0, 1)")
    n_eval = max(1, round(eval_fraction * len(items))) if eval_fraction > 0 else 0  # type: ignore[operator]
  if not 0 <= n_eval <= len(items):
    raise ValueError(f"n_eval={n_eval} is out of range for {len(items)} rows")
  order = np.random.default_rng(seed).permutation(len(items))
  shuffled = [items[int(i)] for i in order]
  return shuffled[n_eval:], shuffled[:n_eval]
