"""Host-side reward functions for RL post-training, with a name registry.

Every reward has the signature ``fn(completions: list[str], **columns) ->
list[float]``; see :mod:`jdiff.rewards.registry`.  Built-in names:

============================  =================================================
``math``                      TraceRL: last ``\\boxed{}`` equals ``answer`` (1/0)
``gsm8k``                     d1: sum of the five GSM8K rewards below (max 4.0)
``gsm8k_xmlcount``            d1: XML tag counting (max 0.5)
``gsm8k_soft_format``         d1: loose tag regex (0.5)
``gsm8k_strict_format``       d1: newline-exact tag regex (0.5)
``gsm8k_int``                 d1: extracted answer is all digits (0.5)
``gsm8k_correctness``         d1: extracted answer equals gold (2.0)
``countdown``                 d1: 1.0 correct / 0.1 well-formed / 0.0 missing
``sudoku``                    d1: fraction of empty 4x4 cells filled correctly
``code``                      TraceRL-style: fraction of tests passed, sandboxed
``answer_exact``              synthetic tasks: last ``<answer>`` equals ``answer`` (1/0)
============================  =================================================
"""

from jdiff.rewards.answer import answer_exact_reward
from jdiff.rewards.code import code_reward, extract_code
from jdiff.rewards.countdown import countdown_reward, safe_eval_arithmetic
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
from jdiff.rewards.math import last_boxed, math_equal, math_reward, normalize_math_answer
from jdiff.rewards.registry import (
    MissingColumnError,
    UnknownRewardError,
    available_rewards,
    compute_rewards,
    get_reward,
    register_reward,
    unregister_reward,
)
from jdiff.rewards.sudoku import sudoku_reward

_BUILTIN = {
    "math": math_reward,
    "gsm8k": gsm8k_reward,
    "gsm8k_xmlcount": gsm8k_xmlcount_reward,
    "gsm8k_soft_format": gsm8k_soft_format_reward,
    "gsm8k_strict_format": gsm8k_strict_format_reward,
    "gsm8k_int": gsm8k_int_reward,
    "gsm8k_correctness": gsm8k_correctness_reward,
    "countdown": countdown_reward,
    "sudoku": sudoku_reward,
    "code": code_reward,
    "answer_exact": answer_exact_reward,
}
for _name, _fn in _BUILTIN.items():
  register_reward(_name, _fn)
del _name, _fn

__all__ = [
    "MissingColumnError",
    "UnknownRewardError",
    "answer_exact_reward",
    "available_rewards",
    "code_reward",
    "compute_rewards",
    "countdown_reward",
    "extract_code",
    "extract_gsm8k_gold",
    "extract_xml_answer",
    "get_reward",
    "gsm8k_correctness_reward",
    "gsm8k_int_reward",
    "gsm8k_reward",
    "gsm8k_soft_format_reward",
    "gsm8k_strict_format_reward",
    "gsm8k_xmlcount_reward",
    "last_boxed",
    "math_equal",
    "math_reward",
    "normalize_math_answer",
    "register_reward",
    "safe_eval_arithmetic",
    "sudoku_reward",
    "unregister_reward",
]
