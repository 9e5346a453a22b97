"""RL machinery shared by every method: registries, advantages, log-probs, losses.

Importing this package registers the core pieces (``policy_losses["clipped"]``,
``value_losses["clipped"]``, ``advantage_estimators["grpo" | "group_mean" | "trace_gae"]``).
"""

from jdiff.rl import advantages, logprobs, losses, registry
from jdiff.rl.registry import (Registry, advantage_estimators, batch_builders, policy_losses,
                               value_losses)

__all__ = ["Registry", "advantage_estimators", "advantages", "batch_builders", "logprobs",
           "losses", "policy_losses", "registry", "value_losses"]
