"""DiffuCoder's coupled-GRPO (docs/design.md "apple/ml-diffucoder (coupled-GRPO)").

Spec text: "for each sample it runs three forward passes: the whole completion masked, a
random mask with t drawn uniformly from [0.2, 0.8], and the complementary mask. These are
weighted 1, 1/t and 1/(1−t). Every completion token is therefore scored exactly once in a
realistic partially-masked context."

Per response and inner iteration: ``t ~ U(t_low, t_high)``, ``M_t`` = completion positions
with ``u_k < t`` (``u ~ U(0,1)`` per position; rate t), and its complement. Rows (prompt
never masked, as in the reference, whose ``p_mask_prompt`` is 0):
  v=0: completion fully masked, weight 1;
  v=1: ``M_t`` masked, weight 1/t on the tokens of ``M_t`` (scored where they are masked);
  v=2: complement masked, weight 1/(1−t) on the complement's tokens.
Each completion token is thus read once from the pair (v=1 or v=2) and once from v=0. The
per-token log-prob is the weighted combination
  ``logp_k = ½ (ℓ_{0,k} + w_k ℓ_{pair,k})``, ``w_k = 1/t`` on ``M_t``, ``1/(1−t)`` off it.
Reading of the spec: the "weights 1, 1/t, 1/(1−t)" are combined as in DiffuCoder's released
trainer, which averages the fully masked estimate with the importance-weighted pair estimate
(hence the ½). ``full_mask_row=False`` drops row 0 and uses ``logp_k = w_k ℓ_{pair,k}``.
Stored as per-row, per-token weights ``[R, V, G]`` (0 where a row does not score a token), so
``logp = Σ_v w_v ℓ_v``.

Everything else is diffu-GRPO (the reference trainer is a fork of d1's): μ draws per rollout
batch shared by π_θ, π_old and π_ref (:func:`diffu_grpo.select_iteration`,
:func:`diffu_grpo.iteration_logprobs`), clipped surrogate + β·k3 to a frozen reference,
token-mean loss over the completion up to and including the first EOS. Defaults follow the
reference recipe (``config_coupled_code.yaml``): μ = 2, ε = 0.5, β = 0.01, no std scaling.

Decisions: the reference draws one t per micro-batch and inner iteration; here t is drawn
per response (the spec's "for each sample"). The complement is exact (``u ≥ t``), so every
token lands in exactly one of the pair. Attention as in :mod:`diffu_grpo` (key padding;
native block-causal for block models; Dream's logit shift).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.models import masks
from jdiff.rl import diffu_grpo
from jdiff.rl.diffu_grpo import (
    completion_layout,
    completion_logprobs,
    compute_advantages,
    grpo_loss,
    iteration_keys,
    iteration_logprobs,
    select_iteration,
)
from jdiff.rl.method import Method, register_method


@dataclasses.dataclass(frozen=True)
class CoupledGRPOConfig:
  t_low: float = 0.2  # t ~ U(t_low, t_high)
  t_high: float = 0.8
  full_mask_row: bool = True  # the fully masked row (weight 1) of the spec
  num_iterations: int = 2  # μ (reference recipe)
  eps: float = 0.5  # PPO clip (reference recipe)
  beta: float = 0.01  # k3 KL to the frozen reference (reference recipe)
  random_masking: bool = True  # fresh draw per inner iteration; False: seed 42 for all
  chunk_size: int = 8192

  def __post_init__(self):
    if not 0.0 < self.t_low <= self.t_high < 1.0:
      raise ValueError(
          f"CoupledGRPOConfig needs 0 < t_low <= t_high < 1, got " f"({self.t_low}, {self.t_high})"
      )
    if self.num_iterations < 1:
      raise ValueError(f"CoupledGRPOConfig.num_iterations must be >= 1, got {self.num_iterations}")
    if not 0 < self.eps < 1:
      raise ValueError(f"CoupledGRPOConfig.eps must be in (0, 1), got {self.eps}")
    if self.beta < 0:
      raise ValueError(f"CoupledGRPOConfig.beta must be >= 0, got {self.beta}")

  @property
  def rows_per_response(self) -> int:
    return 3 if self.full_mask_row else 2


def coupled_rows(clean, p: int, t, u, mask_id: int, full_mask_row: bool = True):
  """One draw. ``clean [R, N]`` = ``[prompt | completion]``, ``t [R]``, ``u [R, G]`` ->
  ``(input_ids [R, V, N], weights [R, V, G], m_t [R, G])`` (numpy)."""
  prompt, comp = clean[:, :p], clean[:, p:]
  m_t = u < t[:, None]
  t = t[:, None].astype(np.float64)
  half = 0.5 if full_mask_row else 1.0
  row = lambda masked: np.concatenate([prompt, np.where(masked, mask_id, comp)], 1)
  rows = [row(m_t), row(~m_t)]
  weights = [np.where(m_t, half / t, 0.0), np.where(~m_t, half / (1.0 - t), 0.0)]
  if full_mask_row:
    rows.insert(0, row(np.ones_like(m_t)))
    weights.insert(0, np.full(m_t.shape, 0.5))
  return (np.stack(rows, 1).astype(np.int32), np.stack(weights, 1).astype(np.float32), m_t)


def build_batch(traj, advantages, key, cfg: CoupledGRPOConfig, model_config) -> dict:
  """Trajectory + per-response advantages ``[R]`` -> μ coupled draws (numpy).

  Keys: ``iteration_input_ids [R, μ, V, N]``, ``iteration_row_weights [R, μ, V, G]``,
  ``iteration_coupled_mask [R, μ, G]`` (M_t), ``iteration_t [R, μ]``; iteration 0's
  ``input_ids``/``row_weights``/...; shared ``positions``/``valid [R, N]``,
  ``targets``/``loss_mask [R, G]``, ``advantages [R]``.
  """
  mask_id = model_config.mask_token_id
  ids, positions, valid, targets, loss_mask, pmask = completion_layout(traj, mask_id)
  r, g = targets.shape
  p = pmask.shape[1]
  clean = np.concatenate([ids[:, :p], targets], 1)
  per_iter = {"input_ids": [], "row_weights": [], "coupled_mask": [], "t": []}
  for k in iteration_keys(key, cfg.num_iterations, cfg.random_masking):
    kt, ku = jax.random.split(k)
    t = np.asarray(jax.random.uniform(kt, (r,), minval=cfg.t_low, maxval=cfg.t_high), np.float64)
    u = np.asarray(jax.random.uniform(ku, (r, g)))
    rows, w, m_t = coupled_rows(clean, p, t, u, mask_id, cfg.full_mask_row)
    for name, v in zip(per_iter, (rows, w, m_t, t.astype(np.float32))):
      per_iter[name].append(v)
  adv = np.asarray(advantages, np.float32)
  if adv.shape != (r,):
    raise ValueError(f"coupled-GRPO wants one advantage per response [{r}], got {adv.shape}")
  batch = {diffu_grpo.ITER + k: np.stack(v, 1) for k, v in per_iter.items()}
  batch.update(
      positions=positions, valid=valid, targets=targets, loss_mask=loss_mask, advantages=adv
  )
  return {**batch, **select_iteration(batch, 0)}


def logprob_fn(model, batch, cfg: CoupledGRPOConfig):
  """``Σ_v w_v · log f_θ(o_k | row v)_k`` over the V rows of each response: ``[R, G]``."""
  ids = jnp.asarray(batch["input_ids"])
  r, v, n = ids.shape
  rep = lambda x: jnp.repeat(jnp.asarray(x), v, axis=0)
  positions, valid = rep(batch["positions"]), rep(batch["valid"])
  c = model.config
  if c.block_causal:
    mask = masks.block_causal(positions, c.block_size, valid)
  else:
    mask = masks.bidirectional(valid)
  lp = completion_logprobs(
      model, ids.reshape(r * v, n), positions, mask, rep(batch["targets"]), cfg.chunk_size
  )
  w = jnp.asarray(batch["row_weights"], jnp.float32)
  return jnp.sum(w * lp.reshape(r, v, -1), axis=1)


def loss_fn(model, batch, cfg: CoupledGRPOConfig):
  return grpo_loss(logprob_fn(model, batch, cfg), batch, cfg)


__all__ = [
    "CoupledGRPOConfig",
    "build_batch",
    "compute_advantages",
    "coupled_rows",
    "iteration_logprobs",
    "logprob_fn",
    "loss_fn",
    "select_iteration",
]

METHOD = register_method(
    Method("coupled_grpo", CoupledGRPOConfig, build_batch, logprob_fn, loss_fn)
)
