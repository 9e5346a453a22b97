"""Block-diffusion SFT for SDAR/TraDo (``sft_block``): the vectorised x_t ⊕ x_0 objective.

Spec: docs/formats.md §Attention layouts (BD3-LM vectorised training; SDAR ``prepare_for_bd_training``)
and docs/methods.md §SFT objectives (SDAR's own training; TraceRL ``sft_sdar.py`` ``method: semi-ar``).

Batch (``build_batch``):
- the model input is ``x_t ⊕ x_0`` (length 2n) with the positions repeated, so both copies
  share RoPE positions;
- blocks are ``position // B``, anchored at absolute positions (docs/design.md §Decisions where the references are open or buggy): the
  prompt's last partial block and the response's first tokens share a block. The x_t half covers
  the prompt too, but prompt tokens are never masked — in that shared block they are visible
  in-block context, as the sampler sees them;
- noise ``"t"``: one t per block per row (BD3-LM, ``t_per="block"``) or per row (SDAR,
  ``t_per="sequence"``), ``u ~ U(0, 1)``, ``t = t_min + (t_max − t_min)·u`` (the clipped
  window; with the defaults this is SDAR's ``p = (1−1e-3)·t + 1e-3``). Each response token
  (``loss_mask``) of x_t is masked with its block's t;
- noise ``"uniform_0.1_0.9"``: TraceRL's semi-AR SFT for block models — every response token
  gets its own ``p ~ U(0.1, 0.9)``; use it with ``weighting="none"``;
- at least one token per row is masked (SDAR's loop), forced uniformly among the response.

Attention (:func:`attention_mask`): :func:`jdiff.models.masks.block_diffusion` — x_t block
diagonal, x_t → x_0 strictly earlier blocks, x_0 block-causal; padding keys masked.

Loss (``loss_fn``): per row ``Σ_{masked j} w_j · CE(x_t-half logits at j, x_0[j]) / #response
tokens`` with ``w_j = 1/t_j`` (``weighting="inverse_t"``, the NELBO weight) or 1 (``"none"``),
then the mean over rows. Same-position targets, no shift (SDAR). With ``"none"`` and EOS
padding in the loss, ``#response tokens`` is TraceRL's padded response width L1.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jdiff.models import masks
from jdiff.sft import common

F32 = jnp.float32
T_PER = ("block", "sequence")
NOISES = ("t", "uniform_0.1_0.9")
WEIGHTINGS = ("inverse_t", "none")


def build_batch(
    rows: Mapping[str, jax.Array],
    key: jax.Array,
    cfg,
    *,
    t_per: str = "block",
    noise: str = "t",
    weighting: str = "inverse_t",
    t_min: float = 1e-3,
    t_max: float = 1.0,
    block_size=None,
    min_one_masked: bool = True,
) -> dict:
  """SFT rows (see :mod:`jdiff.sft.common`) -> an x_t ⊕ x_0 batch, all leaves ``[B, ...]``.

  ``cfg``: the model config (``mask_token_id``, ``block_size``). Options are static.
  Keys: ``tokens``/``positions``/``blocks``/``valid`` ``[B, 2n]`` (model input), and over the
  x_t half ``[B, n]``: ``targets`` (x_0), ``masked``, ``t`` (the masking probability of each
  token), ``weight`` (``w_j`` on masked tokens, 0 elsewhere); ``norm`` ``[B]`` = #response tokens.
  """
  if t_per not in T_PER:
    raise ValueError(f"t_per={t_per!r}; expected one of {T_PER}")
  if noise not in NOISES:
    raise ValueError(f"noise={noise!r}; expected one of {NOISES}")
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting={weighting!r}; expected one of {WEIGHTINGS}")
  if not 0.0 < t_min <= t_max <= 1.0:
    raise ValueError(f"need 0 < t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
  bs = int(block_size or cfg.block_size or 0)
  if bs <= 0:
    raise ValueError("sft_block needs a block size (cfg.block_size or block_size=...)")
  tokens, prompt, loss, valid, positions = common.unpack_rows(rows)
  nrows, n = tokens.shape
  blk = masks.block_ids(positions, bs).astype(jnp.int32)
  k_t, k_m, k_f = jax.random.split(key, 3)

  if noise == "t":
    if t_per == "block":
      # Index blocks from the row's first real block so any position offset fits the table;
      # tokens of one block always read the same entry.
      first = jnp.min(jnp.where(valid, blk, jnp.iinfo(jnp.int32).max), axis=-1, keepdims=True)
      nblk = n // bs + 2
      idx = jnp.clip(blk - first, 0, nblk - 1)
      u = jnp.take_along_axis(jax.random.uniform(k_t, (nrows, nblk), F32), idx, axis=-1)
    else:
      u = jnp.broadcast_to(jax.random.uniform(k_t, (nrows, 1), F32), (nrows, n))
    t = t_min + (t_max - t_min) * u
  else:
    t = jax.random.uniform(k_t, (nrows, n), F32, 0.1, 0.9)

  masked = (jax.random.uniform(k_m, (nrows, n), F32) < t) & loss
  if min_one_masked:
    masked = common.force_one(k_f, loss, masked)
  w = 1.0 / t if weighting == "inverse_t" else jnp.ones_like(t)
  x_t = jnp.where(masked, jnp.int32(cfg.mask_token_id), tokens)

  cat = lambda a, b: jnp.concatenate([a, b], axis=-1)
  return {
      "tokens": cat(x_t, tokens),
      "positions": cat(positions, positions),
      "blocks": cat(blk, blk),
      "valid": cat(valid, valid),
      "targets": tokens,
      "masked": masked,
      "t": t.astype(F32),
      "weight": jnp.where(masked, w, 0.0).astype(F32),
      "norm": jnp.sum(loss, axis=-1).astype(F32),
  }


def attention_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
  """``[B, 2n, 2n]``: the first n tokens are the noisy copy (landscape.md §A3 mask rules)."""
  blocks = batch["blocks"]
  n2 = blocks.shape[-1]
  noisy = jnp.broadcast_to(jnp.arange(n2) < n2 // 2, blocks.shape)
  return masks.block_diffusion(blocks, noisy, batch["valid"])


def loss_fn(model, batch: Mapping[str, jax.Array], *, chunk_size: int = common.DEFAULT_CHUNK):
  """Mean over rows of ``Σ w_j·CE_j / #response tokens``; float32 ``(loss, metrics)``."""
  targets = batch["targets"]
  nll = common.token_nll(
      model,
      batch["tokens"],
      batch["positions"],
      attention_mask(batch),
      targets,
      chunk_size=chunk_size,
  )
  per_row = common.safe_div(common.weighted_sum(nll, batch["weight"], axis=-1), batch["norm"])
  loss = jnp.mean(per_row)
  metrics = common.masked_metrics(nll, batch["masked"], batch["norm"])
  metrics["loss"] = loss
  return loss, metrics


__all__ = ["attention_mask", "build_batch", "loss_fn"]
