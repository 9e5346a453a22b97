"""Pieces every SFT objective shares: the row format, per-token NLL, masking helpers.

**Rows** (the input of every ``build_batch``) are a dict of ``[B, L]`` arrays:

- ``tokens`` int: ``prompt | response | right padding`` (optionally left-padded prompts);
- ``prompt_mask`` bool: prompt tokens — clean, attended, never masked, never scored;
- ``loss_mask`` bool: the response tokens an objective noises and scores, the terminating EOS
  included (and the EOS padding too in the LLaDA/d1 layout, docs/methods.md §SFT objectives);
- ``positions`` int (optional): RoPE positions, by default real tokens counted from 0 (so left
  padding does not shift them and SDAR blocks stay anchored at absolute positions, docs/design.md
  "Decisions").

Tokens in neither mask are padding: they are not attended (key padding), noised or scored.
:func:`make_rows` builds this from token-id lists.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.models.logprobs import DEFAULT_CHUNK, model_token_logprobs

F32 = jnp.float32


def make_rows(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    length: int,
    *,
    pad_id: int,
    eos_id: Optional[int] = None,
    pad_in_loss: bool = True,
    prompt_width: Optional[int] = None,
) -> dict:
  """Token-id lists -> SFT rows (numpy, static ``[B, length]``).

  Args:
    prompts, responses: one list of ids per sample.
    length: row width L.
    pad_id: right-padding id (LLaDA/SDAR/Dream pad with EOS).
    eos_id: appended to a response that does not already end with it.
    pad_in_loss: right padding after the response is part of ``loss_mask`` (d1/LLaDA: "this is
      how LLaDA learns to emit EOS runs"); otherwise it is padding.
    prompt_width: left-pad every prompt to this width (the TraceRL layout
      ``[left-padded prompt L0 | response L1]``); ``None`` puts each response right after its
      prompt.
  """
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  b = len(prompts)
  tokens = np.full((b, length), pad_id, np.int32)
  prompt_mask = np.zeros((b, length), bool)
  loss_mask = np.zeros((b, length), bool)
  positions = np.zeros((b, length), np.int32)
  for i, (p, r) in enumerate(zip(prompts, responses)):
    p, r = list(p), list(r)
    if eos_id is not None and (not r or r[-1] != eos_id):
      r.append(eos_id)
    start = 0 if prompt_width is None else prompt_width - len(p)
    if start < 0:
      raise ValueError(f"prompt {i} has {len(p)} tokens > prompt_width={prompt_width}")
    end = start + len(p) + len(r)
    if end > length:
      raise ValueError(f"sample {i} needs {end} tokens > length={length}")
    tokens[i, start : start + len(p)] = p
    tokens[i, start + len(p) : end] = r
    prompt_mask[i, start : start + len(p)] = True
    loss_mask[i, start + len(p) : (length if pad_in_loss else end)] = True
    positions[i, start:] = np.arange(length - start)
  return {
      "tokens": tokens,
      "prompt_mask": prompt_mask,
      "loss_mask": loss_mask,
      "positions": positions,
  }


def unpack_rows(rows: Mapping[str, jax.Array]):
  """``(tokens, prompt_mask, loss_mask, valid, positions)`` as jnp arrays, defaults filled."""
  tokens = jnp.asarray(rows["tokens"], jnp.int32)
  prompt = jnp.asarray(rows["prompt_mask"], bool)
  loss = jnp.asarray(rows["loss_mask"], bool) & ~prompt
  valid = prompt | loss
  if rows.get("positions") is not None:
    positions = jnp.asarray(rows["positions"], jnp.int32)
  else:
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0).astype(jnp.int32)
  return tokens, prompt, loss, valid, positions


def force_one(key: jax.Array, candidates: jax.Array, chosen: jax.Array) -> jax.Array:
  """Adds one uniformly drawn candidate to every row (last axis) that has candidates but none
  chosen — SDAR's "at least one masked token" guarantee, without a resampling loop."""
  score = jnp.where(candidates, jax.random.uniform(key, candidates.shape), -1.0)
  pick = jax.nn.one_hot(jnp.argmax(score, axis=-1), candidates.shape[-1], dtype=bool)
  need = jnp.any(candidates, axis=-1) & ~jnp.any(chosen, axis=-1)
  return chosen | (pick & candidates & need[..., None])


def token_nll(
    model,
    tokens: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> jax.Array:
  """float32 ``-log p(targets)`` ``[B, T']`` from one forward pass.

  ``targets[:, j]`` is scored against the prediction for position j of ``tokens``; a
  ``T' < T`` scores only the first ``T'`` positions (the x_t half of the block layout), so the
  head never sees the clean half. Dream's shift (read j from j-1) is
  :func:`jdiff.models.logprobs.model_token_logprobs`'s.
  """
  return -model_token_logprobs(model, tokens, positions, mask, targets, chunk_size, start=0)


def weighted_sum(x: jax.Array, w: jax.Array, axis=None) -> jax.Array:
  """``Σ w·x`` in float32, with ``x`` zeroed where ``w`` is 0 (keeps NaN/inf out)."""
  w = jnp.asarray(w, F32)
  return jnp.sum(jnp.where(w != 0, x.astype(F32) * w, 0.0), axis=axis)


def safe_div(a, b):
  b = jnp.asarray(b, F32)
  return jnp.asarray(a, F32) / jnp.maximum(b, 1.0)


def masked_metrics(nll: jax.Array, masked: jax.Array, scored: jax.Array) -> dict:
  """Unweighted mean NLL over masked tokens and the masked fraction of scorable tokens
  (``scored``: a mask or per-row counts, summed)."""
  n_masked = jnp.sum(masked, dtype=F32)
  return {
      "nll": safe_div(weighted_sum(nll, masked), n_masked),
      "masked_frac": safe_div(n_masked, jnp.sum(scored, dtype=F32)),
      "num_masked": n_masked,
  }


__all__ = [
    "DEFAULT_CHUNK",
    "force_one",
    "make_rows",
    "masked_metrics",
    "safe_div",
    "token_nll",
    "unpack_rows",
    "weighted_sum",
]
