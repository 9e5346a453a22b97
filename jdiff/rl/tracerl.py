"""TraceRL (docs/methods.md §TraceRL block rows, §TraceRL full attention, §Diffusion value model): train on the model's own decoding trace.

Block models (SDAR/TraDo): rows from :func:`trace_rows.build_block_rows` (shrink ``s``
within each block, all blocks in parallel, ≤ ceil(B/s) rows per response), the x_t ⊕ x_0
mask, per-token clipped ratio × advantage, k3 KL, each row's sum divided by the padded
response width L1 and averaged over rows (§5.6). Full-attention models (Dream, LLaDA): one
row per group of ``s`` steps over the whole response, bidirectional attention, per-row mean
over P with the KL summed (§6). The advantage is the response's group z-score, or — with the
diffusion value model — per-token GAE over trace steps (§7, :mod:`jdiff.rl.value`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jdiff.models import masks
from jdiff.models.logprobs import model_token_logprobs
from jdiff.rl.losses import KL_ESTIMATORS, batch_weights, clipped_policy_loss
from jdiff.rl.method import Method, register_method
from jdiff.rl.trace_rows import build_block_rows, build_full_attention_rows


@dataclasses.dataclass(frozen=True)
class TraceRLConfig:
  shrink: int = 1  # block models; the reference uses 8 for full-attention models
  eps: float = 0.2  # PPO clip
  beta: float = 0.01  # KL coefficient
  kl_estimator: str = "k3"  # reference use_kl_estimator_k3=True; "k1" = log π_θ − log π_ref
  kl_against: str = "old"  # "old" (reference default: the pre-update policy) | "ref" (frozen)
  normalization: Optional[str] = None  # None: per_row_sum_over_length (block) / per_row_mean (full)
  log_ratio_clip: Optional[float] = 10.0
  chunk_size: int = 8192  # vocabulary chunk of the float32 log-softmax
  max_steps: Optional[int] = None  # full attention: static bound on decoding steps
  # Pads (pad == EOS: the stop token) supervised per response beyond which pads leave the loss;
  # the reference's post_num, default 0 (docs/methods.md §TraceRL block rows, step 6).
  post_num: int = 0
  # Block rows' normaliser L1: "gen_length" (the sampler's canvas width, jdiff's earlier
  # choice, kept as the default) or "longest" (the reference: the step's longest response).
  l1: str = "gen_length"

  def __post_init__(self):
    if self.shrink < 1:
      raise ValueError(f"TraceRLConfig.shrink must be >= 1, got {self.shrink}")
    if not 0 < self.eps < 1:
      raise ValueError(f"TraceRLConfig.eps must be in (0, 1), got {self.eps}")
    if self.beta < 0:
      raise ValueError(f"TraceRLConfig.beta must be >= 0, got {self.beta}")
    if self.kl_against not in ("old", "ref"):
      raise ValueError(f"TraceRLConfig.kl_against={self.kl_against!r}; expected 'old' or 'ref'")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(
          f"TraceRLConfig.kl_estimator={self.kl_estimator!r}; expected one of " f"{KL_ESTIMATORS}"
      )
    # Only the stop token can be a pad inside a response's kept span (the trajectory holds no
    # decoded pads after it), so counts above 1 would silently act as 1.
    if self.post_num not in (0, 1) or isinstance(self.post_num, bool):
      raise ValueError(
          f"config.method.post_num={self.post_num!r}: expected 0 (the stop token "
          "is not trained when pad == EOS) or 1 (it is)"
      )
    if self.l1 not in ("gen_length", "longest"):
      raise ValueError(f"config.method.l1={self.l1!r}: expected 'gen_length' or 'longest'")


def build_batch(traj, advantages, key, cfg: TraceRLConfig, model_config) -> dict:
  """Trajectory + advantages (``[B]`` or per-token ``[B, G]``) -> training rows (numpy)."""
  del key  # TraceRL rows are deterministic given the trajectory
  c = model_config
  if c.block_causal:
    rows = build_block_rows(
        traj,
        block_size=c.block_size,
        mask_id=c.mask_token_id,
        pad_id=c.pad_token_id,
        shrink=cfg.shrink,
        advantages=advantages,
        post_num=cfg.post_num,
        l1=cfg.l1,
    )
  else:
    rows = build_full_attention_rows(
        traj,
        mask_id=c.mask_token_id,
        pad_id=c.pad_token_id,
        shrink=cfg.shrink,
        max_steps=cfg.max_steps,
        advantages=advantages,
        post_num=cfg.post_num,
    )
    rows["row_norm"] = np.maximum(rows["loss_mask"].sum(-1), 1).astype(np.float32)
  return rows


def attention_mask(batch, model_config):
  """The rows' mask as a compact :class:`~jdiff.models.masks.MaskSpec`: the backbone makes
  it dense, or attends tile by tile with ``attention_impl="chunked"``."""
  if model_config.block_causal:
    return masks.spec_block_diffusion(batch["blocks"], batch["noisy"], batch["valid"])
  return masks.spec_bidirectional(batch["valid"])


def logprob_fn(model, batch, cfg: TraceRLConfig):
  """log π(target) at every position of every row ``[R, N]`` (float32, chunked vocab)."""
  mask = attention_mask(batch, model.config)
  return model_token_logprobs(
      model, batch["input_ids"], batch["positions"], mask, batch["targets"], cfg.chunk_size
  )


def loss_fn(model, batch, cfg: TraceRLConfig):
  logp = logprob_fn(model, batch, cfg)
  normalization = cfg.normalization or (
      "per_row_sum_over_length" if model.config.block_causal else "per_row_mean"
  )
  ref = batch.get("ref_logp") if cfg.kl_against == "ref" else None
  loss, metrics = clipped_policy_loss(
      logp,
      batch["old_logp"],
      batch["advantages"],
      batch["loss_mask"],
      eps_low=cfg.eps,
      kl_coef=cfg.beta,
      ref_logp=ref,
      normalization=normalization,
      row_norm=batch.get("row_norm"),
      log_ratio_clip=cfg.log_ratio_clip,
      kl_estimator=cfg.kl_estimator,
      weights=batch_weights(batch),
  )
  return loss, metrics


METHOD = register_method(
    Method(
        "tracerl",
        TraceRLConfig,
        build_batch,
        logprob_fn,
        loss_fn,
        value_model=True,
        step_weighted=True,
    )
)
