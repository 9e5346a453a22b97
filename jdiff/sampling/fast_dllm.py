"""Fast-dLLM acceleration for LLaDA and other full-attention (bidirectional) dLLMs.

Spec: ``docs/methods.md`` §6 (NVlabs Fast-dLLM, arXiv 2505.22618). Two
training-free tricks, both **approximations** of the exact sampler in :mod:`llada`:

- **Block-wise KV cache.** Bidirectional K/V of every token change whenever any token is
  filled, so no cache is exact. Fast-dLLM refreshes it once per block and accepts the drift:
  - ``prefix``: at each block start a full forward over the canvas stores K/V for all
    positions (its logits serve that block's first step); the cache then keeps only positions
    before the block, and each later in-block step runs the suffix ``[block_start, end)``
    against it.
  - ``dual``: the same refresh also keeps the (still masked) suffix after the block; each later
    in-block step runs only the block's tokens against every cached slot except the block's
    own (the reference's "replace position"), whose fresh K/V come from the step itself; the
    block's slots are cut out of the cache rather than masked, so no step attends over them.
- **Confidence-threshold parallel decoding.** Each step commits every eligible (masked,
  in-block) position whose confidence reaches ``threshold``, and always at least the most
  confident one; a block ends when it has no masks, so the step count is data-dependent and
  ``steps`` is ignored (at most ``block_length`` steps per block). In a batch, rows move to the
  next block together once every row's block is full (as Fast-dLLM's batched loop does); a
  row that finished early idles and does not count those steps in its step map (on a data
  mesh the rows of a shard move together, see :mod:`llada`; results are the same;
  ``rows_per_loop`` decodes groups of rows in separate loops, so a row waits only for its
  group).

Batch layout and shapes: the refresh is a plain forward over the canvas whose K/V become the
cache in canvas order (slot i = canvas token i, each rotated at its own position; pads are
invalid slots), so building it costs a transpose, not a scatter, and the slots a mode keeps
are static ranges. The sampler unrolls its loop over blocks, so every block has static
shapes: the prefix cache has exactly the slots before the block and the suffix pass exactly
the tokens from the block on (no full-width padding, so each step costs what Fast-dLLM's
does); the refresh runs once per block outside the per-step ``while_loop``, whose carry then
holds no cache. CFG is not supported with a cache, and both options need the uniform
(equal-block) schedule.

These functions are the pieces :func:`jdiff.sampling.llada.sample` plugs into its loop when
``LLaDASamplerConfig.cache`` / ``threshold`` are set (both off by default). Because cached
steps see stale K/V, the log-probs recorded at those steps are *not* what a training forward
over the same state computes: recompute old log-probs for RL when the cache is on (d1's
authors also found Fast-dLLM unstable for online rollouts, §6.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def refresh(model, mode: str, canvas, positions, attn, valid, start: int, block_length: int):
  """Full forward over the canvas that builds the block's cache.

  ``start`` (static) is the block's physical index. Returns the block's hidden states
  ``[B, block_length, D]`` (exactly the no-cache forward's) and the K/V of the canvas tokens
  ``mode`` keeps, in canvas order (pads are invalid slots): ``prefix`` the ``start`` tokens
  before the block, ``dual`` every token but the block's own (whose fresh K/V each cached
  step computes itself).
  """
  h, cache = model.backbone(canvas, positions, attn, store=valid, window=(start, block_length))
  if mode == "prefix":
    return h, cache.slots(0, start)
  if mode == "dual":
    return h, cache.slots(0, start).concat(cache.slots(start + block_length, canvas.shape[1]))
  raise ValueError(f"cache mode {mode!r} keeps no KV cache")


def cached_hidden(model, mode: str, canvas, positions, cache, start: int, block_length: int):
  """Hidden states ``[B, block_length, D]`` of the block at static physical ``start`` from
  the cache: ``prefix`` runs the whole suffix ``[start, N)`` against the cached prefix (its
  width shrinks from block to block, each block has its own static shape), ``dual`` only the
  block's tokens against the cached prefix and suffix."""
  end = canvas.shape[1] if mode == "prefix" else start + block_length
  toks = jax.lax.slice_in_dim(canvas, start, end, axis=1)
  pos = jax.lax.slice_in_dim(positions, start, end, axis=1)
  mask = jnp.ones((canvas.shape[0], end - start, end - start), bool)  # completion: no padding
  h, _ = model.backbone(toks, pos, mask, cache, window=(0, block_length))
  return h
