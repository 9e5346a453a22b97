"""A KV cache as an explicit pytree, indexed by absolute position.

Slot ``p`` of row ``b`` holds the keys/values of the token at position ``p`` of that row,
so rows of a left-padded batch whose blocks start at different physical offsets share one
layout and no per-row write pointer is needed. ``valid`` marks the slots that hold a token.
(:meth:`KVCache.from_tokens` is the exception: a read-only cache in token order.)

Keys and values are stored heads-first with the slot axis last, ``[layers, B, kv_heads,
head_dim, S]``: a decoding step contracts a layer's slice as it lies (scores = q @ K, output
= p @ V^T, both over the slot axis) and rearranges only its few new tokens. On XLA's CPU
matmuls this layout runs the two products over a 96-288-slot cache 1.3-1.6x faster than the
token-major ``[B, S, kv_heads, head_dim]`` one, which a step also had to transpose.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from jdiff.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [layers, B, kv_heads, head_dim, S]
  v: jax.Array  # [layers, B, kv_heads, head_dim, S]
  valid: jax.Array  # bool [B, S]

  @classmethod
  def init(
      cls, config: ModelConfig, batch: int, size: int, dtype: Optional[jnp.dtype] = None
  ) -> "KVCache":
    dtype = jnp.dtype(config.dtype if dtype is None else dtype)
    shape = (config.num_layers, batch, config.num_kv_heads, config.head_dim, size)
    return cls(
        k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, size), bool)
    )

  @classmethod
  def from_tokens(cls, new_k: jax.Array, new_v: jax.Array, valid: jax.Array) -> "KVCache":
    """A cache whose slot i holds token i of per-layer ``new_k/new_v`` ``[layers, B, T, kv,
    hd]`` (valid where ``valid`` ``[B, T]``). Slots follow the tokens, not their positions:
    only for caches that are read afterwards, never written by position."""
    order = (0, 1, 3, 4, 2)
    return cls(k=new_k.transpose(order), v=new_v.transpose(order), valid=jnp.asarray(valid, bool))

  def slots(self, start: int, end: int) -> "KVCache":
    """Slots ``[start, end)`` (static) as a cache of their own."""
    return self.replace(
        k=self.k[..., start:end], v=self.v[..., start:end], valid=self.valid[:, start:end]
    )

  def concat(self, other: "KVCache") -> "KVCache":
    """This cache's slots followed by ``other``'s."""
    cat = lambda a, b: jnp.concatenate([a, b], axis=-1)  # noqa: E731 (slots are last)
    return self.replace(
        k=cat(self.k, other.k), v=cat(self.v, other.v), valid=cat(self.valid, other.valid)
    )

  @property
  def size(self) -> int:
    return self.k.shape[4]

  def store(
      self,
      new_k: jax.Array,
      new_v: jax.Array,
      positions: jax.Array,
      write: Optional[jax.Array] = None,
  ) -> "KVCache":
    """Writes per-layer ``new_k/new_v`` ``[layers, B, Q, kv, hd]`` at slots ``positions``.

    Tokens with ``write`` False (e.g. left padding) are dropped; so are positions past the
    end of the cache (callers validate sizes up front).
    """
    positions = jnp.asarray(positions, jnp.int32)
    if write is None:
      write = jnp.ones(positions.shape, bool)
    slots = jnp.where(write, positions, self.size)  # out of range -> dropped
    rows = jnp.arange(positions.shape[0])[:, None]
    # Advanced indices split by slices put their dims first: values go as [B, Q, layers, kv, hd].
    order = (1, 2, 0, 3, 4)
    k = self.k.at[:, rows, :, :, slots].set(
        new_k.astype(self.k.dtype).transpose(order), mode="drop"
    )
    v = self.v.at[:, rows, :, :, slots].set(
        new_v.astype(self.v.dtype).transpose(order), mode="drop"
    )
    valid = self.valid.at[rows, slots].set(True, mode="drop")
    return self.replace(k=k, v=v, valid=valid)

  def keep(self, keep: jax.Array) -> "KVCache":
    """Marks only slots where ``keep`` (bool ``[B, S]``) is True as valid."""
    return self.replace(valid=self.valid & keep)
