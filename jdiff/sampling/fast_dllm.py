"""Fast-dLLM acceleration for LLaDA and other full-attention (bidirectional) dLLMs.

Spec: ``research/d1_cjgrpo_dtrpo.md`` §6 (NVlabs Fast-dLLM, arXiv 2505.22618). Two
training-free tricks, both **approximations** of the exact sampler in :mod:`llada`:

- **Block-wise KV cache.** Bidirectional K/V of every token change whenever any token is
  filled, so no cache is exact. Fast-dLLM refreshes it once per block and accepts the drift:
  - ``prefix``: at each block start a full forward over the canvas stores K/V for all
    positions (its logits serve that block's first step); the cache then keeps only positions
    before the block, and each later in-block step runs the suffix ``[block_start, end)``
    against it.
  - ``dual``: the same refresh also keeps the (still masked) suffix after the block; each later
    in-block step runs only the block's tokens against every cached slot except the block's
    own (the reference's "replace position"), whose fresh K/V come from the step itself.
- **Confidence-threshold parallel decoding.** Each step commits every eligible (masked,
  in-block) position whose confidence reaches ``threshold``, and always at least the most
  confident one; a block ends when it has no masks, so the step count is data-dependent and
  ``steps`` is ignored (at most ``block_length`` steps per block). In a batch, rows move to the
  next block together once every row's block is full (as Fast-dLLM's batched loop does); a
  row that finished early idles and does not count those steps in its step map.

Batch layout and shapes: the refresh stores K/V by absolute position (slot p = position p,
pads not written). The prefix suffix is run as a fixed window of ``gen_length`` tokens from
the block start, its tail past the canvas end padded and masked out, so one compiled loop
serves every block; the valid part computes exactly Fast-dLLM's suffix pass (the padding only
costs FLOPs). The refresh pass attends over ``[invalidated cache | canvas]``, which doubles
that pass's attention FLOPs but needs no second model entry point. CFG is not supported with
a cache, and both options need the uniform (equal-block) schedule.

These functions are the pieces :func:`jdiff.sampling.llada.sample` plugs into its loop when
``LLaDASamplerConfig.cache`` / ``threshold`` are set (both off by default). Because cached
steps see stale K/V, the log-probs recorded at those steps are *not* what a training forward
over the same state computes: recompute old log-probs for RL when the cache is on (d1's
authors also found Fast-dLLM unstable for online rollouts, §6.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff.models import masks as masks_lib
from jdiff.models.kv_cache import KVCache
from jdiff.sampling.common import F32, NEG_INF, select_top_n

CACHE_MODES = ("none", "prefix", "dual")


def threshold_select(confidence: jax.Array, eligible: jax.Array, threshold: float) -> jax.Array:
  """Commit mask of threshold decoding: every eligible position with confidence ≥ threshold,
  plus the most confident eligible one (ties → leftmost), so each row with a mask left makes
  progress. ``confidence`` is the ranking confidence p(x̂) (= the max probability when
  greedy), as in Fast-dLLM's code."""
  conf = jnp.where(eligible, confidence.astype(F32), NEG_INF)
  top1 = select_top_n(conf, eligible, jnp.ones(conf.shape[:1], jnp.int32))
  return eligible & ((conf >= threshold) | top1)


def cache_keep(mode: str, block_pos: jax.Array, block_length: int, size: int) -> jax.Array:
  """Cache slots kept after a refresh, bool ``[B, size]``; slot p holds position p.

  ``block_pos`` ``[B]`` is the position of the block's first token (completion positions are
  consecutive, so the block occupies ``[block_pos, block_pos + block_length)``).
  """
  slots = jnp.arange(size, dtype=jnp.int32)[None, :]
  start = block_pos[:, None]
  if mode == "prefix":
    return slots < start
  if mode == "dual":
    return (slots < start) | (slots >= start + block_length)
  raise ValueError(f"cache mode {mode!r} keeps no KV cache")


def refresh(model, canvas, positions, attn, valid, cache: KVCache, keep):
  """Full forward over the canvas that rebuilds the cache.

  Returns the hidden states ``[B, N, D]`` (exactly the no-cache forward's) and the cache
  holding every real token's K/V, then restricted to ``keep``. The old cache is invalidated
  first, so its slots are invisible during this pass (they only cost attention FLOPs).
  """
  cache = cache.keep(jnp.zeros_like(cache.valid))
  h, cache = model.backbone(canvas, positions, attn, cache, store=valid)
  return h, cache.keep(keep)


def prefix_hidden(model, canvas, positions, cache: KVCache, start, width: int, out: int):
  """Prefix-cache step: the suffix from physical index ``start`` against the cached prefix.

  The suffix ``[start, N)`` shrinks from block to block; to keep one static shape it is run
  as a window of ``width`` tokens (the completion length) whose slots past the canvas end are
  padding: invisible as keys, their queries discarded. The valid part is therefore exactly
  Fast-dLLM's suffix pass. Returns the hidden states of the first ``out`` tokens (the block).
  """
  n = canvas.shape[1]
  idx = start + jnp.arange(width, dtype=jnp.int32)
  in_range = jnp.broadcast_to(idx < n, (canvas.shape[0], width))
  idx = jnp.minimum(idx, n - 1)
  toks = jnp.take(canvas, idx, axis=1)
  pos = jnp.take(positions, idx, axis=1)
  mask = masks_lib.bidirectional(in_range)  # padding queries get a self-edge only
  h, _ = model.backbone(toks, pos, mask, cache)
  return h[:, :out]


def dual_hidden(model, canvas, positions, cache: KVCache, start, block_length: int):
  """Dual-cache step: only the block's tokens, against every cached slot but the block's own."""
  toks = jax.lax.dynamic_slice_in_dim(canvas, start, block_length, axis=1)
  pos = jax.lax.dynamic_slice_in_dim(positions, start, block_length, axis=1)
  mask = jnp.ones((canvas.shape[0], block_length, block_length), bool)
  h, _ = model.backbone(toks, pos, mask, cache)
  return h


def block_hidden(model, mode: str, first, canvas, positions, attn, valid, cache: KVCache,
                 start, block_length: int, width: int):
  """Hidden states ``[B, block_length, D]`` of the block at physical ``start`` under ``mode``.

  At a block's first step (``first``, traced bool) the cache is refreshed by a full forward;
  later steps use the cached variant. Both branches are compiled once inside the loop.
  """
  def full(cache):
    block_pos = jax.lax.dynamic_index_in_dim(positions, start, axis=1, keepdims=False)
    keep = cache_keep(mode, block_pos, block_length, cache.size)
    h, cache = refresh(model, canvas, positions, attn, valid, cache, keep)
    return jax.lax.dynamic_slice_in_dim(h, start, block_length, axis=1), cache

  def cached(cache):
    if mode == "prefix":
      h = prefix_hidden(model, canvas, positions, cache, start, width, block_length)
    else:
      h = dual_hidden(model, canvas, positions, cache, start, block_length)
    return h, cache

  return jax.lax.cond(first, full, cached, cache)
