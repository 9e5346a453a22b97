"""LLaDA / d1 masked-diffusion SFT (``sft_llada``).

Spec: docs/methods.md §SFT objectives (d1 ``SFT/sft_trainer.py``) and §5 (LLaDA objective).

Batch (``build_batch``): per row ``t ~ U(0, 1)``, ``p = (1 − ε)·t + ε`` with ε = 1e-3; every
response position (``loss_mask``: the answer, its EOS and — in the d1 layout built by
:func:`jdiff.sft.common.make_rows` with ``pad_in_loss=True`` — the EOS padding) is masked
independently with probability p. Prompt positions are never masked. Like LLaDA/d1 there is no
"at least one masked" guarantee by default (``min_one_masked=True`` adds SDAR's).

Attention: bidirectional over the row's real tokens (key padding masks left padding and any
right padding outside the loss).

Loss (``loss_fn``): ``Σ_{masked j} CE(f(x_t)_j, x_j) / p`` summed over the batch and divided by
the number of non-prompt positions in the batch, d1's ``B·L − #prompt tokens``. Decision: left
padding (TraceRL-style left-padded prompts) is not counted either — it is neither answer nor
prompt — so the normaliser is ``Σ_rows (L − #prompt − #left padding)``; with d1's layout (no
left padding, EOS padding in the loss) this is exactly d1's value. Right padding kept out of
the loss is still counted (it is a non-prompt position, as in d1's fixed ``B·L`` form).
The normaliser is per micro-batch: gradient accumulation averages micro-batch losses, as d1's
trainer does. Dream's logit shift is applied if the model has one (``config.shift_logits``).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jdiff.models import masks
from jdiff.sft import common

F32 = jnp.float32


def build_batch(
    rows: Mapping[str, jax.Array],
    key: jax.Array,
    cfg,
    *,
    eps: float = 1e-3,
    min_one_masked: bool = False,
) -> dict:
  """SFT rows -> a masked batch, all leaves ``[B, L]`` except ``norm`` ``[B]``.

  Keys: ``tokens`` (x_t), ``positions``, ``valid``, ``targets`` (x_0), ``masked``, ``t`` (the
  row's p broadcast over tokens), ``weight`` (1/p on masked tokens, else 0) and ``norm`` (the
  row's non-prompt, non-left-padding positions).
  """
  if not 0.0 <= eps < 1.0:
    raise ValueError(f"eps={eps} must be in [0, 1)")
  tokens, prompt, loss, valid, positions = common.unpack_rows(rows)
  nrows, n = tokens.shape
  k_t, k_m, k_f = jax.random.split(key, 3)
  t = jax.random.uniform(k_t, (nrows, 1), F32)
  p = jnp.broadcast_to((1.0 - eps) * t + eps, (nrows, n))
  masked = (jax.random.uniform(k_m, (nrows, n), F32) < p) & loss
  if min_one_masked:
    masked = common.force_one(k_f, loss, masked)
  started = jnp.cumsum(valid, axis=-1) > 0  # False on left padding
  return {
      "tokens": jnp.where(masked, jnp.int32(cfg.mask_token_id), tokens),
      "positions": positions,
      "valid": valid,
      "targets": tokens,
      "masked": masked,
      "t": p,
      "weight": jnp.where(masked, 1.0 / p, 0.0).astype(F32),
      "norm": jnp.sum(started & ~prompt, axis=-1).astype(F32),
  }


def attention_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
  """Bidirectional attention among the row's real tokens ``[B, L, L]``."""
  return masks.bidirectional(batch["valid"])


def loss_fn(model, batch: Mapping[str, jax.Array], *, chunk_size: int = common.DEFAULT_CHUNK):
  """``Σ_batch masked CE/p / Σ_batch norm``; float32 ``(loss, metrics)``."""
  nll = common.token_nll(
      model,
      batch["tokens"],
      batch["positions"],
      attention_mask(batch),
      batch["targets"],
      chunk_size=chunk_size,
  )
  loss = common.safe_div(common.weighted_sum(nll, batch["weight"]), jnp.sum(batch["norm"]))
  metrics = common.masked_metrics(nll, batch["masked"], batch["norm"])
  metrics["loss"] = loss
  return loss, metrics


__all__ = ["attention_mask", "build_batch", "loss_fn"]
