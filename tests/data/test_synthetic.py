"""Tests for the seeded synthetic task generators."""

import ast
import operator
import re
from collections import Counter
from fractions import Fraction
from typing import List

import pytest

from jdiff.data import synthetic as syn

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def safe_eval(expr: str) -> Fraction:
  """Independent exact evaluator: integer literals, + - * / and parentheses only."""

  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](ev(node.left), ev(node.right))
    raise AssertionError(f"unexpected syntax in {expr!r}")

  return ev(ast.parse(expr, mode="eval"))


def brute_force_solutions(puzzle: str) -> List[str]:
  """All completions of a 4x4 puzzle by exhaustive row-permutation search."""
  from itertools import permutations, product

  rows = []
  for r in range(4):
    given = puzzle[r * 4 : r * 4 + 4]
    rows.append(
        ["".join(p) for p in permutations("1234") if all(g in ("0", d) for g, d in zip(given, p))]
    )
  return ["".join(grid) for grid in product(*rows) if syn.is_valid_sudoku_solution("".join(grid))]


GENERATOR_CALLS = [
    lambda seed: syn.sudoku4x4(20, seed),
    lambda seed: syn.countdown(20, seed),
    lambda seed: syn.arithmetic(20, seed),
    lambda seed: syn.digit_sort(20, seed),
]


@pytest.mark.parametrize("make", GENERATOR_CALLS)
def test_determinism_and_seed_dependence(make):
  assert make(0) == make(0)
  assert make(0) != make(1)


@pytest.mark.parametrize("make", GENERATOR_CALLS)
def test_row_count_and_prompt(make):
  rows = make(3)
  assert len(rows) == 20
  for row in rows:
    assert isinstance(row["prompt"], str) and row["prompt"]
    completion = syn.completion_for(row)
    assert re.fullmatch(r"<answer>.+</answer>", completion)


def test_sudoku_valid_unique_and_consistent():
  rows = syn.sudoku4x4(200, seed=7, num_blanks=(4, 10))
  for row in rows:
    puzzle, solution = row["puzzle"], row["solution"]
    assert len(puzzle) == len(solution) == 16
    assert set(puzzle) <= set("01234") and set(solution) <= set("1234")
    assert syn.is_valid_sudoku_solution(solution)
    assert all(p in ("0", s) for p, s in zip(puzzle, solution))
    assert 4 <= puzzle.count("0") <= 10
    assert syn.count_sudoku_solutions(puzzle) == 1
    assert row["prompt"] == "Solve: " + " ".join(puzzle[i : i + 4] for i in range(0, 16, 4))
    assert syn.sudoku_completion(row) == f"<answer>{solution}</answer>"
  # An independent brute-force check on a subset.
  for row in rows[:40]:
    assert brute_force_solutions(row["puzzle"]) == [row["solution"]]


def test_sudoku_fixed_blanks_and_solver():
  rows = syn.sudoku4x4(10, seed=3, num_blanks=12)
  assert all(r["puzzle"].count("0") == 12 for r in rows)
  assert syn.count_sudoku_solutions("0" * 16) == 2  # capped at the limit
  assert syn.count_sudoku_solutions("1100" + "0" * 12) == 0
  with pytest.raises(ValueError):
    syn.sudoku4x4(1, seed=0, num_blanks=13)


def test_sudoku_grids_vary():
  solutions = {r["solution"] for r in syn.sudoku4x4(400, seed=11, num_blanks=4)}
  assert len(solutions) > 150  # 288 grids exist; generation should cover many


@pytest.mark.parametrize("num_numbers", [3, (3, 4)])
def test_countdown_solutions_reach_target(num_numbers):
  rows = syn.countdown(300, seed=5, num_numbers=num_numbers, max_number=20)
  lo, hi = (num_numbers, num_numbers) if isinstance(num_numbers, int) else num_numbers
  for row in rows:
    numbers, target, solution = row["numbers"], row["target"], row["solution"]
    assert lo <= len(numbers) <= hi
    assert all(isinstance(x, int) and 1 <= x <= 20 for x in numbers)
    assert isinstance(target, int) and 1 <= target <= 100
    assert safe_eval(solution) == target
    used = [int(t) for t in re.findall(r"\d+", solution)]
    assert Counter(used) == Counter(numbers)  # each number exactly once
    assert set(solution) <= set("0123456789+-*/()")
    assert row["prompt"] == f"Use {' '.join(map(str, numbers))} to get {target}"
    assert syn.countdown_completion(row) == f"<answer>{solution}</answer>"
  assert len({len(r["numbers"]) for r in rows}) == hi - lo + 1


