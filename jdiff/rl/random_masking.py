"""dLLM-RL's "random_masking" (and "coupled") baselines (docs/methods.md §TraceRL block rows last
paragraphs, §6, §9): instead of the decoding trace, a random mask per response.

Block models (SDAR/TraDo, §5.6): one row per response. Each response token is masked
independently with a probability drawn *per position* from ``U(p_low, p_high)`` = U(0.1, 0.9);
blocks are the absolute-position blocks of the model's block size and all blocks are
trained in parallel in TraceRL's ``x_t ⊕ x_0`` row (``[prompt | clean response | noisy
window]``, :func:`jdiff.rl.trace_rows.build_block_rows`): a noisy block sees the clean earlier
blocks and itself. Full-attention models (Dream, LLaDA, §6): the row is the plain canvas
``[prompt | response]`` with the masked tokens replaced by the mask id, bidirectional
attention. ``complementary=True`` is dLLM-RL's "coupled" variant: a second row with the
complementary mask and the same advantage, so every token is trained exactly once per pair.

The loss is TraceRL's (§5.6 / §6, :func:`jdiff.rl.tracerl.loss_fn`): per-token clipped ratio ×
advantage on the masked kept tokens, k3 KL (against π_old by default), each row's sum over
the padded response width L1 (block models) or its mean over the masked tokens with the KL
summed (full attention), then the mean over rows.

Options for §6's full-attention defaults (``mask_times_per_sample = 35``, ``t ~ U(0.1, 0.9)``
per sample): ``masks_per_response`` rows per response and ``rate_per='row'`` (one rate per
row instead of per position). The defaults follow the block-model text (1 row, per position).

Layout reuse: the rows come from TraceRL's builders run with a single step group per block
(``shrink`` ≥ the number of steps), i.e. the round in which every decoded token is masked;
the noisy response is then re-masked with the random draw, so the layout (positions, prompt
tail window, validity, attention) is exactly TraceRL's.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from jdiff.rl import tracerl
from jdiff.rl.losses import KL_ESTIMATORS
from jdiff.rl.method import Method, register_method
from jdiff.rl.trace_rows import build_block_rows, build_full_attention_rows

RATE_PER = ("position", "row")


@dataclasses.dataclass(frozen=True)
class RandomMaskingConfig:
  p_low: float = 0.1  # mask probability ~ U(p_low, p_high)
  p_high: float = 0.9
  rate_per: str = "position"  # "position" (§5.6) | "row" (§6: one t per sample)
  masks_per_response: int = 1  # §6's mask_times_per_sample (35 there)
  complementary: bool = False  # dLLM-RL "coupled": add the complementary row
  # TraceRL's loss (read by tracerl.loss_fn / logprob_fn):
  eps: float = 0.2
  beta: float = 0.01
  kl_against: str = "old"
  kl_estimator: str = "k3"  # as TraceRLConfig.kl_estimator
  normalization: Optional[str] = None  # None: per_row_sum_over_length (block) / per_row_mean
  log_ratio_clip: Optional[float] = 10.0
  chunk_size: int = 8192

  def __post_init__(self):
    if not 0.0 <= self.p_low <= self.p_high <= 1.0:
      raise ValueError(
          f"RandomMaskingConfig needs 0 <= p_low <= p_high <= 1, got "
          f"({self.p_low}, {self.p_high})"
      )
    if self.rate_per not in RATE_PER:
      raise ValueError(f"RandomMaskingConfig.rate_per={self.rate_per!r}; expected {RATE_PER}")
    if self.masks_per_response < 1:
      raise ValueError(
          f"RandomMaskingConfig.masks_per_response must be >= 1, got " f"{self.masks_per_response}"
      )
    if not 0 < self.eps < 1:
      raise ValueError(f"RandomMaskingConfig.eps must be in (0, 1), got {self.eps}")
    if self.beta < 0:
      raise ValueError(f"RandomMaskingConfig.beta must be >= 0, got {self.beta}")
    if self.kl_against not in ("old", "ref"):
      raise ValueError(
          f"RandomMaskingConfig.kl_against={self.kl_against!r}; " "expected 'old' or 'ref'"
      )
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(
          f"RandomMaskingConfig.kl_estimator={self.kl_estimator!r}; expected one "
          f"of {KL_ESTIMATORS}"
      )


def draw_masks(key, shape, cfg: RandomMaskingConfig):
  """``(rate [R, G], masked [R, G])``: per-position (or per-row) rate ~ U(p_low, p_high),
  then each token masked independently with its rate."""
  kr, ku = jax.random.split(key)
  rshape = shape if cfg.rate_per == "position" else (shape[0], 1)
  rate = np.asarray(jax.random.uniform(kr, rshape, minval=cfg.p_low, maxval=cfg.p_high))
  rate = np.broadcast_to(rate, shape)
  return rate, np.asarray(jax.random.uniform(ku, shape)) < rate


def _single_round_rows(traj, c):
  """TraceRL rows with one step group per block (or per response): every decoded token masked."""
  steps = np.asarray(traj.raw_step_map if traj.raw_step_map is not None else traj.step_map)
  s = max(1, int(steps.max()) if steps.size else 1)
  if c.block_causal:
    return build_block_rows(
        traj,
        block_size=c.block_size,
        mask_id=c.mask_token_id,
        pad_id=c.pad_token_id,
        shrink=c.block_size,
    )
  return build_full_attention_rows(
      traj, mask_id=c.mask_token_id, pad_id=c.pad_token_id, shrink=s, max_steps=s
  )


def build_batch(traj, advantages, key, cfg: RandomMaskingConfig, model_config) -> dict:
  """Trajectory + per-response advantages ``[B]`` -> randomly masked rows (numpy).

  Same keys as :func:`jdiff.rl.tracerl.build_batch`; ``rows = B · masks_per_response ·
  (2 if complementary else 1)``, response-major. The noisy response occupies the last
  ``G`` columns in both layouts.
  """
  if key is None:
    raise ValueError("random_masking needs a PRNG key")
  c = model_config
  base = _single_round_rows(traj, c)
  nb = base["input_ids"].shape[0]
  g = np.asarray(traj.tokens).shape[1]
  adv = np.asarray(advantages, np.float32)
  if adv.shape != (nb,):
    raise ValueError(f"random_masking wants one advantage per response [{nb}], got {adv.shape}")
  k = cfg.masks_per_response
  per = k * (2 if cfg.complementary else 1)
  rows = {name: np.repeat(v, per, axis=0) for name, v in base.items()}
  _, masked = draw_masks(key, (nb * k, g), cfg)
  if cfg.complementary:  # [draw, complement] pairs, adjacent rows
    masked = np.stack([masked, ~masked], 1).reshape(nb * per, g)
  targets = rows["targets"][:, -g:]
  rows["input_ids"][:, -g:] = np.where(masked, c.mask_token_id, targets)
  rows["loss_mask"][:, -g:] &= masked  # base supervises every decoded, kept token
  rows["advantages"] = np.where(rows["loss_mask"], np.repeat(adv, per)[:, None], 0.0).astype(
      np.float32
  )
  rows["step_ids"] = np.where(rows["loss_mask"], rows["step_ids"], 0)
  if not c.block_causal:
    rows["row_norm"] = np.maximum(rows["loss_mask"].sum(-1), 1).astype(np.float32)
  return rows


METHOD = register_method(
    Method("random_masking", RandomMaskingConfig, build_batch, tracerl.logprob_fn, tracerl.loss_fn)
)
