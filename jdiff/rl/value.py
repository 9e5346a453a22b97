"""TraceRL's diffusion value model (docs/methods.md §Diffusion value model).

The value model scores the same rows as the policy: ``V_j`` is its output at the noisy-copy
position of token j, i.e. the value of the state just before j was revealed. Per response,
the token values are reassembled from the rows (each trained token lies in exactly one row's
P), turned into step-level returns and GAE advantages over trace steps, and the per-token
advantages are written back into the policy rows. The value loss is the clipped PPO loss,
Σ_P / L1 per row, averaged over rows.

In both row layouts the response occupies the last G columns, which is what
:func:`tokens_from_rows` relies on.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jdiff.rl.advantages import outcome_token_rewards, trace_gae
from jdiff.rl.losses import batch_weights, clipped_value_loss


@dataclasses.dataclass(frozen=True)
class ValueConfig:
  gamma: float = 1.0
  lam: float = 1.0
  eps: float = 0.2  # value clip (the reference reuses training.eps)
  train_value_every: int = 1

  def __post_init__(self):
    for name in ("gamma", "lam"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"ValueConfig.{name} must be in [0, 1], got {v}")
    if self.train_value_every < 1:
      raise ValueError("ValueConfig.train_value_every must be >= 1")


def value_fn(value_model, batch, attention_mask) -> jnp.ndarray:
  """Values ``[R, N]`` (float32) of every position of every row."""
  values, _ = value_model(batch["input_ids"], batch["positions"], attention_mask)
  return values


def tokens_from_rows(rows_values, batch, num_responses: int, g: int) -> np.ndarray:
  """Per-response ``[B, G]`` values read at each token's supervising row (0 elsewhere)."""
  v = np.asarray(rows_values, np.float32)[:, -g:]
  m = np.asarray(batch["loss_mask"])[:, -g:]
  out = np.zeros((num_responses, g), np.float32)
  np.add.at(out, np.asarray(batch["response_index"]), np.where(m, v, 0.0))
  return out


def _per_response(batch, key, num_responses, g):
  x = np.asarray(batch[key])[:, -g:]
  m = np.asarray(batch["loss_mask"])[:, -g:]
  out = np.zeros((num_responses, g), x.dtype)
  np.add.at(out, np.asarray(batch["response_index"]), np.where(m, x, 0))
  trained = np.zeros((num_responses, g), bool)
  np.logical_or.at(trained, np.asarray(batch["response_index"]), m)
  return out, trained


def returns_and_advantages(
    batch, old_values_rows, rewards, num_responses: int, g: int, cfg: ValueConfig
):
  """Outcome-mode token rewards -> (returns ``[B, G]``, advantages ``[B, G]``, values ``[B, G]``).

  ``rewards``: the responses' z-scored rewards ``[B]`` (placed on the last trace step).
  """
  step_ids, trained = _per_response(batch, "step_ids", num_responses, g)
  values = tokens_from_rows(old_values_rows, batch, num_responses, g)
  token_rewards = outcome_token_rewards(step_ids, trained, jnp.asarray(rewards, jnp.float32))
  returns, adv = trace_gae(
      jnp.asarray(step_ids),
      token_rewards,
      jnp.asarray(values),
      jnp.asarray(trained),
      cfg.gamma,
      cfg.lam,
  )
  return np.asarray(returns), np.asarray(adv), values


def scatter_to_rows(batch, per_token: np.ndarray, key: str) -> None:
  """Writes ``[B, G]`` per-token values into the rows' last G columns (in place)."""
  g = per_token.shape[1]
  arr = np.zeros(np.asarray(batch["loss_mask"]).shape, np.float32)
  arr[:, -g:] = per_token[np.asarray(batch["response_index"])]
  batch[key] = arr


def value_loss_fn(value_model, batch, cfg: ValueConfig, attention_mask):
  """Clipped value loss on the rows' P positions (needs ``old_values`` and ``returns``)."""
  values = value_fn(value_model, batch, attention_mask)
  return clipped_value_loss(
      values,
      batch["old_values"],
      batch["returns"],
      batch["loss_mask"],
      eps=cfg.eps,
      row_norm=batch["row_norm"],
      weights=batch_weights(batch),
  )
