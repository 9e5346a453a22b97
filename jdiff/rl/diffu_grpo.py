"""d1's diffu-GRPO (docs/methods.md §diffu-GRPO (d1)): the one-step log-prob estimator.

For a completion o of prompt q the input is ``[q′ | M^G]``: every completion position holds
the mask token and each real prompt token is replaced by the mask with probability
``p_mask_prompt`` (0.15). One forward pass gives ``log π(o_k | q) ≈ log f_θ(o_k | q′ ⊕ M^G)_k``
at every completion position k (Dream reads position k's prediction from k−1).

Inner iterations (§2.2 step 4/6): μ mask draws are made once per rollout batch; iteration m
uses draw m for π_θ, π_old and π_ref alike, so ratios compare like with like. The batch
carries all μ variants (``iteration_*`` keys, iteration axis 1 so that every leaf keeps the
row axis first for the update step's sharding and micro-batching) plus iteration 0's inputs::

    batch = build_batch(traj, adv, key, cfg, model_config)           # host, numpy
    batch["old_logp"] = iteration_logprobs(score_old, batch)          # [R, μ, G]
    batch["ref_logp"] = iteration_logprobs(score_ref, batch)          # [R, μ, G]
    for m in range(cfg.num_iterations):
      state, metrics = update(state, select_iteration(batch, m))      # loss_fn on draw m

(π_old for every draw is the pre-update policy, as d1 computes all μ old log-probs before the
first update; with μ = 1 this is "old = current, detached".) ``random_masking=False`` uses
d1's fixed seed 42 for every iteration (and every batch). Without random masking, or with
``p_mask_prompt=0``, all iterations see the same input.

Loss (§2.2 step 6): ``−min(ρA, clip(ρ, 1−ε, 1+ε)A) + β·k3(π_ref‖π_θ)`` per token,
``Σ_{rows,k} λ·mask / Σ mask`` (token mean), no log-ratio clipping; ``mask`` = completion
tokens up to and including the first EOS (``k < lengths``). The advantage ``r − group mean``
(no std division, §2.2 step 5) comes from :func:`compute_advantages`.

Decisions: positions are the cumulative count of real tokens and left-pad keys are masked,
as in this repo's samplers (:mod:`jdiff.sampling.llada` by default; training must see what
the sampler saw). d1 left-pads with EOS and, like LLaDA's generate, runs the model without an
attention mask (padding-blind); that convention is not reproduced here. d1 targets
LLaDA; on block models (SDAR) the model's native block-causal mask over ``[q′ | M^G]`` with
blocks at absolute positions is used (a completion block sees the prompt and the fully
masked earlier blocks), for Dream bidirectional attention with the logit shift.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jdiff.models import masks
from jdiff.rl.advantages import group_zscore
from jdiff.models.logprobs import model_token_logprobs
from jdiff.rl.losses import batch_weights, clipped_policy_loss
from jdiff.rl.method import ITER, Method, iteration_logprobs, register_method, select_iteration  # noqa: F401

FIXED_SEED = 42  # d1: every inner iteration uses seed 42 when random_masking is off


@dataclasses.dataclass(frozen=True)
class DiffuGRPOConfig:
  p_mask_prompt: float = 0.15  # train.yaml (class default 0.3)
  num_iterations: int = 12  # μ: 12 for GSM8K / MATH, 8 for Countdown / Sudoku
  eps: float = 0.5  # PPO clip, train.yaml (class default 0.2)
  beta: float = 0.04  # k3 KL to the frozen reference
  random_masking: bool = True  # fresh prompt mask per inner iteration; False: seed 42 for all
  chunk_size: int = 8192  # vocabulary chunk of the float32 log-softmax

  def __post_init__(self):
    if not 0.0 <= self.p_mask_prompt < 1.0:
      raise ValueError(f"DiffuGRPOConfig.p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}")
    if self.num_iterations < 1:
      raise ValueError(f"DiffuGRPOConfig.num_iterations must be >= 1, got {self.num_iterations}")
    if not 0 < self.eps < 1:
      raise ValueError(f"DiffuGRPOConfig.eps must be in (0, 1), got {self.eps}")
    if self.beta < 0:
      raise ValueError(f"DiffuGRPOConfig.beta must be >= 0, got {self.beta}")


def compute_advantages(rewards, group_size: int, std_normalize: bool = False) -> jax.Array:
  """d1's advantage (§2.2 step 5): ``r − group mean``, divided by the std if ``std_normalize``
  (the loop's is ``config.rl.std_normalize``; d1's code does not divide)."""
  return group_zscore(rewards, group_size, std_normalize=std_normalize)


def iteration_keys(key, num_iterations: int, random_masking: bool):
  """One PRNG key per inner iteration (the μ "mask seeds"); all equal without random masking."""
  if not random_masking:
    return [jax.random.key(FIXED_SEED)] * num_iterations
  if key is None:
    raise ValueError("random masking needs a PRNG key")
  return list(jax.random.split(key, num_iterations))


def completion_layout(traj, mask_id: int):
  """Rows ``[prompt | M^G]`` of a trajectory (numpy): the shared part of every draw.

  Returns ``(ids [R, N], positions [R, N], valid [R, N], targets [R, G], loss_mask [R, G],
  prompt_mask [R, P])``; positions count real tokens only, the completion continues from
  the prompt length; ``loss_mask`` = completion tokens up to and including the stop.
  """
  pids = np.asarray(traj.prompt_ids, np.int32)
  pmask = np.asarray(traj.prompt_mask, bool)
  toks = np.asarray(traj.tokens, np.int32)
  lengths = np.asarray(traj.lengths, np.int32)
  r, g = toks.shape
  ppos = np.maximum(np.cumsum(pmask, axis=1) - 1, 0)
  cpos = pmask.sum(1, keepdims=True) + np.arange(g)[None]
  ids = np.concatenate([pids, np.full((r, g), mask_id, np.int32)], 1)
  positions = np.concatenate([ppos, cpos], 1).astype(np.int32)
  valid = np.concatenate([pmask, np.ones((r, g), bool)], 1)
  loss_mask = np.arange(g)[None] < lengths[:, None]
  return ids, positions, valid, toks, loss_mask, pmask


def build_batch(traj, advantages, key, cfg: DiffuGRPOConfig, model_config) -> dict:
  """Trajectory + per-response advantages ``[R]`` -> μ prompt-masked variants (numpy).

  Keys: ``iteration_input_ids [R, μ, N]``, ``input_ids [R, N]`` (iteration 0),
  ``positions``/``valid [R, N]``, ``targets``/``loss_mask [R, G]``, ``advantages [R]``.
  """
  ids, positions, valid, targets, loss_mask, pmask = completion_layout(
      traj, model_config.mask_token_id
  )
  r, p = pmask.shape
  keys = iteration_keys(key, cfg.num_iterations, cfg.random_masking)
  variants = []
  for k in keys:
    masked = np.asarray(jax.random.uniform(k, (r, p))) < cfg.p_mask_prompt
    masked &= pmask  # left-pad slots stay pad (they are invalid keys anyway)
    variants.append(
        np.concatenate([np.where(masked, model_config.mask_token_id, ids[:, :p]), ids[:, p:]], 1)
    )
  adv = np.asarray(advantages, np.float32)
  if adv.shape != (r,):
    raise ValueError(f"diffu-GRPO wants one advantage per response [{r}], got {adv.shape}")
  batch = dict(
      iteration_input_ids=np.stack(variants, 1),
      positions=positions,
      valid=valid,
      targets=targets,
      loss_mask=loss_mask,
      advantages=adv,
  )
  return {**batch, **select_iteration(batch, 0)}


def attention_mask(batch, model_config):
  """Key-padding bidirectional (LLaDA, Dream) or native block-causal (SDAR) attention."""
  if model_config.block_causal:
    return masks.block_causal(batch["positions"], model_config.block_size, batch["valid"])
  return masks.bidirectional(batch["valid"])


def completion_logprobs(model, input_ids, positions, mask, targets, chunk_size: int):
  """log p(targets) at the last ``G = targets.shape[1]`` positions ``[R, G]`` (float32).

  The vocab head only runs on the completion positions, not on the prompt (Dream's shift
  included, by :func:`jdiff.models.logprobs.model_token_logprobs`).
  """
  return model_token_logprobs(
      model,
      input_ids,
      positions,
      mask,
      targets,
      chunk_size,
      start=input_ids.shape[1] - targets.shape[1],
  )


def logprob_fn(model, batch, cfg: DiffuGRPOConfig):
  """One forward on ``batch['input_ids']``: log π(o_k | q′ ⊕ M^G) at every completion position."""
  return completion_logprobs(
      model,
      batch["input_ids"],
      batch["positions"],
      attention_mask(batch, model.config),
      batch["targets"],
      cfg.chunk_size,
  )


def grpo_loss(logp, batch, cfg):
  """d1's clipped surrogate + β·k3 to the frozen reference, token mean, no ratio clipping."""
  if cfg.beta > 0 and "ref_logp" not in batch:
    raise KeyError("beta > 0 needs batch['ref_logp'] (the frozen reference's log-probs)")
  return clipped_policy_loss(
      logp,
      batch["old_logp"],
      batch["advantages"],
      batch["loss_mask"],
      eps_low=cfg.eps,
      kl_coef=cfg.beta,
      ref_logp=batch.get("ref_logp"),
      normalization="token_mean",
      log_ratio_clip=None,
      weights=batch_weights(batch),
  )


def loss_fn(model, batch, cfg: DiffuGRPOConfig):
  return grpo_loss(logprob_fn(model, batch, cfg), batch, cfg)


METHOD = register_method(
    Method("diffu_grpo", DiffuGRPOConfig, build_batch, logprob_fn, loss_fn, step_weighted=True)
)
