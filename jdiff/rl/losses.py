"""Clipped policy loss (PPO/GRPO surrogate + k3 or k1 KL) and clipped value loss.

Specs: docs/methods.md §TraceRL block rows (block path), §6 (full attention), §7 (value loss);
d1_cjgrpo_dtrpo.md §2.2 step 6 (diffu-GRPO), §3.3 step 4 (CJ-GRPO). All math in float32.

Per token j (``mask`` selects the trained tokens, e.g. TraceRL's P):
  ``d_j = logp_j − old_j``, ``ρ_j = exp(clip(d_j, −c, c))`` (TraceRL clips at c = 10),
  ``surr_j = min(ρ_j A_j, clip(ρ_j, 1 − ε_low, 1 + ε_high) A_j)``,
  ``k3_j = exp(ref_j − logp_j) − (ref_j − logp_j) − 1``.
Normalisations (``normalization``):
  ``"token_mean"``: Σ_{rows,j} (−surr + β k3)·mask / Σ mask (d1; CJ-GRPO per step).
  ``"per_row_sum_over_length"``: per row Σ_j (−surr + β k3)·mask / L1, mean over rows
  (TraceRL §5.6, block path; L1 is passed as ``row_norm``).
  ``"per_row_mean"``: per row −Σ surr·mask / |P| + β Σ k3·mask, mean over rows (TraceRL §6,
  full attention: the KL is summed over P, not normalised).
"Mean over rows" counts only rows with a non-empty mask (TraceRL drops rows whose P is empty),
so padding rows added for static shapes do not dilute the loss.

Exact weighting across micro-batches (docs/design.md): when the batch carries the optimizer
step's weights (:func:`step_weights`: ``row_weight`` = 1 / non-empty rows of the whole step,
``token_weight`` = 1 / trained tokens of the whole step, computed on the host before the step
is split), the reductions are weighted *sums* (Σ_r w_r · per_row_r, or Σ_r w_r · row_sum_r for
``token_mean``), so the update step adds micro-batch losses and ``grad_accum`` changes memory
only, not the weighting.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

F32 = jnp.float32
# "per_row_sum" (Σ per row, mean over rows) is what "per_row_mean" uses for its KL term.
NORMALIZATIONS = ("token_mean", "per_row_sum_over_length", "per_row_mean", "per_row_sum")


def k3_kl(logp: jax.Array, ref_logp: jax.Array, clip: Optional[float] = None) -> jax.Array:
  """Schulman's k3 estimator of KL(π‖π_ref): ``exp(ref − logp) − (ref − logp) − 1`` (≥ 0).

  ``clip`` bounds the exponent (TraceRL: ``exp(clip(−d, −10, 10))``).
  """
  delta = ref_logp - logp
  e = delta if clip is None else jnp.clip(delta, -clip, clip)
  return jnp.exp(e) - delta - 1.0


def k1_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """The k1 estimator of KL(π‖π_ref): ``logp − ref`` per token (unbiased, can be negative).

  TraceRL's ``use_kl_estimator_k3=False``; its gradient is the score function, so it pulls
  every sampled token's log-prob toward the reference's.
  """
  return logp - ref_logp


KL_ESTIMATORS = ("k3", "k1")


def step_weights(loss_mask) -> dict:
  """Host-side weights of one optimizer step's rows (module docstring): ``row_weight`` [B]
  (1 / non-empty rows, 0 on empty rows) and ``token_weight`` [B] (1 / trained tokens)."""
  mask = np.asarray(loss_mask, np.float32).reshape(np.shape(loss_mask)[0], -1)
  valid = mask.sum(axis=1) > 0
  row = valid.astype(np.float32) / max(float(valid.sum()), 1.0)
  token = np.full(mask.shape[0], 1.0 / max(float(mask.sum()), 1.0), np.float32)
  return {"row_weight": row, "token_weight": token}


def _row_reduce(per_token, mask, normalization, row_norm, what, weights=None):
  """Reduces a ``[B, T]`` masked per-token quantity to a scalar (see module docstring);
  ``weights`` (``step_weights``' dict) makes it the weighted sum over the step's rows."""
  rows_valid = jnp.sum(mask, axis=1) > 0
  n_rows = jnp.maximum(jnp.sum(rows_valid.astype(F32)), 1.0)
  row_sum = jnp.sum(per_token * mask, axis=1)
  if normalization == "token_mean":
    if weights is not None:
      return jnp.sum(row_sum * jnp.asarray(weights["token_weight"], F32))
    return jnp.sum(row_sum) / jnp.maximum(jnp.sum(mask), 1.0)
  if normalization == "per_row_sum_over_length":
    if row_norm is None:
      raise ValueError(
          f"{what}: normalization 'per_row_sum_over_length' needs row_norm [B] "
          "(TraceRL's padded response width L1 per row)"
      )
    per_row = row_sum / jnp.maximum(jnp.asarray(row_norm, F32), 1e-12)
  elif normalization == "per_row_mean":
    per_row = row_sum / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  elif normalization == "per_row_sum":
    per_row = row_sum
  else:
    raise ValueError(
        f"{what}: unknown normalization {normalization!r}; expected one of " f"{NORMALIZATIONS}"
    )
  if weights is not None:
    w = jnp.asarray(weights["row_weight"], F32)
    return jnp.sum(jnp.where(rows_valid, per_row * w, 0.0))
  return jnp.sum(jnp.where(rows_valid, per_row, 0.0)) / n_rows


def _masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def clipped_policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    eps_low: float = 0.2,
    eps_high: Optional[float] = None,
    kl_coef: float = 0.0,
    ref_logp: Optional[jax.Array] = None,
    normalization: str = "token_mean",
    row_norm: Optional[jax.Array] = None,
    log_ratio_clip: Optional[float] = 10.0,
    kl_estimator: str = "k3",
    weights: Optional[dict] = None,
):
  """PPO-clip surrogate plus β·KL (k3 or k1), reduced by ``normalization``.

  Returns ``(loss, metrics)``.

  Args:
    logp: ``[B, T]`` current log-probs (with gradient); ``old_logp`` ``[B, T]`` π_old's.
    advantages: ``[B]`` (one per row, broadcast over tokens) or ``[B, T]`` (per token, §7).
    loss_mask: ``[B, T]`` bool/float, the tokens that are trained.
    eps_low, eps_high: clip range ``[1 − eps_low, 1 + eps_high]``; ``eps_high=None`` = eps_low.
    kl_coef: β. The KL is taken against ``ref_logp``; when it is None, against ``old_logp``
      (TraceRL §5.6: the KL is to π_old, an extra trust region). d1/CJ-GRPO pass the frozen
      reference's log-probs.
    row_norm: ``[B]`` per-row normaliser for ``"per_row_sum_over_length"`` (TraceRL's L1).
    log_ratio_clip: clip ``d`` (and the k3 exponent) to ±this before ``exp`` (TraceRL: 10);
      None = no clipping (d1).
    kl_estimator: "k3" (:func:`k3_kl`, the default) or "k1" (:func:`k1_kl`, unclipped).
    weights: the optimizer step's :func:`step_weights` (``row_weight``, ``token_weight``) for
      this batch's rows; the loss is then this batch's share of the step's loss.
  """
  if kl_estimator not in KL_ESTIMATORS:
    raise ValueError(
        f"clipped_policy_loss: kl_estimator={kl_estimator!r}; expected one of " f"{KL_ESTIMATORS}"
    )
  logp, old_logp = jnp.asarray(logp, F32), jax.lax.stop_gradient(jnp.asarray(old_logp, F32))
  mask = jnp.asarray(loss_mask, F32)
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, F32))
  if adv.ndim == 1:
    adv = adv[:, None]
  eps_high = eps_low if eps_high is None else eps_high

  d = logp - old_logp
  ratio = jnp.exp(d if log_ratio_clip is None else jnp.clip(d, -log_ratio_clip, log_ratio_clip))
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  surr = jnp.minimum(ratio * adv, clipped * adv)
  ref = old_logp if ref_logp is None else jax.lax.stop_gradient(jnp.asarray(ref_logp, F32))
  kl = k3_kl(logp, ref, log_ratio_clip) if kl_estimator == "k3" else k1_kl(logp, ref)

  policy = _row_reduce(-surr, mask, normalization, row_norm, "clipped_policy_loss", weights)
  kl_norm = "per_row_sum" if normalization == "per_row_mean" else normalization
  kl_term = _row_reduce(kl, mask, kl_norm, row_norm, "clipped_policy_loss", weights)
  loss = policy + kl_coef * kl_term

  low = (ratio < 1.0 - eps_low) & (adv < 0)
  high = (ratio > 1.0 + eps_high) & (adv > 0)
  metrics = {
      "loss": loss,
      "policy_loss": policy,
      "kl_loss": kl_term,
      "kl": _masked_mean(kl, mask),
      "ratio_mean": _masked_mean(ratio, mask),
      "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -jnp.inf), initial=0.0),
      "clip_frac": _masked_mean((low | high).astype(F32), mask),
      "clip_frac_low": _masked_mean(low.astype(F32), mask),
      "clip_frac_high": _masked_mean(high.astype(F32), mask),
      "approx_kl_old": _masked_mean(0.5 * jnp.square(d), mask),
      "advantage_mean": _masked_mean(jnp.broadcast_to(adv, mask.shape), mask),
      "num_tokens": jnp.sum(mask),
  }
  return loss, metrics


def clipped_value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    eps: float = 0.2,
    row_norm: Optional[jax.Array] = None,
    normalization: str = "per_row_sum_over_length",
    weights: Optional[dict] = None,
):
  """TraceRL's PPO-style value loss (§7). Returns ``(loss, metrics)``.

  ``V_clip = V_old + clip(V − V_old, −ε, ε)``,
  ``ℓ_j = ½ max((V − R_j)², (V_clip − R_j)²)``;
  per row ``Σ_{j∈P} ℓ_j / L1`` (``row_norm``), then the mean over rows (default), or the
  weighted sum with the optimizer step's ``weights`` (:func:`step_weights`).
  """
  v = jnp.asarray(values, F32)
  v_old = jax.lax.stop_gradient(jnp.asarray(old_values, F32))
  ret = jax.lax.stop_gradient(jnp.asarray(returns, F32))
  mask = jnp.asarray(mask, F32)
  v_clip = v_old + jnp.clip(v - v_old, -eps, eps)
  unclipped, clipped = jnp.square(v - ret), jnp.square(v_clip - ret)
  per_token = 0.5 * jnp.maximum(unclipped, clipped)
  loss = _row_reduce(per_token, mask, normalization, row_norm, "clipped_value_loss", weights)
  resid_var = _masked_mean(jnp.square(ret - v), mask)
  ret_mean = _masked_mean(ret, mask)
  ret_var = _masked_mean(jnp.square(ret - ret_mean), mask)
  metrics = {
      "value_loss": loss,
      "value_clip_frac": _masked_mean((clipped > unclipped).astype(F32), mask),
      "value_mean": _masked_mean(v, mask),
      "return_mean": ret_mean,
      "explained_variance": 1.0 - resid_var / jnp.maximum(ret_var, 1e-8),
  }
  return loss, metrics


WEIGHT_KEYS = ("row_weight", "token_weight")


def batch_weights(batch) -> Optional[dict]:
  """The step weights a batch carries (both :data:`WEIGHT_KEYS`), else None."""
  if all(k in batch for k in WEIGHT_KEYS):
    return {k: batch[k] for k in WEIGHT_KEYS}
  return None


__all__ = [
    "KL_ESTIMATORS",
    "NORMALIZATIONS",
    "WEIGHT_KEYS",
    "batch_weights",
    "clipped_policy_loss",
    "clipped_value_loss",
    "k1_kl",
    "k3_kl",
    "step_weights",
]
