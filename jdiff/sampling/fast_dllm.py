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
pads not written). The sampler unrolls its loop over blocks, so every block has static
shapes: the prefix cache has exactly the slots before the block and the suffix pass exactly
the tokens from the block on (no full-width padding, so each step costs what Fast-dLLM's
does); the refresh runs once per block outside the per-step ``while_loop``, whose carry then
holds no cache. The refresh pass attends over ``[empty cache | canvas]``, which adds the
cache's slots to that pass's attention FLOPs but needs no second model entry point. CFG is
not supported with a cache, and both options need the uniform (equal-block) schedule.

These functions are the pieces :func:`jdiff.sampling.llada.sample` plugs into its loop when
``LLaDASamplerConfig.cache`` / ``threshold`` are set (both off by default). Because cached
steps see stale K/V, the log-probs recorded at those steps are *not* what a training forward
over the same state computes: recompute old log-probs for RL when the cache is on (d1's
authors also found Fast-dLLM unstable for online rollouts, §6.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff.models.kv_cache import KVCache
from jdiff.sampling.common import F32, NEG_INF, argmax_first

CACHE_MODES = ("none", "prefix", "dual")


def threshold_select(confidence: jax.Array, eligible: jax.Array, threshold: float) -> jax.Array:
  """Commit mask of threshold decoding: every eligible position with confidence ≥ threshold,
  plus the most confident eligible one (ties → leftmost), so each row with a mask left makes
  progress. ``confidence`` is the ranking confidence p(x̂) (= the max probability when
  greedy), as in Fast-dLLM's code."""
  conf = jnp.where(eligible, confidence.astype(F32), NEG_INF)
  # The leftmost most confident eligible position: select_top_n's n = 1 pick, without its
  # two sorts (an ineligible argmax only happens when no position is eligible).
  top1 = jnp.arange(conf.shape[-1]) == argmax_first(conf)[:, None]
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


def refresh(model, mode: str, canvas, positions, attn, valid, start: int, block_length: int):
  """Full forward over the canvas that builds the block's cache.

  ``start`` (static) is the block's physical index. Returns the block's hidden states
  ``[B, block_length, D]`` (exactly the no-cache forward's) and the cache holding every real
  token's K/V, restricted to what ``mode`` keeps. The prefix cache has exactly ``start``
  slots (a position never exceeds its physical index, so the prefix fits and later tokens'
  writes are dropped), the dual cache one slot per canvas token. The cache is empty during
  this pass: its slots only cost attention FLOPs and no second model entry point is needed.
  """
  b, n = canvas.shape
  size = start if mode == "prefix" else n
  cache = KVCache.init(model.config, b, size)
  h, cache = model.backbone(canvas, positions, attn, cache, store=valid,
                            window=(start, block_length))
  keep = cache_keep(mode, positions[:, start], block_length, size)
  return h, cache.keep(keep)


def cached_hidden(model, mode: str, canvas, positions, cache: KVCache, start: int,
                  block_length: int):
  """Hidden states ``[B, block_length, D]`` of the block at static physical ``start`` from
  the cache: ``prefix`` runs the whole suffix ``[start, N)`` against the cached prefix (its
  width shrinks from block to block, each block has its own static shape), ``dual`` only the
  block's tokens against every cached slot but the block's own."""
  end = canvas.shape[1] if mode == "prefix" else start + block_length
  toks = jax.lax.slice_in_dim(canvas, start, end, axis=1)
  pos = jax.lax.slice_in_dim(positions, start, end, axis=1)
  mask = jnp.ones((canvas.shape[0], end - start, end - start), bool)  # completion: no padding
  h, _ = model.backbone(toks, pos, mask, cache, window=(0, block_length))
  return h
