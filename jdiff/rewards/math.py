"""Math answer extraction, normalisation, equivalence and the ``math`` reward.

Rules come from TraceRL (``reward/rl_reward.py``, ``reward/math_utils.py``;
see ``shared/docs/methods.md`` §4):

* the prediction is the content of the *last* ``\\boxed{...}`` with balanced
  braces;
* equivalence first uses the Hendrycks-MATH string normalisation (the same
  family of rules as d1's ``is_equiv``) and a float/string comparison;
* when that fails, a symbolic check is tried under a 1 s timeout.  TraceRL's
  default "legacy" path uses sympy ``parse_latex``; we use the ``math_verify``
  package (TraceRL's alternative mode) when it is installed, run in a killable
  worker process so that pathological inputs cannot hang training;
* **length penalty**: if ``response_length >= max_tokens - 5`` the answer is
  counted as wrong (truncated generations get no credit).  Off by default.

Not implemented: TraceRL's extra rejection of >128-character outputs with
"high repetitiveness" (its threshold is not specified in the research notes).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from typing import List, Optional, Sequence
from fractions import Fraction

from jdiff.rewards._timeout import call_with_timeout

_BOX_COMMANDS = ("\\boxed", "\\fbox")


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------
def last_boxed(text: Optional[str]) -> Optional[str]:
  """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

  Braces are matched with a depth counter, so nested groups such as
  ``\\boxed{\\frac{1}{2}}`` work; escaped braces ``\\{``/``\\}`` are treated
  as literal characters.  Returns ``None`` when there is no box, or when the
  last one is not followed by ``{`` or its braces never close (we do not fall
  back to an earlier box: the model's final answer is the last one).
  """
  if not text:
    return None
  start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
  if start < 0:
    return None
  i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
  while i < len(text) and text[i].isspace():
    i += 1
  if i >= len(text) or text[i] != "{":
    return None
  depth, j = 0, i
  while j < len(text):
    ch = text[j]
    if ch == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
      j += 2  # escaped brace: part of the content, not structure
      continue
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1 : j]
    j += 1
  return None  # unbalanced


# --------------------------------------------------------------------------
# Hendrycks-style normalisation
# --------------------------------------------------------------------------
def _fix_fracs(s: str) -> str:
  r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}{2}``, ``\frac{1}2`` -> ``\frac{1}{2}``."""
  parts = s.split("\\frac")
  out = parts[0]
  for part in parts[1:]:
    out += "\\frac"
    if part.startswith("{"):
      # numerator already braced; brace a bare single-char denominator
      close = _matching_brace(part, 0)
      if close is not None and close + 1 < len(part) and part[close + 1] != "{":
        part = part[: close + 1] + "{" + part[close + 1] + "}" + part[close + 2 :]
      out += part
      continue
    if len(part) < 2:
      out += part  # malformed, leave it alone
      continue
    num, rest = part[0], part[1:]
    if rest.startswith("{"):
      out += "{" + num + "}" + rest
    else:
      out += "{" + num + "}{" + rest[0] + "}" + rest[1:]
  return out


def _matching_brace(s: str, open_idx: int) -> Optional[int]:
  depth = 0
  for k in range(open_idx, len(s)):
    if s[k] == "{":
      depth += 1
    elif s[k] == "}":
      depth -= 1
      if depth == 0:
        return k
  return None


def _fix_sqrt(s: str) -> str:
  r"""``\sqrt2`` -> ``\sqrt{2}`` (only the single following character, as Hendrycks)."""
  return re.sub(r"\\sqrt(?![{\[])\s*([^\s{\\])", r"\\sqrt{\1}", s)


def _fix_a_slash_b(s: str) -> str:
  """``3/4`` -> ``\\frac{3}{4}`` for plain integers."""
  m = re.fullmatch(r"(-?\d+)/(\d+)", s)
  return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


_TEXT_CMD = r"\\(?:text|textbf|mbox|mathrm)"


def _strip_units(s: str) -> str:
  r"""Drop a trailing ``\text{...}`` unit (``5\text{ cm}`` -> ``5``).

  Only when something precedes it: an answer that is *only* text
  (``\text{Evelyn}``) keeps its content, otherwise every all-text answer
  would normalise to "" and compare equal to every other one.
  """
  m = re.search(_TEXT_CMD + r"\{[^{}]*\}\s*$", s)
  if m and s[: m.start()].strip():
    s = s[: m.start()]
  return s


def normalize_math_answer(s: Optional[str]) -> str:
  """Hendrycks-MATH ``_strip_string``-style normalisation (own implementation).

  Steps (order matters): drop newlines, ``\\!`` and thin spaces; ``\\\\`` ->
  ``\\``; ``tfrac``/``dfrac`` -> ``frac``; drop ``\\left``/``\\right``;
  drop degrees ``^\\circ``; drop dollar signs; drop a trailing unit
  ``\\text{...}``; drop percent signs; unwrap remaining ``\\text{X}``;
  ``.5`` -> ``0.5``; ``x = 5`` -> ``5`` when the left side has <= 2 chars;
  ``\\sqrt2`` -> ``\\sqrt{2}``; remove spaces; ``\\frac12`` ->
  ``\\frac{1}{2}``; ``a/b`` -> ``\\frac{a}{b}``; trailing ``.`` removed.
  """
  if s is None:
    return ""
  s = str(s).strip()
  s = s.replace("\n", "").replace("\\!", "")
  for thin in ("\\,", "\\;", "\\:"):
    s = s.replace(thin, "")
  s = s.replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = s.replace("\\left", "").replace("\\right", "")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "")
  s = s.replace("\\$", "").replace("$", "")
  s = _strip_units(s)
  s = s.replace("\\%", "").replace("%", "")
  s = re.sub(_TEXT_CMD + r"\{([^{}]*)\}", r"\1", s)
  s = s.strip()
  # leading zero for decimals: " .5" -> " 0.5", "{.5" -> "{0.5", ".5" -> "0.5"
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if s.startswith("."):
    s = "0" + s
  # "x = 5" -> "5": a short left-hand side is a variable name, not content
  if s.count("=") == 1:
    lhs, rhs = s.split("=")
    if len(lhs.strip()) <= 2:
      s = rhs
  s = _fix_sqrt(s)
  s = s.replace(" ", "")
  s = _fix_fracs(s)
  s = _fix_a_slash_b(s)
  s = s.rstrip(".")
  return s


def _as_number(s: str) -> Optional[Fraction]:
  """Exact value of a normalised numeric answer, or None if not a plain number."""
  if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", s):
    s = s.replace(",", "")  # thousands separators; "1,2" (a pair) stays non-numeric
  try:
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", s):
      return Fraction(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if m:
      value = Fraction(m.group(2)) / Fraction(m.group(3))
      return -value if m.group(1) else value
  except (ValueError, ZeroDivisionError):
    return None
  return None


# --------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------
def math_verify_available() -> bool:
  """True if the optional ``math_verify`` package can be imported."""
  return importlib.util.find_spec("math_verify") is not None


def _import_math_verify() -> None:
  """Worker warm-up: pay the ~1 s sympy/math_verify import outside the timeout."""
  import math_verify  # noqa: F401

  logging.getLogger("math_verify").setLevel(logging.ERROR)


def _math_verify_equal(pred: str, gold: str) -> bool:
  """Symbolic check with ``math_verify`` (runs inside the timeout worker).

  Its own signal-based timeouts are disabled (``None``): the caller enforces
  a hard timeout by killing the worker process.
  """
  import math_verify

  logging.getLogger("math_verify").setLevel(logging.ERROR)
  gold_parsed = math_verify.parse(f"${gold}$", parsing_timeout=None)
  pred_parsed = math_verify.parse(f"${pred}$", parsing_timeout=None)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def math_equal(
    pred: Optional[str],
    gold: Optional[str],
    timeout: float = 1.0,
    *,
    use_math_verify: bool = True,
    timeout_mode: str = "process",
) -> bool:
  """Is ``pred`` mathematically the same answer as ``gold``?

  1. normalised strings equal, or both normalise to plain numbers with the
     same exact value (``0.50 == 0.5 == \\frac{1}{2}``);
  2. otherwise, if ``math_verify`` is importable and ``use_math_verify``,
     ``math_verify.verify`` under a hard ``timeout`` (seconds).  A timeout or
     any error counts as "not equal".
  Empty predictions are never equal to anything.
  """
  if pred is None or gold is None:
    return False
  p, g = normalize_math_answer(pred), normalize_math_answer(gold)
  if not p or not g:
    return False
  if p == g:
    return True
  pn, gn = _as_number(p), _as_number(g)
  if pn is not None and gn is not None and pn == gn:
    return True
  if not (use_math_verify and timeout and timeout > 0 and math_verify_available()):
    return False
  try:
    return bool(
        call_with_timeout(
            _math_verify_equal,
            (str(pred), str(gold)),
            timeout=timeout,
            mode=timeout_mode,
            warmup=_import_math_verify,
        )
    )
  except Exception:  # TimeoutError, worker errors, parse errors
    return False


# --------------------------------------------------------------------------
# Reward
# --------------------------------------------------------------------------
def _gold_answer(gold) -> str:
  """Gold column entry -> answer string; a full solution is reduced to its last box."""
  gold = str(gold)
  boxed = last_boxed(gold) if ("\\boxed" in gold or "\\fbox" in gold) else None
  return boxed if boxed is not None else gold


def math_reward(
    completions: List[str],
    answer: Sequence,
    *,
    response_length: Optional[Sequence[int]] = None,
    max_tokens: Optional[int] = None,
    timeout: float = 1.0,
) -> List[float]:
  """TraceRL math reward: 1.0 if the last ``\\boxed{}`` equals ``answer``.

  Args:
    completions: decoded completions.
    answer: gold answers (plain answers; a full solution containing
      ``\\boxed`` is reduced to its last box, as d1 does for MATH).
    response_length: per-completion response length in *tokens* (dataset /
      rollout column), needed only for the length penalty.
    max_tokens: the rollout's max generation length.  When set, TraceRL's
      length penalty applies: ``response_length >= max_tokens - 5`` forces
      the reward to 0 (the generation hit the length cap).  Default off;
      enable with ``functools.partial(math_reward, max_tokens=...)``.
    timeout: seconds for the symbolic fallback per comparison.
  """
  if max_tokens is not None and response_length is None:
    raise ValueError("math_reward: the length penalty (max_tokens) needs a response_length column")
  rewards = []
  for i, (text, gold) in enumerate(zip(completions, answer, strict=True)):
    if max_tokens is not None and response_length[i] >= max_tokens - 5:
      rewards.append(0.0)
      continue
    ok = math_equal(last_boxed(text), _gold_answer(gold), timeout=timeout)
    rewards.append(1.0 if ok else 0.0)
  return rewards
