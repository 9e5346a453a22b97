"""Per-token log-probabilities of chosen targets, without materialising ``[B, T, V]`` float32.

The one place hidden states become log-probs: every RL method's loss and every SFT objective
needs ``log softmax(h @ W)[target]`` (docs/methods.md). :func:`token_logprobs` picks the hidden
states that predict the scored positions (``start``, Dream's shift) *before* the head, so the
head never runs on prompt positions nobody scores. With a 150k vocabulary the float32 logits of
one micro-batch dwarf the activations, so :func:`token_logprobs_chunked` scans the vocabulary in
chunks with a running (online) log-sum-exp, and its custom VJP recomputes each chunk's softmax
in the backward pass: forward and backward each hold one ``[B, T, C]`` chunk.

Lives under ``jdiff.models`` (next to the head it applies) so that ``jdiff.rl`` and
``jdiff.sft`` both import it without importing each other.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

F32 = jnp.float32
DEFAULT_CHUNK = 8192


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
  init = (
      jnp.full((b, t), -jnp.inf, F32),
      jnp.zeros((b, t), F32),
      jnp.zeros((b, t), F32),
      jnp.zeros((b, t), F32),
  )

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


def token_logprobs_chunked(
    hidden: jax.Array,
    head_weight: jax.Array,
    targets: jax.Array,
    chunk_size: int = DEFAULT_CHUNK,
    return_entropy: bool = False,
):
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
    raise ValueError(
        f"head_weight {head_weight.shape} does not match hidden dim " f"{hidden.shape[-1]}"
    )
  logp, ent = _logp_entropy(hidden, head_weight, targets, int(chunk_size))
  return (logp, ent) if return_entropy else logp


def predicting_hidden(hidden: jax.Array, start: int, width: int, shift: bool) -> jax.Array:
  """The hidden states whose logits predict positions ``[start, start + width)``: ``[B, width, D]``.

  Unshifted models (LLaDA, SDAR) predict position j from output j. Dream (``shift=True``)
  predicts j from output j-1 and position 0 from itself, i.e. the rows
  ``shift_for_dream(hidden)[:, start:start + width]`` -- sliced before shifting so no
  full-length copy is made.
  """
  t = hidden.shape[1]
  if start < 0 or width < 0 or start + width > t:
    raise ValueError(f"positions [{start}, {start + width}) are outside the {t} hidden states")
  if not shift:
    return hidden[:, start : start + width]
  if start == 0:
    return shift_for_dream(hidden[:, :width])
  return hidden[:, start - 1 : start - 1 + width]


def token_logprobs(
    hidden: jax.Array,
    head_weight: jax.Array,
    targets: jax.Array,
    *,
    start: int = 0,
    shift: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    return_entropy: bool = False,
):
  """float32 log p(targets) ``[B, T']`` from hidden states ``[B, T, D]`` (``T' <= T``).

  Args:
    hidden: final (normalised) hidden states of the whole sequence.
    head_weight: ``[D, V]`` LM head.
    targets: ``[B, T']`` ids; ``targets[:, k]`` is the token at sequence position
      ``start + k`` and is scored against the prediction *for* that position.
    start: sequence position of ``targets[:, 0]`` (static int).
    shift: Dream's logit alignment (``config.shift_logits``), see :func:`predicting_hidden`.
    chunk_size, return_entropy: as :func:`token_logprobs_chunked`.
  """
  h = predicting_hidden(hidden, int(start), targets.shape[1], shift)
  return token_logprobs_chunked(h, head_weight, targets, chunk_size, return_entropy=return_entropy)


def model_token_logprobs(
    model,
    tokens: jax.Array,
    positions: Optional[jax.Array],
    mask: Optional[jax.Array],
    targets: jax.Array,
    chunk_size: int = DEFAULT_CHUNK,
    return_entropy: bool = False,
    *,
    start: int = 0,
):
  """Runs ``model.backbone`` and :func:`token_logprobs`: log p(targets) ``[B, T']`` float32.

  ``targets[:, k]`` is scored against the prediction for position ``start + k`` of ``tokens``
  (Dream's shift taken from ``model.config.shift_logits``); ``start=0`` with ``T' = T``
  scores every position.
  """
  hidden, _ = model.backbone(tokens, positions, mask)
  return token_logprobs(
      hidden,
      model.head_weight(),
      targets,
      start=start,
      shift=bool(getattr(model.config, "shift_logits", False)),
      chunk_size=chunk_size,
      return_entropy=return_entropy,
  )


__all__ = [
    "DEFAULT_CHUNK",
    "model_token_logprobs",
    "predicting_hidden",
    "shift_for_dream",
    "token_logprobs",
    "token_logprobs_chunked",
]
