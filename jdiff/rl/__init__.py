"""RL machinery shared by every method: registries, advantages, log-probs, losses.

Importing this package registers the core pieces
(``advantage_estimators["group_zscore" | "grpo" | "group_mean" | "trace_gae"]``)
and every method module in ``methods`` (see :mod:`jdiff.rl.method`).
"""

import importlib

from jdiff.rl import advantages, logprobs, losses, registry
from jdiff.rl.method import methods
from jdiff.rl.registry import Registry, advantage_estimators

# Method modules register themselves on import; a module not written yet is simply absent.
for _name in ("tracerl", "diffu_grpo", "random_masking", "coupled_grpo", "cj_grpo", "dtrpo"):
  try:
    importlib.import_module(f"jdiff.rl.{_name}")
  except ModuleNotFoundError as e:
    if e.name != f"jdiff.rl.{_name}":
      raise
del _name

__all__ = [
    "Registry",
    "methods",
    "advantage_estimators",
    "advantages",
    "logprobs",
    "losses",
    "registry",
]
