"""Pure building blocks of the backbone: RMSNorm, rotary embeddings, attention.

Norms, rotary angles and softmax run in float32 whatever the compute dtype, as LLaDA
(``rope_full_precision``) and the Qwen RMSNorm do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """Variance in float32, normalised value cast back to the input dtype, then scaled."""
  x32 = x.astype(F32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (weight.astype(F32) * y.astype(x.dtype).astype(F32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Half-split ("rotate_half") rotary embedding. ``x``: ``[B, T, N, hd]``, positions ``[B, T]``."""
  hd = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=F32) / hd))
  angles = positions.astype(F32)[..., None] * inv_freq  # [B, T, hd/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(F32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention. ``q`` ``[B,T,H,hd]``, ``k/v`` ``[B,S,K,hd]``, ``mask`` bool ``[B,T,S]``.

  Blocked scores take float32's most negative value, as HF's additive masks do, so a row
  with no allowed key degrades to a uniform average instead of NaN.
  """
  b, t, h, hd = q.shape
  kv = k.shape[2]
  g = h // kv
  # Heads-major layouts make both contractions plain batched matmuls ([b, kv] batch dims),
  # which CPU and GPU backends run markedly faster than the 5-D einsum over [t, kv, g].
  qh = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  scores = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=F32)
  scores = scores.reshape(b, kv, g, t, -1) * (hd ** -0.5)
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(F32).min)
  probs = jax.nn.softmax(scores, axis=-1).reshape(b, kv, g * t, -1)
  out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), vh, preferred_element_type=F32)
  out = out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4)
  return out.reshape(b, t, h, hd).astype(q.dtype)
