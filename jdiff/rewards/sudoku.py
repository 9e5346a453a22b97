"""d1's 4x4 Sudoku reward (diffu-GRPO ``reward_func.py``).

Source: ``shared/docs/methods.md`` §2.3.  Columns ``puzzle`` and
``solution`` are 16-character row-major strings with ``'0'`` = empty cell.

* The answer grid is the digits inside the last ``<answer>...</answer>``
  (DOTALL).  jdiff fallbacks (d1 gives 0.0 when there is no answer tag):
  the last ``\\boxed{}``, then the digits of the whole completion.  Pass
  ``strict_tags=True`` for d1's exact behaviour.
* The digit string is padded with ``'0'`` or truncated to 16 characters.
* Reward = fraction of originally-empty cells (puzzle ``'0'``) whose
  predicted digit equals the solution (0..1).  An empty digit string, or a
  puzzle without empty cells, scores 0.0 (as in d1).
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

from jdiff.rewards.math import last_boxed

GRID_CELLS = 16


def extract_sudoku_digits(text: str, *, strict_tags: bool = False) -> Optional[str]:
  """Digits of the proposed grid (unpadded), or None if nothing to extract."""
  matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
  if matches:
    source = matches[-1]
  elif strict_tags:
    return None
  else:
    boxed = last_boxed(text)
    source = boxed if boxed is not None else text
  return "".join(ch for ch in source.strip() if ch.isdigit())


def sudoku_score(digits: Optional[str], puzzle: str, solution: str) -> float:
  """Fraction of the puzzle's empty cells that ``digits`` fills correctly."""
  if not digits:
    return 0.0
  grid = digits[:GRID_CELLS].ljust(GRID_CELLS, "0")
  empty = [i for i in range(min(GRID_CELLS, len(puzzle))) if puzzle[i] == "0"]
  if not empty:
    return 0.0
  return sum(grid[i] == solution[i] for i in empty) / len(empty)


def _grid_string(entry) -> str:
  """Column entry -> 16-char string; ints (CSV readers drop leading zeros) are re-padded."""
  text = str(entry).strip()
  return text.zfill(GRID_CELLS) if text.isdigit() else text


def sudoku_reward(
    completions: List[str],
    puzzle: Sequence[str],
    solution: Sequence[str],
    *,
    strict_tags: bool = False,
) -> List[float]:
  """d1 4x4 Sudoku reward: fraction of empty cells filled correctly."""
  return [
      sudoku_score(
          extract_sudoku_digits(c, strict_tags=strict_tags), _grid_string(p), _grid_string(s)
      )
      for c, p, s in zip(completions, puzzle, solution, strict=True)
  ]
