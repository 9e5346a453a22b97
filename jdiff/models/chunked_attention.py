"""Memory-efficient self-attention: query and key tiles with an online softmax.

The same function as :func:`jdiff.models.layers.attention` with a square mask, computed one
``[chunk_q, chunk_k]`` tile at a time so that no ``[L, L]`` score, probability or mask
array exists, forward or backward (``docs/design.md``, memory-efficient attention):

- the mask comes as a :class:`~jdiff.models.masks.MaskSpec` (per-token arrays) and each
  tile's mask is evaluated from it;
- a tile that the mask excludes for every row of the batch is skipped by ``lax.cond`` on a
  precomputed :func:`tile_table` (the ``x_t ⊕ x_0`` layout and block-causal masks exclude
  about half of a long row's tiles);
- the gradient is a custom VJP that recomputes each tile's probabilities from the saved
  per-row log-sum-exp (the flash-attention backward), so reverse mode stores only the
  output and one float per query and head, not every tile's probabilities.

Scores and softmax run in float32 whatever the input dtype, as in the dense path.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from jdiff.models.masks import MaskSpec, allowed

F32 = jnp.float32
_NEG_INF = -jnp.inf


def _pad_to(x: jax.Array, size: int, axis: int, value=0) -> jax.Array:
  extra = size - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _token_tiles(spec: MaskSpec, padded: int, chunk: int):
  """Per-token arrays padded to ``padded`` (padding invalid) as ``[n, B, chunk]`` tiles."""
  b = spec.blocks.shape[0]
  arrays = (
      _pad_to(spec.blocks, padded, 1),
      _pad_to(spec.noisy, padded, 1, False),
      _pad_to(spec.valid, padded, 1, False),
      jnp.broadcast_to(jnp.arange(padded, dtype=jnp.int32), (b, padded)),
  )
  return tuple(a.reshape(b, padded // chunk, chunk).swapaxes(0, 1) for a in arrays)


def _tile_mask(qtok, ktok) -> jax.Array:
  return allowed(*qtok, *ktok)  # [B, cq, ck]


def _layout(q, k, v, spec, chunk_q, chunk_k):
  """Queries ``[nq, B, kv, g, cq, hd]``, keys/values ``[nk, B, kv, ck, hd]`` and token tiles."""
  b, t, h, hd = q.shape
  kvh = k.shape[2]
  g = h // kvh
  tq, tk = -(-t // chunk_q) * chunk_q, -(-t // chunk_k) * chunk_k
  qc = _pad_to(q, tq, 1).reshape(b, tq // chunk_q, chunk_q, kvh, g, hd).transpose(1, 0, 3, 4, 2, 5)
  kc = _pad_to(k, tk, 1).reshape(b, tk // chunk_k, chunk_k, kvh, hd).transpose(1, 0, 3, 2, 4)
  vc = _pad_to(v, tk, 1).reshape(b, tk // chunk_k, chunk_k, kvh, hd).transpose(1, 0, 3, 2, 4)
  return qc, kc, vc, _token_tiles(spec, tq, chunk_q), _token_tiles(spec, tk, chunk_k)


def _from_tiles(x: jax.Array, t: int) -> jax.Array:
  """``[nq, B, kv, g, cq, hd]`` back to ``[B, T, H, hd]``."""
  nq, b, kvh, g, cq, hd = x.shape
  return x.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * cq, kvh * g, hd)[:, :t]


def _scores(qi, kj, mask):
  s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=F32)
  s = s * (qi.shape[-1] ** -0.5)
  return jnp.where(mask[:, None, None], s, _NEG_INF)


def _forward(q, k, v, spec, needed, chunk_q, chunk_k):
  """Outputs ``[B, T, H, hd]`` and the per-row log-sum-exp ``[nq, B, kv, g, cq]``."""
  qc, kc, vc, qtok, ktok = _layout(q, k, v, spec, chunk_q, chunk_k)

  def q_step(_, xs):
    qi, qt, need_i = xs
    stats = qi.shape[:-1]

    def k_step(carry, ys):
      kj, vj, kt, need = ys
      mask = _tile_mask(qt, kt)

      def update(carry):
        m, l, acc = carry
        s = _scores(qi, kj, mask)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        # A row with nothing allowed so far keeps max -inf; shift it by 0 instead (exp -> 0).
        safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
        p = jnp.exp(s - safe[..., None])
        corr = jnp.exp(m - safe)
        l = l * corr + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=F32)
        return m_new, l, acc * corr[..., None] + pv

      return jax.lax.cond(need, update, lambda c: c, carry), None

    init = (jnp.full(stats, _NEG_INF, F32), jnp.zeros(stats, F32), jnp.zeros(qi.shape, F32))
    (m, l, acc), _ = jax.lax.scan(k_step, init, (kc, vc, ktok, need_i))
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    # Rows that saw nothing (only padding rows past the end) get +inf: exp(s - lse) = 0.
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)
    return None, (out.astype(q.dtype), lse)

  _, (out, lse) = jax.lax.scan(q_step, None, (qc, qtok, needed))
  return _from_tiles(out, q.shape[1]), lse


def _backward(q, k, v, spec, needed, out, lse, dout, chunk_q, chunk_k):
  """Gradients wrt ``q, k, v`` from recomputed tile probabilities."""
  t = q.shape[1]
  qc, kc, vc, qtok, ktok = _layout(q, k, v, spec, chunk_q, chunk_k)
  doc, oc = (_layout(x, k, v, spec, chunk_q, chunk_k)[0] for x in (dout, out))
  delta = jnp.sum(doc.astype(F32) * oc.astype(F32), axis=-1)  # [nq, B, kv, g, cq]
  scale = q.shape[-1] ** -0.5
  nk = kc.shape[0]

  def q_step(dkv, xs):
    qi, doi, lse_i, delta_i, qt, need_i = xs
    qi32, doi32 = qi.astype(F32), doi.astype(F32)

    def k_step(carry, ys):
      j, kj, vj, kt, need = ys
      mask = _tile_mask(qt, kt)

      def update(carry):
        dq, dk, dv = carry
        p = jnp.exp(_scores(qi, kj, mask) - lse_i[..., None])
        dv = dv.at[j].add(jnp.einsum("bkgqs,bkgqd->bksd", p, doi32))
        dp = jnp.einsum("bkgqd,bksd->bkgqs", doi32, vj.astype(F32))
        ds = p * (dp - delta_i[..., None]) * scale
        dq = dq + jnp.einsum("bkgqs,bksd->bkgqd", ds, kj.astype(F32))
        dk = dk.at[j].add(jnp.einsum("bkgqs,bkgqd->bksd", ds, qi32))
        return dq, dk, dv

      return jax.lax.cond(need, update, lambda c: c, carry), None

    (dq, dk, dv), _ = jax.lax.scan(
        k_step, (jnp.zeros(qi.shape, F32), *dkv), (jnp.arange(nk), kc, vc, ktok, need_i)
    )
    return (dk, dv), dq

  zeros = jnp.zeros(kc.shape, F32)
  (dk, dv), dq = jax.lax.scan(q_step, (zeros, zeros), (qc, doc, lse, delta, qtok, needed))
  b, s, kvh, hd = k.shape
  back = lambda x: x.transpose(1, 0, 3, 2, 4).reshape(b, -1, kvh, hd)[:, :s]  # noqa: E731
  return _from_tiles(dq, t).astype(q.dtype), back(dk).astype(k.dtype), back(dv).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, spec, needed, chunk_q, chunk_k):
  return _forward(q, k, v, spec, needed, chunk_q, chunk_k)[0]


def _attention_fwd(q, k, v, spec, needed, chunk_q, chunk_k):
  out, lse = _forward(q, k, v, spec, needed, chunk_q, chunk_k)
  return out, (q, k, v, spec, needed, out, lse)


def _attention_bwd(chunk_q, chunk_k, res, dout):
  q, k, v, spec, needed, out, lse = res
  dq, dk, dv = _backward(q, k, v, spec, needed, out, lse, dout, chunk_q, chunk_k)
  return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def chunk_sizes(length: int, chunk_q: int, chunk_k: int) -> Tuple[int, int]:
  """Tile sizes clipped to the sequence length (a short sequence is one tile)."""
  return min(int(chunk_q), length), min(int(chunk_k), length)


def tile_table(spec: MaskSpec, chunk_q: int = 512, chunk_k: int = 512) -> jax.Array:
  """bool ``[nq, nk]``: whether any row of the batch has an allowed pair in tile (i, j).

  Computed one query tile at a time (``[B, chunk_q, L]`` bools each). The table is shared
  by every layer of a forward: computing it once keeps the reduction over a sharded batch
  (a cross-device all-reduce) out of the layers' tile loops.
  """
  t = spec.length
  cq, ck = chunk_sizes(t, chunk_q, chunk_k)
  tq, tk = -(-t // cq) * cq, -(-t // ck) * ck
  keys = tuple(
      a.swapaxes(0, 1).reshape(spec.blocks.shape[0], tk) for a in _token_tiles(spec, tk, ck)
  )

  def row(qt):
    hit = jnp.any(_tile_mask(qt, keys), axis=(0, 1))  # [tk]
    return jnp.any(hit.reshape(tk // ck, ck), axis=-1)

  return jax.lax.map(row, _token_tiles(spec, tq, cq))


class TiledMask(NamedTuple):
  """A spec with its :func:`tile_table`, built once per forward and shared by the layers."""

  spec: MaskSpec
  needed: jax.Array
  chunk_q: int
  chunk_k: int


def tiled_mask(spec: MaskSpec, chunk_q: int = 512, chunk_k: int = 512) -> TiledMask:
  cq, ck = chunk_sizes(spec.length, chunk_q, chunk_k)
  return TiledMask(spec, tile_table(spec, cq, ck), cq, ck)


def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    chunk_q: int = 512,
    chunk_k: int = 512,
    needed: Optional[jax.Array] = None,
) -> jax.Array:
  """Grouped-query self-attention under ``spec``, tile by tile.

  ``q`` ``[B, L, H, hd]``, ``k/v`` ``[B, L, K, hd]``; equals
  ``attention(q, k, v, masks.dense(spec))``. Chunk sizes need not divide ``L`` (the last
  tile is padded with invalid tokens). ``needed``: :func:`tile_table` of the same spec and
  chunk sizes, when the caller shares one across layers; computed here otherwise.
  """
  b, t = q.shape[:2]
  if k.shape[1] != t or spec.blocks.shape != (b, t):
    raise ValueError(
        f"chunked attention is self-attention: q {q.shape}, k {k.shape} and mask "
        f"spec {spec.blocks.shape} must share [B, L] = [{b}, {t}]"
    )
  if int(chunk_q) <= 0 or int(chunk_k) <= 0:
    raise ValueError(f"attention chunk sizes must be positive, got {chunk_q}, {chunk_k}")
  cq, ck = chunk_sizes(t, chunk_q, chunk_k)
  if needed is None:
    needed = tile_table(spec, cq, ck)
  shape = (-(-t // cq), -(-t // ck))
  if needed.shape != shape:
    raise ValueError(
        f"tile table has shape {needed.shape}; expected {shape} for L={t} in "
        f"tiles of {cq} x {ck}"
    )
  return _attention(q, k, v, spec, needed, cq, ck)
