"""Per-token log-probabilities of chosen targets, without materialising ``[B, T, V]`` float32.

Every method's loss needs ``log softmax(h @ W)[target]`` (research/tracerl.md §5.5: read at
the noisy copy, no shift; d1_cjgrpo_dtrpo.md §2.2 / §3.3). With a 150k vocabulary the float32
logits of one micro-batch dwarf the activations, so :func:`token_logprobs_chunked` scans the
vocabulary in chunks with a running (online) log-sum-exp, and its custom VJP recomputes each
chunk's softmax in the backward pass: forward and backward each hold one ``[B, T, C]`` chunk.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

F32 = jnp.float32


def shift_for_dream(x: jax.Array) -> jax.Array:
  """Dream's logit alignment (``config.shift_logits``): output i predicts token i+1, so the
  prediction for position j is read from j-1; position 0 reuses itself.
  ``concat(x[:, :1], x[:, :-1])`` along T."""
  return jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)


def _chunks(w: jax.Array, chunk_size: int):
  """``[D, V]`` -> ``[n, D, C]`` (zero-padded) and the number of real columns."""
  d, v = w.shape
  c = max(1, min(int(chunk_size), v))
  n = -(-v // c)
  if n * c != v:
    w = jnp.pad(w, ((0, 0), (0, n * c - v)))
  return w.reshape(d, n, c).transpose(1, 0, 2), c


def _chunk_logits(h, wc, start, c, v):
  """float32 logits of one vocab chunk (padding columns -> -inf), as ``logits_from_hidden``."""
  z = jnp.einsum("btd,dc->btc", h, wc.astype(h.dtype), preferred_element_type=F32)
  col = start + jnp.arange(c)
  return jnp.where(col < v, z, -jnp.inf), col


def _forward(h, w, targets, chunk_size):
  v = w.shape[1]
  wch, c = _chunks(w, chunk_size)
  b, t = targets.shape
  init = (jnp.full((b, t), -jnp.inf, F32), jnp.zeros((b, t), F32), jnp.zeros((b, t), F32),
          jnp.zeros((b, t), F32))

  def step(carry, xs):
    m, s, sz, tgt = carry  # running max, Σexp(z-m), Σexp(z-m)·z, target logit
    wc, i = xs
    z, col = _chunk_logits(h, wc, i * c, c, v)
    m_new = jnp.maximum(m, jnp.max(z, axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[..., None])
    s = s * scale + jnp.sum(e, axis=-1)
    sz = sz * scale + jnp.sum(jnp.where(e > 0, e * z, 0.0), axis=-1)
    hit = col[None, None, :] == targets[..., None]
    tgt = tgt + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
    return (m_new, s, sz, tgt), None

  (m, s, sz, tgt), _ = jax.lax.scan(step, init, (wch, jnp.arange(wch.shape[0])))
  lse = m + jnp.log(s)
  mean_z = sz / s
  return tgt - lse, lse - mean_z, (lse, mean_z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _logp_entropy(h, w, targets, chunk_size):
  logp, ent, _ = _forward(h, w, targets, chunk_size)
  return logp, ent


def _fwd(h, w, targets, chunk_size):
  logp, ent, (lse, mean_z) = _forward(h, w, targets, chunk_size)
  return (logp, ent), (h, w, targets, lse, mean_z)


def _bwd(chunk_size, res, cts):
  h, w, targets, lse, mean_z = res
  g_lp, g_ent = (jnp.asarray(x, F32) for x in cts)
  v = w.shape[1]
  wch, c = _chunks(w, chunk_size)

  def step(dh, xs):
    wc, i = xs
    z, col = _chunk_logits(h, wc, i * c, c, v)
    p = jnp.exp(z - lse[..., None])  # 0 on padding columns
    onehot = (col[None, None, :] == targets[..., None]).astype(F32)
    # d logp / dz = onehot - p ;  d entropy / dz = -p (z - E_p[z])
    zc = jnp.where(p > 0, z - mean_z[..., None], 0.0)
    dz = g_lp[..., None] * (onehot - p) - g_ent[..., None] * p * zc
    dz_h = dz.astype(h.dtype)
    dh = dh + jnp.einsum("btc,dc->btd", dz_h, wc.astype(h.dtype), preferred_element_type=F32)
    dwc = jnp.einsum("btd,btc->dc", h, dz_h, preferred_element_type=F32)
    return dh, dwc

  dh, dw = jax.lax.scan(step, jnp.zeros(h.shape, F32), (wch, jnp.arange(wch.shape[0])))
  dw = dw.transpose(1, 0, 2).reshape(w.shape[0], -1)[:, :v]
  return dh.astype(h.dtype), dw.astype(w.dtype), None


_logp_entropy.defvjp(_fwd, _bwd)


def token_logprobs_chunked(hidden: jax.Array, head_weight: jax.Array, targets: jax.Array,
                           chunk_size: int = 8192, return_entropy: bool = False):
  """float32 ``log softmax(hidden @ head_weight)[targets]`` by vocab chunks.

  Args:
    hidden: ``[B, T, D]`` final (normalised) hidden states, any float dtype; the matmul is
      done as :meth:`DiffusionLM.logits_from_hidden` does it (weight cast to the hidden dtype,
      float32 accumulation).
    head_weight: ``[D, V]``.
    targets: ``[B, T]`` int token ids.
    chunk_size: vocabulary columns per chunk. V need not be a multiple, but then the weight
      is zero-padded (one extra weight-sized copy); prefer a divisor of V.
    return_entropy: also return the full-vocabulary entropy ``[B, T]``.

  Differentiable in ``hidden`` and ``head_weight`` (custom VJP; one chunk live at a time).
  """
  targets = jnp.asarray(targets, jnp.int32)
  if hidden.shape[:2] != targets.shape:
    raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} disagree on [B, T]")
  if head_weight.shape[0] != hidden.shape[-1]:
    raise ValueError(f"head_weight {head_weight.shape} does not match hidden dim "
                     f"{hidden.shape[-1]}")
  logp, ent = _logp_entropy(hidden, head_weight, targets, int(chunk_size))
  return (logp, ent) if return_entropy else logp


def model_token_logprobs(model, tokens: jax.Array, positions: Optional[jax.Array],
                         mask: Optional[jax.Array], targets: jax.Array,
                         chunk_size: int = 8192, return_entropy: bool = False):
  """Runs ``model.backbone`` and the chunked head: log p(targets) ``[B, T]`` float32.

  ``targets[:, j]`` is scored against the prediction *for position j*: for Dream
  (``config.shift_logits``) the hidden states are shifted with :func:`shift_for_dream` first.
  """
  hidden, _ = model.backbone(tokens, positions, mask)
  if getattr(model.config, "shift_logits", False):
    hidden = shift_for_dream(hidden)
  return token_logprobs_chunked(hidden, model.head_weight(), targets, chunk_size,
                                return_entropy=return_entropy)


__all__ = ["model_token_logprobs", "shift_for_dream", "token_logprobs_chunked"]
