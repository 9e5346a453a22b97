"""Pieces every sampler shares: the trajectory record, token sampling, top-n selection.

Conventions (all samplers):
- ``Trajectory.tokens`` ``[B, G]``: completion ids; position j is the j-th token after the
  row's prompt. Tokens after the stop (EOS / stop id / gen_length) are set to ``pad_id``.
- ``step_map`` ``[B, G]`` int32: the 1-based global decoding step (counted per sequence
  across blocks) at which the token was unmasked; 0 where nothing was generated.
- ``logprobs`` ``[B, G]`` float32: log-probability of the committed token under the
  model's *temperature-1, unfiltered* softmax at the step it was unmasked — exactly what a
  training forward over the same state computes (the trajectory-consistency contract).
- ``lengths`` ``[B]``: completion length including the stop token.
- ``states`` (optional, ``[S, B, G]``): the completion canvas after every step (CJ-GRPO).
- ``raw_tokens`` / ``raw_step_map`` (optional, ``[B, G]``): the canvas as decoded, before
  the tokens after a stop were dropped. A stop mid-block discards tokens that were decoded
  next to the kept ones; training needs them to rebuild exactly the states the sampler saw.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jdiff.data.loading import left_pad  # noqa: F401  (samplers' prompt padding)

F32 = jnp.float32
NEG_INF = -jnp.inf


@flax.struct.dataclass
class Trajectory:
  prompt_ids: jax.Array  # [B, P] left-padded
  prompt_mask: jax.Array  # [B, P] bool, True on real prompt tokens
  tokens: jax.Array  # [B, G]
  step_map: jax.Array  # [B, G] int32
  logprobs: jax.Array  # [B, G] float32
  lengths: jax.Array  # [B] int32
  num_steps: jax.Array  # [B] int32: model calls that decoded tokens, per sequence
  states: Optional[jax.Array] = None  # [S, B, G] when recorded
  raw_tokens: Optional[jax.Array] = None  # [B, G] decoded canvas incl. tokens after the stop
  raw_step_map: Optional[jax.Array] = None  # [B, G]
  raw_logprobs: Optional[jax.Array] = None  # [B, G]


def is_positive_int(v) -> bool:
  """A config's count field check: a Python or NumPy int (not a bool) above 0."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0


def trajectory_row_specs(record_states: bool, raw_logprobs: bool):
  """``row_shards``' ``out_specs`` for a Trajectory: ``specs(batch)`` puts ``batch`` where
  each field has rows (the second axis of ``states``); fields a sampler leaves None stay
  None."""

  def specs(batch):
    rows = P(batch)
    return Trajectory(
        prompt_ids=rows,
        prompt_mask=rows,
        tokens=rows,
        step_map=rows,
        logprobs=rows,
        lengths=rows,
        num_steps=rows,
        states=P(None, batch) if record_states else None,
        raw_tokens=rows,
        raw_step_map=rows,
        raw_logprobs=rows if raw_logprobs else None,
    )

  return specs


def config_error(config, field: str, why: str) -> ValueError:
  """The ValueError of a sampler config's bad field: ``<Config>.<field>=<value>: <why>``."""
  return ValueError(f"{type(config).__name__}.{field}={getattr(config, field)!r}: {why}")


def row_keys(key: jax.Array, n_rows: int, row_offset=0) -> jax.Array:
  """Each row's key ``fold_in(key, row_offset + b)`` ``[B]``: a row's draws depend on its
  global index only, not on the other rows of its batch, shard or thread group."""
  rows = row_offset + jnp.arange(n_rows, dtype=jnp.int32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)


def canvas_positions(
    valid: jax.Array, padding_blind: bool = False, pad_position: int = 0
) -> jax.Array:
  """Positions of a left-padded canvas: each real token's count of real tokens before it
  (pads get ``pad_position``), so a padded row sees the positions it has alone; or the
  physical ``arange`` with ``padding_blind`` (LLaDA's official code)."""
  valid = jnp.asarray(valid, bool)
  if padding_blind:
    return jnp.broadcast_to(jnp.arange(valid.shape[1], dtype=jnp.int32), valid.shape)
  count = jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1
  if pad_position == 0:
    return jnp.maximum(count, 0)
  return jnp.where(valid, count, pad_position).astype(jnp.int32)


def stop_lengths(canvas: jax.Array, stop_ids) -> jax.Array:
  """Completion length per row ``[B]``: up to and including the first stop id, else G."""
  is_stop = jnp.isin(canvas, jnp.asarray(stop_ids, jnp.int32))
  g = canvas.shape[1]
  return jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1) + 1, g).astype(jnp.int32)


def finish(
    prompt_ids,
    prompt_mask,
    canvas,
    step_map,
    logprobs,
    lengths,
    num_steps,
    pad_id: int,
    states=None,
    tail_truncated: bool = False,
    raw_logprobs: bool = True,
) -> Trajectory:
  """The trajectory of a decoded completion canvas ``[B, G]``: tokens after ``lengths`` become
  ``pad_id`` with step 0 and log-prob 0, the untouched canvas is kept as ``raw_*``, and a
  row's recorded ``states`` after its last step (``k >= num_steps``) repeat its final
  completion (the raw canvas, or with ``tail_truncated`` the truncated tokens)."""
  after = jnp.arange(canvas.shape[1])[None, :] >= lengths[:, None]
  tokens = jnp.where(after, pad_id, canvas)
  if states is not None:
    tail = tokens if tail_truncated else canvas
    later = jnp.arange(states.shape[0])[:, None, None] >= num_steps[None, :, None]
    states = jnp.where(later, tail[None], states)
  return Trajectory(
      prompt_ids=prompt_ids,
      prompt_mask=prompt_mask,
      tokens=tokens,
      step_map=jnp.where(after, 0, step_map),
      logprobs=jnp.where(after, 0.0, logprobs),
      lengths=lengths,
      num_steps=num_steps,
      states=states,
      raw_tokens=canvas,
      raw_step_map=step_map,
      raw_logprobs=logprobs if raw_logprobs else None,
  )


