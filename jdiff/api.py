"""The public entry points: ``jdiff.from_pretrained`` and ``jdiff.forward``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff.checkpoint import from_pretrained, load_tokenizer  # noqa: F401  (re-exported)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, mask, positions):
  model = nnx.merge(graphdef, state)
  logits, _ = model(input_ids, positions, mask)
  return logits


def forward(model, input_ids, *, attention_mask=None, positions=None) -> jax.Array:
  """Float32 logits ``[B, L, V]``, raw as the HF model returns them.

  ``attention_mask``: bool ``[B, L, L]`` (True where a query may attend to a key), or a
  ``[B, L]`` key-padding mask; ``None`` means the family's inference pattern (bidirectional
  for llada/dream, block-causal at absolute positions for sdar). ``positions`` default to
  ``arange(L)``. Dream's logits are not re-aligned here.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
  b, l = input_ids.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  positions = jnp.asarray(positions, jnp.int32)
  if positions.shape != (b, l):
    raise ValueError(f"positions has shape {positions.shape}, expected {(b, l)}")
  if attention_mask is not None:
    attention_mask = jnp.asarray(attention_mask, bool)
    if attention_mask.shape not in ((b, l, l), (b, l)):
      raise ValueError(
          f"attention_mask has shape {attention_mask.shape}; expected " f"{(b, l, l)} or {(b, l)}"
      )
  graphdef, state = nnx.split(model)
  return _forward(graphdef, state, input_ids, attention_mask, positions)
