"""Exact-answer reward for short synthetic tasks: the text inside the last
``<answer>…</answer>`` equals the ``answer`` column (1.0) or not (0.0)."""

from __future__ import annotations

from typing import List, Sequence

from jdiff.rewards.gsm8k import extract_xml_answer


def answer_exact_reward(completions: List[str], answer: Sequence[str]) -> List[float]:
  # Unlike d1's extractor alone, an untagged completion earns nothing.
  return [
      1.0 if "<answer>" in c and extract_xml_answer(c) == str(a).strip() else 0.0
      for c, a in zip(completions, answer)
  ]
