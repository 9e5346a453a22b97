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


def _heads_major(q: jax.Array, kv: int) -> jax.Array:
  """``[B, T, H, hd]`` queries as ``[B, kv, g*T, hd]`` (g = H / kv query heads per KV head)."""
  b, t, h, hd = q.shape
  g = h // kv
  return q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)


def _from_heads_major(out: jax.Array, t: int) -> jax.Array:
  """``[B, kv, g*T, hd]`` attention outputs back to ``[B, T, H, hd]``."""
  b, kv, gt, hd = out.shape
  g = gt // t
  return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, kv * g, hd)


def _masked_scores(qh, kh, mask, g, keys_transposed=False):
  """Scaled scores ``[B, kv, g, T, S]`` with blocked pairs at float32's most negative value.
  ``kh``: ``[B, kv, S, hd]``, or ``[B, kv, hd, S]`` with ``keys_transposed``."""
  b, kv, gt, hd = qh.shape
  spec = "bkqd,bkds->bkqs" if keys_transposed else "bkqd,bksd->bkqs"
  scores = jnp.einsum(spec, qh, kh, preferred_element_type=F32)
  scores = scores.reshape(b, kv, g, gt // g, -1) * (hd**-0.5)
  return jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(F32).min)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention. ``q`` ``[B,T,H,hd]``, ``k/v`` ``[B,S,K,hd]``, ``mask`` bool ``[B,T,S]``.

  Blocked scores take float32's most negative value, as HF's additive masks do, so a row
  with no allowed key degrades to a uniform average instead of NaN.
  """
  b, t, h, hd = q.shape
  kv = k.shape[2]
  # Heads-major layouts make both contractions plain batched matmuls ([b, kv] batch dims),
  # which CPU and GPU backends run markedly faster than the 5-D einsum over [t, kv, g].
  qh = _heads_major(q, kv)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  scores = _masked_scores(qh, kh, mask, h // kv)
  # Softmax normalised after the value product: the division then runs over [.., hd] outputs
  # instead of the [.., S] probabilities (one pass less over the largest array; 5-12% of an
  # exact LLaDA step on one CPU core at the tiny size, gen 256).
  e = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
  denom = jnp.sum(e, axis=-1).reshape(b, kv, h // kv * t, 1)
  e = e.reshape(b, kv, h // kv * t, -1)
  out = jnp.einsum("bkqs,bksd->bkqd", e.astype(v.dtype), vh, preferred_element_type=F32) / denom
  return _from_heads_major(out, t).astype(q.dtype)


def attention_with_cache(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    mask: jax.Array,
) -> jax.Array:
  """:func:`attention` of new tokens over a heads-first cache followed by themselves.

  ``q`` ``[B,T,H,hd]``, ``k/v`` ``[B,T',K,hd]`` as in :func:`attention`; ``cache_k/cache_v``
  ``[B, K, hd, S]`` (a layer of :class:`KVCache`);
  ``mask`` ``[B, T, S + T']`` with the cache's slots first. The two key sets are never
  concatenated: one softmax spans both score blocks (shared max and normaliser) and the two
  value products are summed, so a step reads the cache in place instead of copying it.
  """
  b, t, h, hd = q.shape
  kv = k.shape[2]
  g = h // kv
  size = cache_k.shape[3]
  qh = _heads_major(q, kv)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  s_cache = _masked_scores(qh, cache_k, mask[..., :size], g, keys_transposed=True)
  s_new = _masked_scores(qh, kh, mask[..., size:], g)
  top = jnp.maximum(
      jnp.max(s_cache, axis=-1, keepdims=True), jnp.max(s_new, axis=-1, keepdims=True)
  )
  e_cache, e_new = jnp.exp(s_cache - top), jnp.exp(s_new - top)
  denom = jnp.sum(e_cache, axis=-1, keepdims=True) + jnp.sum(e_new, axis=-1, keepdims=True)
  p_cache = (e_cache / denom).reshape(b, kv, g * t, size).astype(v.dtype)
  p_new = (e_new / denom).reshape(b, kv, g * t, k.shape[1]).astype(v.dtype)
  out = jnp.einsum("bkqs,bkds->bkqd", p_cache, cache_v, preferred_element_type=F32) + jnp.einsum(
      "bkqs,bksd->bkqd", p_new, vh, preferred_element_type=F32
  )
  return _from_heads_major(out, t).astype(q.dtype)
