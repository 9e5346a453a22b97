"""Semi-autoregressive SFT for full-attention models (``sft_semi_ar``: Dream, LLaDA).

Spec: docs/methods.md §SFT objectives "Full-attention SFT" (dLLM-RL ``train/sft_dream.py``,
``method: semi-ar``; Fig. 2 left).

Batch (``build_batch``): each response is cut into blocks of ``block_size`` tokens counted
from the response start (full-attention samplers count blocks from the generation start), and
every sample becomes ``num_blocks`` rows. Row k:
- keeps the prompt and response blocks < k clean,
- replaces every response token of blocks > k by [MASK] (context only: not scored — the state
  a semi-AR sampler is in while it decodes block k),
- masks each token of block k independently with its own ``p ~ U(0.1, 0.9)``; at least one
  token is forced when block k has any response token.
Row order is sample-major (``row = sample·K + k``). Rows whose block k lies beyond the response
carry no scored token and are left out of the mean.

Attention: bidirectional over the row's real tokens (prompt and response region).

Loss (``loss_fn``): per row, the mean NLL over its masked block-k tokens; then the mean over rows
that have any. No 1/t weight. For Dream (``config.shift_logits``) the target at position j is
scored from the logits at j−1 (:func:`jdiff.sft.common.token_nll`).

``num_blocks`` (static) defaults to ``ceil(L / block_size)``, which covers any prompt length;
set it to ``ceil(L1 / block_size)`` for a response width L1 to avoid empty rows.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp

from jdiff.models import masks
from jdiff.sft import common

F32 = jnp.float32
DEFAULT_BLOCK = 16  # TraceRL's sft_dream default


def build_batch(
    rows: Mapping[str, jax.Array],
    key: jax.Array,
    cfg,
    *,
    block_size=None,
    num_blocks=None,
    p_low: float = 0.1,
    p_high: float = 0.9,
    min_one_masked: bool = True,
) -> dict:
  """SFT rows ``[B, L]`` -> ``B·K`` semi-AR rows ``[B·K, L]`` (``K = num_blocks``).

  Keys: ``tokens`` (noisy), ``positions``, ``valid``, ``targets`` (clean), ``masked`` (the
  scored block-k masks), ``block`` (each token's response block, −1 outside the response) and
  ``k`` ``[B·K]`` (the row's current block).
  """
  if not 0.0 < p_low <= p_high <= 1.0:
    raise ValueError(f"need 0 < p_low <= p_high <= 1, got {p_low}, {p_high}")
  bs = int(block_size or getattr(cfg, "block_size", None) or DEFAULT_BLOCK)
  tokens, prompt, loss, valid, positions = common.unpack_rows(rows)
  nrows, n = tokens.shape
  nk = int(num_blocks or math.ceil(n / bs))
  # Index of each response token inside its response, then its block.
  rel = jnp.cumsum(loss, axis=-1) - 1
  block = jnp.where(loss, rel // bs, -1).astype(jnp.int32)
  k = jnp.arange(nk, dtype=jnp.int32)[None, :, None]  # [1, K, 1]
  blk = block[:, None, :]  # [B, 1, L]
  in_k = (blk == k) & loss[:, None, :]
  future = (blk > k) & loss[:, None, :]
  k_p, k_m, k_f = jax.random.split(key, 3)
  shape = (nrows, nk, n)
  p = jax.random.uniform(k_p, shape, F32, p_low, p_high)
  chosen = (jax.random.uniform(k_m, shape, F32) < p) & in_k
  if min_one_masked:
    chosen = common.force_one(k_f, in_k, chosen)
  tok = jnp.broadcast_to(tokens[:, None, :], shape)
  noisy = jnp.where(chosen | future, jnp.int32(cfg.mask_token_id), tok)

  flat = lambda x: jnp.broadcast_to(x, shape[:2] + x.shape[2:]).reshape((nrows * nk,) + x.shape[2:])
  return {
      "tokens": flat(noisy),
      "positions": flat(positions[:, None, :]),
      "valid": flat(valid[:, None, :]),
      "targets": flat(tokens[:, None, :]),
      "masked": flat(chosen),
      "block": flat(block[:, None, :]),
      "k": flat(jnp.arange(nk, dtype=jnp.int32)[None, :]),
  }


def attention_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
  """Bidirectional attention among the row's real tokens ``[B·K, L, L]``."""
  return masks.bidirectional(batch["valid"])


def loss_fn(model, batch: Mapping[str, jax.Array], *, chunk_size: int = common.DEFAULT_CHUNK):
  """Mean over non-empty rows of the mean masked NLL; float32 ``(loss, metrics)``."""
  masked = batch["masked"]
  nll = common.token_nll(
      model,
      batch["tokens"],
      batch["positions"],
      attention_mask(batch),
      batch["targets"],
      chunk_size=chunk_size,
  )
  count = jnp.sum(masked, axis=-1, dtype=F32)
  per_row = common.safe_div(common.weighted_sum(nll, masked, axis=-1), count)
  has = (count > 0).astype(F32)
  loss = common.safe_div(jnp.sum(per_row * has), jnp.sum(has))
  metrics = common.masked_metrics(nll, masked, batch["block"] >= 0)
  metrics["loss"] = loss
  metrics["rows_used"] = jnp.sum(has)
  return loss, metrics


__all__ = ["attention_mask", "build_batch", "loss_fn"]
