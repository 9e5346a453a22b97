"""Exact-value tests for d1's five GSM8K rewards."""

import pytest

from jdiff.rewards.gsm8k import (
    extract_gsm8k_gold,
    extract_xml_answer,
    gsm8k_correctness_reward,
    gsm8k_int_reward,
    gsm8k_reward,
    gsm8k_soft_format_reward,
    gsm8k_strict_format_reward,
    gsm8k_xmlcount_reward,
)

PERFECT = "<reasoning>\nThink.\n</reasoning>\n<answer>\n72\n</answer>\n"
TRAILING = "<reasoning>\nThink.\n</reasoning>\n<answer>\n72\n</answer>\nabc"
NO_FINAL_NEWLINE = "<reasoning>\nr\n</reasoning>\n<answer>\n72\n</answer>"
MULTILINE = "<reasoning>\nline1\nline2\n</reasoning>\n<answer>\n72\n</answer>\n"
PLAIN = "The answer is 72"
PREAMBLE = "Sure! <reasoning>x</reasoning><answer>72</answer>"
COMPACT = "<reasoning>x</reasoning> <answer> 72 </answer>"


def one(fn, text, *args, **kwargs):
  (value,) = fn([text], *args, **kwargs)
  return value


def test_perfect_completion():
  assert one(gsm8k_xmlcount_reward, PERFECT) == pytest.approx(0.5)
  # Without DOTALL the soft pattern cannot cross the newlines that the
  # prescribed format puts inside the tags, so soft and strict are mutually
  # exclusive: the attainable total is 3.5 (d1 paper commit behaviour).
  assert one(gsm8k_soft_format_reward, PERFECT) == 0.0
  assert one(gsm8k_strict_format_reward, PERFECT) == 0.5
  assert one(gsm8k_int_reward, PERFECT) == 0.5
  assert one(gsm8k_correctness_reward, PERFECT, ["72"]) == 2.0
  assert one(gsm8k_reward, PERFECT, ["72"]) == pytest.approx(3.5)
  # the later DOTALL variant reaches the nominal maximum of 4.0
  assert one(gsm8k_soft_format_reward, PERFECT, dotall=True) == 0.5
  assert one(gsm8k_reward, PERFECT, ["72"], dotall=True) == pytest.approx(4.0)


def test_xmlcount_trailing_text_penalised_on_both_answer_pieces():
  # "abc" after "\n</answer>\n": -0.003 (third piece) and -(len("\nabc") - 1) * 0.001
  # = -0.003 (fourth piece), as in d1's count_xml.
  assert one(gsm8k_xmlcount_reward, TRAILING) == pytest.approx(0.5 - 0.006)
  assert one(gsm8k_strict_format_reward, TRAILING) == 0.0  # "\n$" no longer at the end
  assert one(gsm8k_soft_format_reward, TRAILING) == 0.0  # newlines inside the tags
  assert one(gsm8k_soft_format_reward, TRAILING, dotall=True) == 0.5


def test_xmlcount_without_final_newline_quirk():
  # No "\n</answer>\n" separator: d1's third piece subtracts 0.001 * len(whole text),
  # and the fourth piece *adds* 0.001 (len("") - 1 = -1).
  assert len(NO_FINAL_NEWLINE) == 48
  assert one(gsm8k_xmlcount_reward, NO_FINAL_NEWLINE) == pytest.approx(0.5 - 0.048 + 0.001)
  assert one(gsm8k_strict_format_reward, NO_FINAL_NEWLINE) == 0.0
  assert one(gsm8k_strict_format_reward, NO_FINAL_NEWLINE, dotall=True) == 0.0


def test_xmlcount_pieces_and_duplicates():
  assert one(gsm8k_xmlcount_reward, "<reasoning>\n") == pytest.approx(0.125)
  assert one(gsm8k_xmlcount_reward, "<reasoning>\n<reasoning>\n") == 0.0  # must be exactly once
  assert one(gsm8k_xmlcount_reward, "x\n</reasoning>\ny") == pytest.approx(0.125)
  assert one(gsm8k_xmlcount_reward, PLAIN) == 0.0


def test_multiline_reasoning_fails_both_formats_without_dotall():
  assert one(gsm8k_soft_format_reward, MULTILINE) == 0.0
  assert one(gsm8k_strict_format_reward, MULTILINE) == 0.0
  assert one(gsm8k_xmlcount_reward, MULTILINE) == pytest.approx(0.5)
  # later d1 commit's DOTALL variant
  assert one(gsm8k_soft_format_reward, MULTILINE, dotall=True) == 0.5
  assert one(gsm8k_strict_format_reward, MULTILINE, dotall=True) == 0.5


def test_soft_format_is_anchored_at_start_and_allows_whitespace():
  assert one(gsm8k_soft_format_reward, PREAMBLE) == 0.0
  assert one(gsm8k_soft_format_reward, COMPACT) == 0.5
  assert one(gsm8k_strict_format_reward, COMPACT) == 0.0


def test_int_reward():
  assert one(gsm8k_int_reward, COMPACT) == 0.5  # " 72 " stripped
  assert one(gsm8k_int_reward, "<answer>\n72.5\n</answer>") == 0.0
  assert one(gsm8k_int_reward, "<answer>-5</answer>") == 0.0
  assert one(gsm8k_int_reward, PLAIN) == 0.0  # no tags: whole text is "extracted"


def test_correctness_uses_last_answer_and_exact_string():
  text = "<answer>1</answer> hmm <answer> 72 </answer>"
  assert extract_xml_answer(text) == "72"
  assert gsm8k_correctness_reward([text, text, PLAIN], ["72", "72.0", "72"]) == [2.0, 0.0, 0.0]
  # raw GSM8K solutions in the answer column are reduced with extract_gsm8k_gold
  assert one(gsm8k_correctness_reward, "<answer>1000</answer>", ["so... #### 1,000"]) == 2.0


def test_summed_reward_partial():
  # TRAILING: xml 0.494 + soft 0 + strict 0 + int 0.5 + correct 2.0
  assert one(gsm8k_reward, TRAILING, ["72"]) == pytest.approx(2.994)
  # COMPACT: xml 0 + soft 0.5 + strict 0 + int 0.5 + correct 2.0
  assert one(gsm8k_reward, COMPACT, ["72"]) == pytest.approx(3.0)
  assert one(gsm8k_reward, PLAIN, ["72"]) == 0.0


def test_extract_gsm8k_gold():
  assert extract_gsm8k_gold("She sold 48/2 = 24 clips.\n#### 72") == "72"
  assert extract_gsm8k_gold("... #### 1,234 ") == "1234"
  assert extract_gsm8k_gold("no marker") is None
