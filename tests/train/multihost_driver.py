"""scripts/train.py's ``main`` with one extra reward registered; run as a subprocess by
test_multihost.py (same flags as scripts/train.py).

The tiny test runs decode 8 tokens from an untrained policy, which never earn the task's
exact-answer reward; all-zero rewards would give zero advantages and leave the parameters
unchanged, so the comparison between layouts would be vacuous. ``digit_fraction`` (share of
digits in the completion) differs between samples from the first step on.
"""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from absl import app  # noqa: E402

from jdiff.rewards import register_reward  # noqa: E402


def digit_fraction(completions, **unused):
  del unused
  return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


if __name__ == "__main__":
  register_reward("test_digit_fraction", digit_fraction)
  spec = importlib.util.spec_from_file_location(
      "jdiff_train_script", os.path.join(ROOT, "scripts", "train.py")
  )
  train = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(train)
  app.run(train.main)
