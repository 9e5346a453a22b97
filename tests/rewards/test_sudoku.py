"""Tests for the d1 4x4 Sudoku reward (partial credit on empty cells)."""

import pytest

from jdiff.rewards.sudoku import extract_sudoku_digits, sudoku_reward, sudoku_score

SOLUTION = "1234" "3412" "2143" "4321"
PUZZLE = "1200" "0410" "2003" "0021"  # empty cells: 2, 3, 4, 7, 9, 10, 12, 13 (8 cells)


def tagged(grid: str) -> str:
  return f"<reasoning>\nfill it\n</reasoning>\n<answer>\n{grid}\n</answer>"


def score(text, **kw):
  (value,) = sudoku_reward([text], [PUZZLE], [SOLUTION], **kw)
  return value


def test_full_solution():
  assert score(tagged(SOLUTION)) == 1.0


def test_returning_the_puzzle_scores_zero():
  assert score(tagged(PUZZLE)) == 0.0


def test_partial_credit_counts_only_empty_cells():
  wrong = list(SOLUTION)
  for i in (2, 3, 4, 7):  # 4 of the 8 empty cells wrong
    wrong[i] = "9"
  assert score(tagged("".join(wrong))) == pytest.approx(0.5)
  given_wrong = list(SOLUTION)
  given_wrong[0] = "9"  # a pre-filled cell: not scored
  assert score(tagged("".join(given_wrong))) == 1.0
  one_wrong = list(SOLUTION)
  one_wrong[13] = "1"
  assert score(tagged("".join(one_wrong))) == pytest.approx(7 / 8)


def test_padding_and_truncation():
  # first 8 digits: empty cells 2, 3, 4, 7 right; the rest padded with '0'
  assert score(tagged(SOLUTION[:8])) == pytest.approx(0.5)
  assert score(tagged(SOLUTION + "4444")) == 1.0


def test_grid_with_separators_and_last_tag():
  grid = "1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1"
  assert score(tagged(grid)) == 1.0
  assert score(f"<answer>{PUZZLE}</answer> then <answer>{SOLUTION}</answer>") == 1.0


def test_fallbacks_and_strict_mode():
  boxed = f"The grid is \\boxed{{{SOLUTION}}}"
  plain = "Grid: 1234 3412 2143 4321"
  assert score(boxed) == 1.0
  assert score(plain) == 1.0
  assert score(boxed, strict_tags=True) == 0.0  # d1: no answer tag -> 0
  assert extract_sudoku_digits(plain, strict_tags=True) is None


def test_empty_answer_and_full_puzzle():
  assert score("<answer></answer>") == 0.0
  assert sudoku_score(SOLUTION, SOLUTION, SOLUTION) == 0.0  # no empty cells


def test_integer_columns_are_zero_padded():
  puzzle = "0204" "3002" "0140" "4300"  # leading zero lost if read as int
  (value,) = sudoku_reward([tagged(SOLUTION)], [int(puzzle)], [int(SOLUTION)])
  assert value == 1.0
