"""d1's five GSM8K rewards (diffu-GRPO ``reward_func.py``; summed max 4.0).

Source: ``shared/docs/methods.md`` §2.3.  d1 adopted these from
Will Brown's GRPO demo; the behaviour below reproduces the d1 commit used for
the paper (``03f4e69``), quirks included, because rewards are part of the
recipe being reproduced:

* ``gsm8k_xmlcount`` (max 0.5): +0.125 for each of ``"<reasoning>\\n"``,
  ``"\\n</reasoning>\\n"``, ``"\\n<answer>\\n"``, ``"\\n</answer>"`` occurring
  exactly once, minus 0.001 per trailing character.  The penalty is attached
  to *both* answer pieces: the ``"\\n<answer>\\n"`` piece subtracts
  0.001 x len(text after the last ``"\\n</answer>\\n"``) (if that separator is
  absent this is the *whole* text), and the ``"\\n</answer>"`` piece subtracts
  0.001 x (len(text after the last ``"\\n</answer>"``) - 1), i.e. one
  trailing newline is free.  So ``"...\\n</answer>\\nabc"`` loses 0.006.
* ``gsm8k_soft_format`` (0.5): ``re.match`` (anchored at the start only) of
  ``<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>`` *without* DOTALL, so
  multi-line reasoning fails.
* ``gsm8k_strict_format`` (0.5): ``re.match`` of
  ``^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$``,
  also without DOTALL.
* ``gsm8k_int`` (0.5): the extracted answer is all digits (``str.isdigit``).
* ``gsm8k_correctness`` (2.0): the stripped text between the last
  ``<answer>`` and the next ``</answer>`` equals the gold string exactly.

Consequence worth knowing: without DOTALL the soft pattern cannot cross the
newlines that the prescribed format puts *inside* the tags, so the soft and
strict rewards are mutually exclusive and the attainable total is 3.5, not
the nominal 4.0.  A later d1 commit (``4bab4b9``) switched both format
regexes to DOTALL; pass ``dotall=True`` (also accepted by the summed
``gsm8k_reward``) for that variant, where a perfect completion scores 4.0.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

_SOFT_PATTERN = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
_STRICT_PATTERN = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"


def extract_xml_answer(text: str) -> str:
  """Text between the last ``<answer>`` and the following ``</answer>``, stripped.

  Like d1: with no tags at all this is the whole (stripped) text.
  """
  after = text.split("<answer>")[-1]
  return after.split("</answer>")[0].strip()


def extract_gsm8k_gold(answer_text: str) -> Optional[str]:
  """GSM8K gold answer: the text after ``####``, stripped, commas removed.

  Comma removal is ours ("1,000" -> "1000", so it can match an all-digit
  prediction); d1 only strips.  Returns None when there is no ``####``.
  """
  if "####" not in answer_text:
    return None
  return answer_text.split("####")[1].strip().replace(",", "")


def _gold(entry) -> str:
  """Accept either an extracted gold answer or a raw GSM8K solution with ####."""
  entry = str(entry)
  extracted = extract_gsm8k_gold(entry) if "####" in entry else None
  return extracted if extracted is not None else entry


def xml_count_score(text: str) -> float:
  """XML-tag count score of one completion (see module docstring)."""
  score = 0.0
  if text.count("<reasoning>\n") == 1:
    score += 0.125
  if text.count("\n</reasoning>\n") == 1:
    score += 0.125
  if text.count("\n<answer>\n") == 1:
    score += 0.125
    score -= 0.001 * len(text.split("\n</answer>\n")[-1])
  if text.count("\n</answer>") == 1:
    score += 0.125
    score -= 0.001 * (len(text.split("\n</answer>")[-1]) - 1)
  return score


def gsm8k_xmlcount_reward(completions: List[str]) -> List[float]:
  """d1 ``xmlcount_reward_func``: max 0.5."""
  return [xml_count_score(c) for c in completions]


def gsm8k_soft_format_reward(completions: List[str], *, dotall: bool = False) -> List[float]:
  """d1 ``soft_format_reward_func``: 0.5 if the loose tag pattern matches at the start."""
  flags = re.DOTALL if dotall else 0
  return [0.5 if re.match(_SOFT_PATTERN, c, flags) else 0.0 for c in completions]


def gsm8k_strict_format_reward(completions: List[str], *, dotall: bool = False) -> List[float]:
  """d1 ``strict_format_reward_func``: 0.5 if the newline-exact pattern matches."""
  flags = re.DOTALL if dotall else 0
  return [0.5 if re.match(_STRICT_PATTERN, c, flags) else 0.0 for c in completions]


def gsm8k_int_reward(completions: List[str]) -> List[float]:
  """d1 ``int_reward_func``: 0.5 if the extracted answer is all digits."""
  return [0.5 if extract_xml_answer(c).isdigit() else 0.0 for c in completions]


def gsm8k_correctness_reward(completions: List[str], answer: Sequence[str]) -> List[float]:
  """d1 ``correctness_reward_func``: 2.0 on an exact string match with the gold.

  ``answer`` may hold extracted golds ("72") or raw GSM8K solutions ending
  in ``#### 72`` (then :func:`extract_gsm8k_gold` is applied).
  """
  return [
      2.0 if extract_xml_answer(c) == _gold(a) else 0.0
      for c, a in zip(completions, answer, strict=True)
  ]


def gsm8k_reward(
    completions: List[str], answer: Sequence[str], *, dotall: bool = False
) -> List[float]:
  """Sum of the five d1 GSM8K rewards (nominal max 4.0; 3.5 attainable unless ``dotall``)."""
  parts = (
      gsm8k_xmlcount_reward(completions),
      gsm8k_soft_format_reward(completions, dotall=dotall),
      gsm8k_strict_format_reward(completions, dotall=dotall),
      gsm8k_int_reward(completions),
      gsm8k_correctness_reward(completions, answer),
  )
  return [float(sum(vals)) for vals in zip(*parts, strict=True)]
