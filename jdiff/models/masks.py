"""Boolean attention masks ``[B, Q, K]``: True where a query may attend to a key.

Every pattern the three families need lives here (research/landscape.md §A3, §B2–B4):
bidirectional with key padding, block-causal over a canvas with blocks at absolute
positions, the block-diffusion training layout ``x_t ⊕ x_0``, and attention over a KV
cache plus an active block. Query rows that would see nothing (padding queries) get a
self-edge so softmax never divides by zero; their outputs are meaningless by design.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp


def _valid_or_all(tokens_shape, valid):
  if valid is None:
    return jnp.ones(tokens_shape, dtype=bool)
  return jnp.asarray(valid, dtype=bool)


def with_self_edges(mask: jnp.ndarray) -> jnp.ndarray:
  """Adds the diagonal to rows that attend to nothing (square masks only)."""
  q = mask.shape[-2]
  eye = jnp.eye(q, mask.shape[-1], dtype=bool)
  empty = ~jnp.any(mask, axis=-1, keepdims=True)
  return mask | (empty & eye)


def bidirectional(valid: jnp.ndarray) -> jnp.ndarray:
  """Full attention among non-padding tokens. ``valid``: bool ``[B, L]``."""
  valid = jnp.asarray(valid, dtype=bool)
  mask = valid[:, None, :] & valid[:, :, None]
  return with_self_edges(mask)


def block_ids(positions: jnp.ndarray, block_size: int) -> jnp.ndarray:
  """Blocks are anchored at absolute position 0: block = position // block_size."""
  return jnp.asarray(positions) // block_size


def block_causal(positions: jnp.ndarray, block_size: int,
                 valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Query in block a sees keys in blocks <= a (SDAR inference pattern)."""
  blk = block_ids(positions, block_size)
  valid = _valid_or_all(blk.shape, valid)
  mask = (blk[:, None, :] <= blk[:, :, None]) & valid[:, None, :] & valid[:, :, None]
  return with_self_edges(mask)


def block_diffusion(blocks: jnp.ndarray, noisy: jnp.ndarray,
                    valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """The block-diffusion training mask over any mix of clean and noisy tokens.

  ``blocks``: int ``[B, N]`` block id of each token; ``noisy``: bool ``[B, N]``, True for
  tokens of the noisy copy x_t. A query may attend to a key when
  - both are noisy and in the same block (block-diagonal M_BD),
  - the query is noisy, the key clean, and the key's block is strictly earlier (M_OBC),
  - both are clean and the key's block is not later (block-causal M_BC).
  Clean tokens never see noisy ones.
  """
  blocks = jnp.asarray(blocks)
  noisy = jnp.asarray(noisy, dtype=bool)
  valid = _valid_or_all(blocks.shape, valid)
  qb, kb = blocks[:, :, None], blocks[:, None, :]
  qn, kn = noisy[:, :, None], noisy[:, None, :]
  m_bd = qn & kn & (qb == kb)
  m_obc = qn & ~kn & (kb < qb)
  m_bc = ~qn & ~kn & (kb <= qb)
  mask = (m_bd | m_obc | m_bc) & valid[:, None, :] & valid[:, :, None]
  return with_self_edges(mask)


def xt_x0(positions: jnp.ndarray, block_size: int,
          valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """The ``x_t ⊕ x_0`` layout (length 2n) for a sequence with ``positions`` ``[B, n]``.

  Both halves reuse the same positions; returns ``[B, 2n, 2n]``. Feed the model positions
  ``concat([positions, positions], -1)``.
  """
  positions = jnp.asarray(positions)
  blk = block_ids(positions, block_size)
  blocks = jnp.concatenate([blk, blk], axis=-1)
  noisy = jnp.concatenate([jnp.ones_like(blk, bool), jnp.zeros_like(blk, bool)], axis=-1)
  if valid is not None:
    valid = jnp.concatenate([valid, valid], axis=-1)
  return block_diffusion(blocks, noisy, valid)


def with_cache(cache_visible: jnp.ndarray, new_mask: jnp.ndarray) -> jnp.ndarray:
  """Mask over ``[cache slots | new tokens]``: ``cache_visible`` bool ``[B, S]`` or
  ``[B, Q, S]`` says which cache slots each query sees; ``new_mask`` ``[B, Q, Q]``."""
  cache_visible = jnp.asarray(cache_visible, dtype=bool)
  if cache_visible.ndim == 2:
    cache_visible = jnp.broadcast_to(cache_visible[:, None, :],
                                     (new_mask.shape[0], new_mask.shape[1],
                                      cache_visible.shape[-1]))
  return jnp.concatenate([cache_visible, jnp.asarray(new_mask, bool)], axis=-1)


def native(family_block_size: Optional[int], positions: jnp.ndarray,
           valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """A family's inference pattern: block-causal when it has a block size, else bidirectional."""
  positions = jnp.asarray(positions)
  if family_block_size:
    return block_causal(positions, family_block_size, valid)
  return bidirectional(_valid_or_all(positions.shape, valid))


def to_additive(mask, dtype=jnp.float32):
  """Boolean mask -> additive ``[B, 1, Q, K]`` (0 allowed, finfo.min blocked), HF-style."""
  mask = jnp.asarray(mask, dtype=bool)
  neg = jnp.finfo(dtype).min
  return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(neg, dtype))[:, None]