@pytest.mark.parametrize("ops", ["+-*", "+-*/", "*"])
def test_arithmetic_answers(ops):
  rows = syn.arithmetic(200, seed=2, digits=(1, 3), ops=ops, num_operands=(2, 3))
  for row in rows:
    expr = row["expression"]
    assert row["prompt"] == f"Compute {expr}"
    assert set(re.sub(r"\d", "", expr)) <= set(ops)
    for operand in re.findall(r"\d+", expr):
      assert 1 <= len(operand) <= 3
    value = safe_eval(expr)
    assert value.denominator == 1 and row["answer"] == str(value.numerator)
    assert syn.arithmetic_completion(row) == f"<answer>{row['answer']}</answer>"


@pytest.mark.parametrize("length", [4, (3, 5), 1])
def test_digit_sort_answers(length):
  rows = syn.digit_sort(300, seed=2, length=length)
  lo, hi = (length, length) if isinstance(length, int) else length
  seen = Counter()
  for row in rows:
    digits, answer = row["digits"], row["answer"]
    assert row["task"] == "sort" and row["prompt"] == f"Sort {digits}"
    assert lo <= len(digits) <= hi and digits.isdigit()
    assert Counter(answer) == Counter(digits)  # a permutation of the input ...
    assert all(a <= b for a, b in zip(answer, answer[1:]))  # ... in ascending order
    assert syn.digit_sort_completion(row) == f"<answer>{answer}</answer>"
    seen[len(digits)] += 1
  assert set(seen) == set(range(lo, hi + 1))  # every allowed length occurs


def test_digit_sort_max_digit_and_validation():
  rows = syn.digit_sort(100, seed=0, length=5, max_digit=3)
  assert set("".join(r["digits"] for r in rows)) == set("0123")
  assert len({r["digits"] for r in syn.digit_sort(200, seed=0)}) > 150  # mostly distinct
  with pytest.raises(ValueError):
    syn.digit_sort(5, seed=0, length=0)
  with pytest.raises(ValueError):
    syn.digit_sort(5, seed=0, max_digit=10)
  with pytest.raises(ValueError):
    syn.digit_sort(5, seed=0, length=(5, 3))


def test_completions_are_short():
  assert max(len(syn.completion_for(r)) for r in syn.arithmetic(200, 0)) <= 24
  assert max(len(syn.completion_for(r)) for r in syn.countdown(200, 0)) <= 30
  assert max(len(syn.completion_for(r)) for r in syn.digit_sort(200, 0)) <= 24


def test_evaluate_expression_rejects_non_arithmetic():
  assert syn.evaluate_expression("(4+17)*2") == 42
  with pytest.raises(ValueError):
    syn.evaluate_expression("__import__('os')")
  with pytest.raises(ValueError):
    syn.evaluate_expression("2**3")


def test_split_train_eval():
  rows = syn.arithmetic(100, seed=0, digits=(2, 3))
  train, ev = syn.split_train_eval(rows, n_eval=10, seed=1)
  assert len(ev) == 10 and len(train) + len(ev) == len({r["prompt"] for r in rows})
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in ev}
  assert syn.split_train_eval(rows, n_eval=10, seed=1) == (train, ev)
  assert syn.split_train_eval(rows, n_eval=10, seed=2) != (train, ev)
  train2, ev2 = syn.split_train_eval(rows, eval_fraction=0.2, seed=1, dedupe_key=None)
  assert len(ev2) == 20 and len(train2) == 80
  dup = [{"prompt": "a"}, {"prompt": "a"}, {"prompt": "b"}]
  t, e = syn.split_train_eval(dup, n_eval=1, seed=0)
  assert len(t) + len(e) == 2
  with pytest.raises(ValueError):
    syn.split_train_eval(rows)
  with pytest.raises(ValueError):
    syn.split_train_eval(rows, eval_fraction=0.1, n_eval=3)
  with pytest.raises(ValueError):
    syn.split_train_eval(rows, n_eval=1000)


def test_generator_registry():
  for name, gen in syn.GENERATORS.items():
    row = gen(1, seed=0)[0]
    assert row["task"] == name
    assert syn.COMPLETIONS[name](row) == syn.completion_for(row)
