"""The RL registries that are not methods: advantage estimators by name (``config.rl.advantage``).

:class:`Registry` itself lives in :mod:`jdiff.registry` (one class for every name lookup).
"""

from __future__ import annotations

from jdiff.registry import Registry

# A group estimator: ``fn(rewards [N], group_size, std_normalize=...) -> [N]`` (the RL loop's
# per-response advantage); ``trace_gae`` is the value model's token-level one.
advantage_estimators = Registry("advantage estimator")

__all__ = ["Registry", "advantage_estimators"]
