"""Boolean attention masks ``[B, Q, K]``: True where a query may attend to a key.

Every pattern the three families need lives here (docs/formats.md §Attention layouts, §Families–B4):
bidirectional with key padding, block-causal over a canvas with blocks at absolute
positions, the block-diffusion training layout ``x_t ⊕ x_0``, and attention over a KV
cache plus an active block. Query rows that would see nothing (padding queries) get a
self-edge so softmax never divides by zero; their outputs are meaningless by design.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

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


def block_causal(
    positions: jnp.ndarray, block_size: int, valid: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
  """Query in block a sees keys in blocks <= a (SDAR inference pattern)."""
  blk = block_ids(positions, block_size)
  valid = _valid_or_all(blk.shape, valid)
  mask = (blk[:, None, :] <= blk[:, :, None]) & valid[:, None, :] & valid[:, :, None]
  return with_self_edges(mask)


def block_diffusion(
    blocks: jnp.ndarray, noisy: jnp.ndarray, valid: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
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


def xt_x0(
    positions: jnp.ndarray, block_size: int, valid: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
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
    cache_visible = jnp.broadcast_to(
        cache_visible[:, None, :], (new_mask.shape[0], new_mask.shape[1], cache_visible.shape[-1])
    )
  return jnp.concatenate([cache_visible, jnp.asarray(new_mask, bool)], axis=-1)


def native(
    family_block_size: Optional[int], positions: jnp.ndarray, valid: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
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


class MaskSpec(NamedTuple):
  """A compact, per-token description of a self-attention mask (``[B, L]`` arrays).

  Every square pattern above is an instance of the :func:`block_diffusion` rule: bidirectional
  attention is one block of clean tokens, block-causal attention is clean tokens in blocks of
  ``position // block_size``. Keeping the three per-token arrays instead of the ``[B, L, L]``
  mask lets the chunked attention kernel evaluate the mask one tile at a time
  (``docs/design.md``, memory-efficient attention). :func:`dense` turns it into the bool mask.
  """

  blocks: jnp.ndarray  # int32 [B, L]: block id of each token
  noisy: jnp.ndarray  # bool [B, L]: True for tokens of the noisy copy x_t
  valid: jnp.ndarray  # bool [B, L]: False for padding

  @property
  def length(self) -> int:
    return self.blocks.shape[-1]


def spec_block_diffusion(blocks, noisy, valid=None) -> MaskSpec:
  """The spec of :func:`block_diffusion` (any mix of clean and noisy tokens)."""
  blocks = jnp.asarray(blocks, jnp.int32)
  return MaskSpec(blocks, jnp.asarray(noisy, bool), _valid_or_all(blocks.shape, valid))


def spec_bidirectional(valid) -> MaskSpec:
  """The spec of :func:`bidirectional`: one clean block."""
  valid = jnp.asarray(valid, bool)
  return MaskSpec(jnp.zeros(valid.shape, jnp.int32), jnp.zeros(valid.shape, bool), valid)


def spec_block_causal(positions, block_size: int, valid=None) -> MaskSpec:
  """The spec of :func:`block_causal`: clean tokens in absolute-position blocks."""
  blk = block_ids(positions, block_size).astype(jnp.int32)
  return MaskSpec(blk, jnp.zeros(blk.shape, bool), _valid_or_all(blk.shape, valid))


def spec_xt_x0(positions, block_size: int, valid=None) -> MaskSpec:
  """The spec of :func:`xt_x0` (length ``2n``)."""
  blk = block_ids(jnp.asarray(positions), block_size).astype(jnp.int32)
  noisy = jnp.concatenate([jnp.ones_like(blk, bool), jnp.zeros_like(blk, bool)], axis=-1)
  if valid is not None:
    valid = jnp.concatenate([valid, valid], axis=-1)
  return spec_block_diffusion(jnp.concatenate([blk, blk], axis=-1), noisy, valid)


def spec_native(family_block_size: Optional[int], positions, valid=None) -> MaskSpec:
  """The spec of :func:`native`."""
  positions = jnp.asarray(positions)
  if family_block_size:
    return spec_block_causal(positions, family_block_size, valid)
  return spec_bidirectional(_valid_or_all(positions.shape, valid))


def allowed(q_blocks, q_noisy, q_valid, q_index, k_blocks, k_noisy, k_valid, k_index):
  """The block-diffusion rule with self-edges for one tile: bool ``[..., Q, K]``.

  Inputs are per-token ``[..., Q]`` (queries) and ``[..., K]`` (keys); ``*_index`` are the
  tokens' row numbers, used for the self-edge that an invalid query (the only kind whose row
  is otherwise empty: a valid token always sees itself) gets, as :func:`with_self_edges`.
  """
  qb, kb = q_blocks[..., :, None], k_blocks[..., None, :]
  qn, kn = q_noisy[..., :, None], k_noisy[..., None, :]
  qv, kv = q_valid[..., :, None], k_valid[..., None, :]
  rule = (qn & kn & (qb == kb)) | (qn & ~kn & (kb < qb)) | (~qn & ~kn & (kb <= qb))
  return (rule & qv & kv) | (~qv & (q_index[..., :, None] == k_index[..., None, :]))


def dense(spec: MaskSpec) -> jnp.ndarray:
  """The ``[B, L, L]`` bool mask a spec describes (equal to :func:`block_diffusion`'s)."""
  idx = jnp.arange(spec.length)
  return allowed(spec.blocks, spec.noisy, spec.valid, idx, spec.blocks, spec.noisy, spec.valid, idx)
