"""Advantage estimators shared by every method.

Specs: docs/methods.md §Rewards and advantages, §Diffusion value model; d1_cjgrpo_dtrpo.md §2.2, §3.3.

Registered in :data:`jdiff.rl.registry.advantage_estimators` (``config.rl.advantage`` picks
the RL loop's group estimator):

- ``"group_zscore"`` (alias ``"grpo"``): group z-score (TraceRL §4): ``(r - mean) / std``
  with the *population* std; a group whose std is 0 gets advantage 0.
- ``"group_mean"``: d1's diffu-GRPO / CJ-GRPO code (§2.2 step 5, §3.3 step 2): ``r - mean``,
  no division by the std.
- ``"trace_gae"``: TraceRL's step-level GAE with the diffusion value model (§7).

Rewards arrive grouped: ``rewards[N]`` holds ``N / group_size`` consecutive groups, one per
prompt. The group functions are jittable; :func:`group_filter` is host-side (it warns).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.rl.registry import advantage_estimators

F32 = jnp.float32


def _grouped(rewards, group_size: int):
  rewards = jnp.asarray(rewards, F32)
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be 1-D [N], got shape {rewards.shape}")
  if group_size <= 0 or rewards.shape[0] % group_size:
    raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
  return rewards.reshape(-1, group_size)


@advantage_estimators.register("group_zscore")
@advantage_estimators.register("grpo")
def group_zscore(
    rewards, group_size: int, std_normalize: bool = True, eps: float = 1e-6
) -> jax.Array:
  """Per-group ``(r - mean) / std`` (TraceRL §4), flattened back to ``[N]`` float32.

  The std is the population std (ddof=0) and there is no epsilon in the denominator:
  groups whose std is ``<= eps`` (all rewards equal, up to rounding) get advantage 0.
  With ``std_normalize=False`` this is d1's ``r - mean`` (§2.2).
  """
  g = _grouped(rewards, group_size)
  centred = g - jnp.mean(g, axis=1, keepdims=True)
  if not std_normalize:
    return centred.reshape(-1)
  std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=1, keepdims=True))
  adv = jnp.where(std > eps, centred / jnp.where(std > eps, std, 1.0), 0.0)
  return adv.reshape(-1)


@advantage_estimators.register("group_mean")
def group_mean_baseline(rewards, group_size: int, **unused) -> jax.Array:
  """d1 / CJ-GRPO advantage: ``r - group mean`` with no std division (d1 §2.2 step 5)."""
  del unused
  return group_zscore(rewards, group_size, std_normalize=False)


def group_filter(
    rewards, group_size: int, low: float = 0.2, high: float = 0.8, tol: float = 1e-9
) -> np.ndarray:
  """TraceRL's accuracy filter (§4): keep a prompt iff ``low <= mean reward <= high``.

  A prompt is dropped when its accuracy is > ``high`` or < ``low`` (with N = 16: 4–12
  correct responses are kept). Returns a per-sample bool keep mask ``[N]`` (every member of a
  group shares its group's value). Host-side; warns (does not raise) if nothing is kept.
  """
  g = np.asarray(rewards, np.float64).reshape(-1, group_size)
  acc = g.mean(axis=1)
  keep = (acc >= low - tol) & (acc <= high + tol)
  if not keep.any():
    warnings.warn(
        f"group_filter: all {len(keep)} groups filtered out (accuracies "
        f"{np.round(acc, 3).tolist()} outside [{low}, {high}])",
        stacklevel=2,
    )
  return np.repeat(keep, group_size)


def nonconstant_groups(rewards, group_size: int, eps: float = 1e-6) -> np.ndarray:
  """TraceRL's code-task filter (§4): drop groups whose z-scores are all zero. ``[N]`` bool."""
  g = np.asarray(rewards, np.float64).reshape(-1, group_size)
  keep = g.std(axis=1) > eps
  if not keep.any():
    warnings.warn(f"nonconstant_groups: all {len(keep)} groups have constant rewards", stacklevel=2)
  return np.repeat(keep, group_size)


def outcome_token_rewards(step_ids, trainable, rewards) -> jax.Array:
  """TraceRL §7 outcome mode: the response's (z-scored) reward on every token of its last
  trace step (the maximum step id among trainable tokens), 0 elsewhere. ``[B, G]`` float32."""
  step_ids = jnp.asarray(step_ids, jnp.int32)
  valid = jnp.asarray(trainable, bool) & (step_ids > 0)
  last = jnp.max(jnp.where(valid, step_ids, 0), axis=1, keepdims=True)
  on_last = valid & (step_ids == last)
  return jnp.where(on_last, jnp.asarray(rewards, F32)[:, None], 0.0)


def _dense_step_rank(step_ids, valid):
  """0-based rank of each token's step id among its row's distinct valid ids; ``G`` if invalid."""
  g = step_ids.shape[-1]
  big = jnp.iinfo(jnp.int32).max
  keyed = jnp.where(valid, step_ids, big)
  order = jnp.argsort(keyed, stable=True)
  srt = keyed[order]
  first = jnp.concatenate([jnp.ones((1,), bool), srt[1:] != srt[:-1]]) & (srt != big)
  dense = jnp.cumsum(first.astype(jnp.int32)) - 1
  rank = jnp.zeros((g,), jnp.int32).at[order].set(dense)
  return jnp.where(valid, rank, g)


def _trace_gae_row(step_ids, rewards, values, valid, gamma, lam):
  g = step_ids.shape[0]
  rank = _dense_step_rank(step_ids, valid)
  seg = lambda x: jax.ops.segment_sum(jnp.where(valid, x, 0.0), rank, num_segments=g + 1)[:g]
  count = seg(jnp.ones_like(rewards))
  denom = jnp.maximum(count, 1.0)
  r_star, v_star = seg(rewards) / denom, seg(values) / denom  # steps past S have count 0 -> 0

  def back(carry, x):  # over steps t = G-1 .. 0; carry = (R*_{t+1}, V*_{t+1}, A*_{t+1})
    r_next, v_next, a_next = carry
    r_t, v_t = x
    ret = r_t + gamma * r_next
    adv = r_t - v_t + gamma * v_next + gamma * lam * a_next
    return (ret, v_t, adv), (ret, adv)

  zero = jnp.zeros((), F32)
  _, (ret_star, adv_star) = jax.lax.scan(back, (zero, zero, zero), (r_star, v_star), reverse=True)
  pad = lambda x: jnp.concatenate([x, jnp.zeros((2,), F32)])  # index G (and G+1) -> 0
  nxt = jnp.minimum(rank + 1, g + 1)
  ret_next, v_next, adv_next = pad(ret_star)[nxt], pad(v_star)[nxt], pad(adv_star)[nxt]
  returns = rewards + gamma * ret_next
  advantages = rewards - values + gamma * v_next + gamma * lam * adv_next
  return jnp.where(valid, returns, 0.0), jnp.where(valid, advantages, 0.0)


@advantage_estimators.register("trace_gae")
def trace_gae(step_ids, token_rewards, values, trainable, gamma: float = 1.0, lam: float = 1.0):
  """TraceRL's trace-step GAE with the diffusion value model (docs/methods.md §Diffusion value model).

  Args:
    step_ids: ``[B, G]`` int, 1-based global decoding step of each completion token (after
      shrink); 0 = pad / not trained.
    token_rewards: ``[B, G]`` per-token rewards r_j (see :func:`outcome_token_rewards`).
    values: ``[B, G]`` ``V_old_j``, the value of the state just before token j was revealed.
    trainable: ``[B, G]`` bool, the non-pad tokens.
    gamma, lam: discount and GAE lambda (defaults γ = λ = 1).

  The distinct valid step ids of a row, in increasing order, are the steps t = 1..S (ids need
  not be contiguous). ``r*_t`` / ``V*_t`` are the means of r_j / V_j over the step's tokens;
  ``R*_t = r*_t + γR*_{t+1}``, ``A*_t = r*_t − V*_t + γV*_{t+1} + γλA*_{t+1}`` (zero past S);
  for a token j of step t: ``R_j = r_j + γR*_{t+1}`` and
  ``A_j = r_j − V_j + γV*_{t+1} + γλA*_{t+1}``.

  Returns ``(returns [B, G], advantages [B, G])`` float32, 0 on non-trainable tokens.
  Jittable; G is static and the step loop is one reversed ``lax.scan`` of length G.
  """
  step_ids = jnp.asarray(step_ids, jnp.int32)
  valid = jnp.asarray(trainable, bool) & (step_ids > 0)
  rewards = jnp.asarray(token_rewards, F32)
  values = jnp.asarray(values, F32)
  if not (step_ids.shape == rewards.shape == values.shape == valid.shape) or step_ids.ndim != 2:
    raise ValueError(
        f"trace_gae wants equal [B, G] shapes; got step_ids {step_ids.shape}, "
        f"rewards {rewards.shape}, values {values.shape}, trainable {valid.shape}"
    )
  row = lambda s, r, v, m: _trace_gae_row(
      s, r, v, m, jnp.asarray(gamma, F32), jnp.asarray(lam, F32)
  )
  return jax.vmap(row)(step_ids, rewards, values, valid)


__all__ = [
    "group_filter",
    "group_mean_baseline",
    "group_zscore",
    "nonconstant_groups",
    "outcome_token_rewards",
    "trace_gae",
]