def transfer_schedule(num_masked: int, steps: int) -> np.ndarray:
  """Even split of ``num_masked`` over ``steps``, the remainder going to the early steps."""
  if steps <= 0:
    raise ValueError(f"steps must be positive, got {steps}")
  base, rem = divmod(num_masked, steps)
  return np.array([base + 1 if i < rem else base for i in range(steps)], np.int32)


def transfer_schedule_dynamic(num_masked: jax.Array, steps: int) -> jax.Array:
  """Traced version of :func:`transfer_schedule`: ``num_masked`` ``[B]`` -> ``[B, steps]``."""
  num_masked = jnp.asarray(num_masked, jnp.int32)
  base, rem = num_masked // steps, num_masked % steps
  idx = jnp.arange(steps, dtype=jnp.int32)
  return base[:, None] + (idx[None, :] < rem[:, None]).astype(jnp.int32)


def filter_logits(
    logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
  """Temperature -> top-k -> top-p on float32 logits (filtered entries become -inf).

  ``temperature`` must be > 0 here; greedy decoding is handled by the callers.
  """
  logits = logits.astype(F32) / temperature
  if top_k and top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    logits = top_p_filter(logits, top_p)
  return logits


def top_p_filter(logits: jax.Array, top_p) -> jax.Array:
  """The nucleus rule: keep the smallest sorted prefix whose mass reaches ``top_p`` (the
  first token always stays); the rest become -inf. ``top_p`` may be a traced value."""
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  cum = jnp.cumsum(probs, axis=-1)
  keep_sorted = (cum - probs) < top_p
  cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, NEG_INF, logits)


def sample_categorical(
    key: jax.Array, logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
):
  """Samples ids from the filtered distribution; returns (ids, prob of the sampled id).

  ``temperature == 0`` is greedy (argmax; probability from the temperature-1 softmax).
  """
  logits = logits.astype(F32)
  if temperature == 0:
    ids = jnp.argmax(logits, axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)
  else:
    filtered = filter_logits(logits, temperature, top_k, top_p)
    ids = jax.random.categorical(key, filtered, axis=-1)
    probs = jax.nn.softmax(filtered, axis=-1)
  return ids.astype(jnp.int32), jnp.take_along_axis(probs, ids[..., None], axis=-1)[..., 0]


def argmax_first(x: jax.Array) -> jax.Array:
  """``jnp.argmax(x, -1)`` (first index of the maximum) for NaN-free ``x``, as two plain
  reductions: XLA's CPU backend runs argmax's variadic (value, index) reduce as a slow scalar
  loop, which costs more than the whole rest of a tiny model's sampling step."""
  top = jnp.max(x, axis=-1, keepdims=True)
  idx = jnp.arange(x.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(x == top, idx, x.shape[-1]), axis=-1).astype(jnp.int32)


def gumbel_argmax(key: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """LLaDA's Gumbel-max sampling: argmax(logits + temperature * Gumbel noise).

  LLaDA writes it as argmax(exp(logits) / (-log u)^temperature) in float64; this is the
  same argmax computed in float32 (ties aside), which is what TPUs support natively.
  """
  logits = logits.astype(F32)
  if temperature == 0:
    return argmax_first(logits)
  g = jax.random.gumbel(key, logits.shape, F32)
  return argmax_first(logits + temperature * g)


def prob_at(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """``jax.nn.softmax(logits)[..., ids]`` without normalising every entry: the same float
  (softmax is exp(x - max) / sum; the division is taken at one entry only)."""
  unnorm = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  picked = jnp.take_along_axis(unnorm, ids[..., None], axis=-1)[..., 0]
  return picked / jnp.sum(unnorm, axis=-1)


def token_logprob(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """log softmax(logits)[ids] at temperature 1, float32."""
  logp = jax.nn.log_softmax(logits.astype(F32), axis=-1)
  return jnp.take_along_axis(logp, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]


_PAIRWISE_MAX = 256  # up to this width, ranks come from a [T, T] comparison, not two sorts


def select_top_n(confidence: jax.Array, eligible: jax.Array, n: jax.Array) -> jax.Array:
  """Bool mask of the ``n`` (per row) most confident eligible positions.

  ``confidence`` ``[B, T]``, ``eligible`` bool ``[B, T]``, ``n`` int ``[B]``; n is clamped to
  the eligible count, so already-decoded positions are never re-selected. Ties go to the
  leftmost position (a deterministic stand-in for torch.topk's order).
  """
  conf = jnp.where(eligible, confidence.astype(F32), NEG_INF)
  t = conf.shape[-1]
  if t <= _PAIRWISE_MAX:
    # A position's rank is the number of positions ahead of it in the stable descending
    # order; XLA's CPU sort runs a comparator call per element pair visited, which costs
    # more than this whole [B, T, T] comparison at a block's width (37 vs 1 us at T = 32).
    idx = jnp.arange(t)
    other, this = conf[:, None, :], conf[:, :, None]
    ahead = (other > this) | ((other == this) & (idx[None, None, :] < idx[None, :, None]))
    ranks = jnp.sum(ahead, axis=-1, dtype=jnp.int32)
  else:
    order = jnp.argsort(-conf, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
  n = jnp.minimum(jnp.asarray(n, jnp.int32), jnp.sum(eligible, axis=-1))
  return eligible & (ranks < n[:, None])
