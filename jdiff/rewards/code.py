"""Code-execution reward ("code"), TraceRL-style function tasks.

Source: ``shared/docs/methods.md`` §4 (``reward/rl_execute.py``,
``rl_code_reward.py``): extract the last fenced ```` ```python ```` block, run
it, then run each ``assert`` of the task's test list; TraceRL's RL reward is
the number of passed tests (then z-scored per group).

jdiff choices:

* Extraction: the last ```` ```python ```` (or ``py``/``python3``) block;
  fallback: the last fenced block of any language.  No block -> 0.0.
* ``tests`` as a *list* of assert strings: each is run in its own sandboxed
  process after the solution, and the reward is the **fraction passed**
  (the count divided by the number of tests, so rewards of tasks with
  different test counts share the 0..1 scale; z-scoring per group is
  unaffected by the constant factor).
* ``tests`` as a *string*: one test program run after the solution, reward
  **1.0 if it finishes without an exception else 0.0**.  A string that is a
  JSON list (``'["assert f(1) == 2", ...]'``) is treated as a list.
* Execution uses :mod:`jdiff.rewards.sandbox` (best effort isolation; read
  that module for what is and is not enforced), with every (completion,
  test) pair run concurrently in a small thread pool.

Not implemented: TraceRL's stdio tasks (stdin/stdout comparison) and its
dataset ``prefix`` prepending for function tasks (prepend it yourself).
"""

from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Sequence, Tuple, Union
from concurrent.futures import ThreadPoolExecutor

from jdiff.rewards.sandbox import SandboxLimits, run_python_sandboxed

# TraceRL's per-test limit is 1 s (+2 s process-spawn slack).
DEFAULT_LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=3)

_PY_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> Optional[str]:
  """Last ```python fenced block, else the last fenced block; None if none."""
  for pattern in (_PY_BLOCK, _ANY_BLOCK):
    blocks = pattern.findall(text)
    if blocks:
      return blocks[-1]
  return None


def _as_test_list(tests) -> Union[List[str], str]:
  """Normalise a ``tests`` entry to a list of test snippets or one program."""
  if isinstance(tests, str):
    stripped = tests.strip()
    if stripped.startswith("["):
      try:
        parsed = json.loads(stripped)
        if isinstance(parsed, list) and all(isinstance(t, str) for t in parsed):
          return parsed
      except json.JSONDecodeError:
        pass
    return tests
  return [str(t) for t in tests]


def code_reward(
    completions: List[str],
    tests: Sequence,
    *,
    limits: Optional[SandboxLimits] = None,
    max_workers: Optional[int] = None,
) -> List[float]:
  """Fraction of tests passed by the extracted program (see module docstring)."""
  limits = limits or DEFAULT_LIMITS
  jobs: List[Tuple[int, str, str]] = []  # (completion index, solution, test)
  totals = [0] * len(completions)
  for i, (text, entry) in enumerate(zip(completions, tests, strict=True)):
    code = extract_code(text)
    entry = _as_test_list(entry)
    if code is None:
      continue
    test_list = [entry] if isinstance(entry, str) else entry
    totals[i] = len(test_list)
    jobs.extend((i, code, t) for t in test_list)

  passed = [0] * len(completions)
  if jobs:
    workers = max_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
      results = pool.map(lambda job: run_python_sandboxed(job[1], job[2], limits).passed, jobs)
      for (i, _, _), ok in zip(jobs, results, strict=True):
        passed[i] += int(ok)
  return [p / t if t else 0.0 for p, t in zip(passed, totals, strict=True)]
