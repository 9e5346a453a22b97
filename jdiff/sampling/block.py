"""Block-diffusion sampler for SDAR / TraDo with a KV cache (docs/design.md §The trajectory contract,
docs/formats.md §Families).

Layout. Every row lives on a *position-space canvas* ``[B, T]``: slot ``p`` holds the token at
absolute position ``p`` of that row (prompt at ``[0, P_b)``, completion at ``[P_b, P_b + G)``,
pad after). Blocks are anchored at position 0, so row b's active block is the window
``[start_b, start_b + L)`` with ``start_b`` a multiple of L; rows sit at different offsets and
are read and written with per-row gathers/scatters. The KV cache is indexed the same way
(slot = position), so no per-row write pointer exists.

Loop. One ``lax.while_loop`` iteration runs one forward of every row's window. A live row
whose block is clean commits it: the block's K/V are stored (the reference's extra
``store_kv=True`` pass), it is scanned for a stop id, and the row moves on or ends; a row
that moves on takes the first denoising step of its next block in the same forward (the
clean block rides along as extra queries, see ``_cached_window_logits``), so a block costs
its denoising steps and no separate commit forward. Every other live row takes a denoising
step: sample x0 at every window slot, unmask the subset the strategy picks. Rows advance
independently: a dynamic-strategy row may be two blocks ahead of its neighbour. The loop is
split into a few static cache sizes (``_phase_sizes``): a step's attention and cache copies
cost per slot, so early blocks do not pay for the whole canvas; a phase ends as soon as a
live row's window leaves its cache, which then grows by empty slots (outputs are unchanged).
Greedy steps skip the sampling filters and key folding (both inside the sampled branch).

Random draws. Row b's t-th step (0-based, counted per row across blocks) samples with key
``fold_in(fold_in(key, b), t)``: one ``common.sample_categorical`` over the L window slots
(``[L, V]`` logits; slots outside the completion are drawn and ignored). A row's draws thus
depend neither on the other rows nor on the cache, which makes cached, uncached, sharded and
step-by-step reference runs comparable token for token.

Decisions where the references are open or buggy:
- ``block_length`` must equal the model's ``block_size``: the trainer rebuilds states with the
  model's block-causal mask, so any other length would break trajectory consistency.
- ``low_confidence_dynamic`` follows the HF ``generate.py`` rule: all masks with ``c >
  threshold`` if at least ``n_k`` qualify, else the top-``n_k``. JetEngine's "union with the
  top-``n_k``" selects the same set (the top-``n_k`` contain every qualifying mask), so the two
  differ only in tie order.
- ``entropy_bounded`` implements the stated rule (ascending-entropy prefix whose cumulative
  entropy stays within ``eb_threshold``, at least one token) instead of the shipped code. It
  ignores ``n_k``, and a block keeps stepping until no mask remains (at most L steps) rather
  than committing mask tokens after ``steps_per_block`` as JetEngine would. Its entropy is
  that of the filtered sampling distribution (temperature-1 softmax when greedy).
- The completion is exactly ``[P_b, P_b + G)``: slots of the last block past ``gen_length``
  are not part of the sequence (never unmasked, invisible as keys), so a training forward
  over prompt + completion sees exactly the states the sampler saw.
- The mask token is excluded from sampling (trained checkpoints give it ~0 mass; a drawn
  mask id would leave the position masked). Log-probs still use the raw logits.
- Transfer counts come from ``transfer_schedule(L, S)`` clamped to the masks left (block 0
  holds prompt-tail tokens; the last block may be short). Greedy is ``temperature=0``
  (argmax, confidence = temperature-1 probability) or ``top_k=1`` (confidence 1.0, ties go
  to the leftmost mask).
- Stopping follows JetEngine: a block is scanned at commit; tokens after the first stop id
  are dropped (pad, step 0) although earlier tokens of that block were decoded next to them.
- Only shape-like settings are compiled in; strategy, temperature, top_p and thresholds are
  traced values. The trace always uses ``SAMPLING_RULES`` (never the caller's rules context).

Meshes. On a mesh whose axes all split the batch (``('data', 'fsdp')``, ``tensor`` = 1),
with weights not split over them, each data shard runs its own loop on its rows
(``row_shards``): no cross-device reduction per step, and the outputs equal the one-device
run's. Otherwise (``tensor`` > 1, FSDP-sharded weights) the loop is one SPMD program over
the whole mesh. On one device, ``row_threads`` splits the batch among host threads that
call the compiled sampler at once, one loop each (``row_shards.in_host_threads``): a tiny
model's step is ~200 short ops that XLA's CPU runtime runs one after another on one core, so
on a multi-core CPU separate loops finish the batch sooner; outputs are unchanged.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jdiff.models import masks
from jdiff.models.kv_cache import KVCache
from jdiff.sampling.common import (
    F32,
    Trajectory,
    argmax_first,
    canvas_positions,
    filter_logits,
    finish,
    left_pad,
    prob_at,
    row_keys,
    token_logprob,
    top_p_filter,
    trajectory_row_specs,
    transfer_schedule,
)
from jdiff.sampling.block_settings import STRATEGIES, BlockSamplerConfig
from jdiff.sampling.row_shards import (
    check_row_threads,
    in_host_threads,
    on_row_shards,
    row_shard_axes,
)
from jdiff.sharding.rules import SAMPLING_RULES, constrain, logical_spec, use_rules

_CACHE_AXES = ("layers", "batch", "kv_heads", "head_dim", "kv_length")
_ROW_AXES = ("batch", "length")
_PHASES = 4  # cache-size phases of the sampling loop (see _phase_sizes)


class _Static(NamedTuple):
  """The part of a validated config that shapes the program (the jit's static argument)."""

  block_length: int
  steps_per_block: int
  gen_length: int
  top_k: int
  stop_ids: Tuple[int, ...]
  record_states: bool
  use_cache: bool


@flax.struct.dataclass
class _Knobs:
  """The traced part of a config: values only, one compilation serves them all."""

  strategy: jax.Array  # int32 index into STRATEGIES
  temperature: jax.Array
  top_p: jax.Array
  threshold: jax.Array
  eb_threshold: jax.Array


def _split(cfg: BlockSamplerConfig) -> Tuple[_Static, _Knobs]:
  static = _Static(
      cfg.block_length,
      cfg.steps_per_block,
      cfg.gen_length,
      cfg.top_k,
      cfg.stop_ids,
      cfg.record_states,
      cfg.use_cache,
  )
  knobs = _Knobs(
      strategy=np.int32(list(STRATEGIES).index(cfg.strategy)),
      temperature=np.float32(cfg.temperature),
      top_p=np.float32(cfg.top_p),
      threshold=np.float32(cfg.threshold),
      eb_threshold=np.float32(cfg.eb_threshold),
  )
  return static, knobs


# --------------------------------------------------------------------------- sampling
def _draw(row_keys, num_steps, logits, mask_id: int, top_k: int, kn: _Knobs):
  """``common.sample_categorical`` per row with traced temperature / top_p.

  The mask token is never drawn (its logit is -inf): a committed mask id would silently stay
  a mask. Row b draws with ``fold_in(row_keys[b], num_steps[b])``. Returns ids ``[B, L]``, the
  confidence (probability of the id under the distribution it was drawn from) and the
  logits of that distribution ``[B, L, V]`` (temperature 1 when greedy).
  """
  logits = logits.astype(F32).at[..., mask_id].set(-jnp.inf)

  def sampled():
    # Only a sampled step pays for the filters and the per-row keys; greedy steps skip them.
    filtered = filter_logits(logits, kn.temperature, top_k, 1.0)
    # A cond, not a where: with top_p == 1 the cumulative sum could still drop a tail token.
    filtered = jax.lax.cond(kn.top_p < 1.0, top_p_filter, lambda x, _: x, filtered, kn.top_p)
    keys = jax.vmap(jax.random.fold_in)(row_keys, num_steps)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32), filtered

  ids, dist = jax.lax.cond(kn.temperature == 0, lambda: (argmax_first(logits), logits), sampled)
  return ids, prob_at(dist, ids), dist


# --------------------------------------------------------------------------- loop
@flax.struct.dataclass
class _Carry:
  canvas: jax.Array  # [B, T] int32, token at each absolute position
  step_map: jax.Array  # [B, T] int32, 1-based step that unmasked the position (0: never)
  logprobs: jax.Array  # [B, T] float32
  cache: Optional[KVCache]  # slot = position; None on the uncached path
  block_start: jax.Array  # [B] int32, first position of the active block
  step_in_block: jax.Array  # [B] int32
  num_steps: jax.Array  # [B] int32, denoising steps taken so far (global per row)
  end: jax.Array  # [B] int32, position after the last kept completion token
  done: jax.Array  # [B] bool
  states: Optional[jax.Array]  # [S_max, B, G] when recording
  iteration: jax.Array  # scalar int32, safety bound on the loop


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _gather(arr, idx):
  return jnp.take_along_axis(arr, idx, axis=1)


def _scatter_where(arr, idx, where, values):
  """``arr[b, idx[b, i]] = values[b, i]`` where ``where[b, i]``; other writes are dropped."""
  rows = jnp.arange(arr.shape[0])[:, None]
  return arr.at[rows, jnp.where(where, idx, arr.shape[1])].set(values, mode="drop")


def _constrain_cache(cache: KVCache) -> KVCache:
  return cache.replace(
      k=constrain(cache.k, _CACHE_AXES),
      v=constrain(cache.v, _CACHE_AXES),
      valid=constrain(cache.valid, ("batch", "kv_length")),
  )


def _phase_sizes(p: int, size: int, block: int, phases: int = _PHASES):
  """Static cache sizes of the loop's phases: from the first window's end (every prompt's
  first block ends by ``round_up(p + 1, L)``) to the full canvas in ``phases`` equal steps,
  each a multiple of L. Attention and the cache's layout copies cost per cache slot, so a
  step of an early block should not pay for the whole canvas."""
  first = min(_round_up(p + 1, block), size)
  sizes = {
      min(_round_up(first + (size - first) * k // phases, block), size) for k in range(phases + 1)
  }
  return sorted(sizes)


def _grow_cache(cache: KVCache, size: int) -> KVCache:
  """The cache with empty (invalid) slots appended up to ``size``."""
  extra = size - cache.size
  pad = [(0, 0)] * 4 + [(0, extra)]  # the slot axis is last
  return _constrain_cache(
      KVCache(
          k=jnp.pad(cache.k, pad),
          v=jnp.pad(cache.v, pad),
          valid=jnp.pad(cache.valid, [(0, 0), (0, extra)]),
      )
  )


def _prefill(model, ids, pmask, ppos, plen, size, block):
  """Stores the whole-block part ``[0, floor(P_b/L)*L)`` of each prompt into a fresh cache.

  The prompt's partial last block is not stored: it is decoded with the first completion
  tokens and committed with them.
  """
  cache = _constrain_cache(KVCache.init(model.config, ids.shape[0], size))
  write = pmask & (ppos < ((plen // block) * block)[:, None])
  _, cache = model.backbone(ids, ppos, masks.block_causal(ppos, block, pmask), cache, store=write)
  return _constrain_cache(cache)


def _window_logits(model, c: _Carry, win_pos, win_valid, gen_end, block):
  """Logits ``[B, L, V]`` of every row's window at ``win_pos``, uncached: the whole canvas
  under the block-causal mask, only the window projected."""
  pos = jnp.broadcast_to(jnp.arange(c.canvas.shape[1], dtype=jnp.int32), c.canvas.shape)
  valid = pos < gen_end[:, None]
  h, _ = model.backbone(c.canvas, pos, masks.block_causal(pos, block, valid))
  return model.logits_from_hidden(jnp.take_along_axis(h, win_pos[:, :, None], axis=1))


def _cached_window_logits(model, cache, win, win_pos, win_valid, cur, cur_pos, store, block):
  """Logits ``[B, L, V]`` of every row's denoising window ``win`` from the cache, and the cache.

  Rows with ``store`` (``[B, L]``: committing rows' completion slots) also store their clean
  block ``cur`` in the same forward: the clean block goes first as extra queries whose K/V
  are written, the window after it sees it through the block-causal mask exactly as it would
  see it in the cache (K/V of a token depend only on the tokens it attends to, and the
  window's block is later). This is the reference's separate ``store_kv`` pass merged into
  the next block's first step; only an iteration in which some row commits pays for the
  doubled query count.
  """

  def denoise(cache):
    mask = masks.with_cache(cache.valid, masks.block_causal(win_pos, block, win_valid))
    logits, _ = model(win, win_pos, mask, cache)
    return logits, cache

  def commit_and_denoise(cache):
    pos = jnp.concatenate([cur_pos, win_pos], axis=1)
    valid = jnp.concatenate([store, win_valid], axis=1)
    mask = masks.with_cache(cache.valid, masks.block_causal(pos, block, valid))
    h, cache = model.backbone(
        jnp.concatenate([cur, win], axis=1),
        pos,
        mask,
        cache,
        store=jnp.concatenate([store, jnp.zeros_like(win_valid)], 1),
    )
    return model.logits_from_hidden(h[:, block:]), _constrain_cache(cache)

  return jax.lax.cond(jnp.any(store), commit_and_denoise, denoise, cache)


def _step(model, st: _Static, kn: _Knobs, row_keys, plen, c: _Carry) -> _Carry:
  """One forward for every live row: a row whose block is clean commits it (stores its K/V,
  scans it for a stop id, moves on or ends) and, if it moves on, takes the first denoising
  step of its next block in the same forward; every other live row takes a denoising step."""
  block, g = st.block_length, st.gen_length
  mask_id = model.config.mask_token_id
  gen_end = plen + g
  offsets = jnp.arange(block, dtype=jnp.int32)

  # Commit: keep the block up to and including its first stop id, then move on or finish.
  cur_pos = c.block_start[:, None] + offsets
  cur = _gather(c.canvas, cur_pos)
  cur_valid = cur_pos < gen_end[:, None]
  completion = cur_valid & (cur_pos >= plen[:, None])
  commit = ~c.done & ~jnp.any((cur == mask_id) & completion, axis=-1)
  is_stop = jnp.zeros(cur.shape, bool)
  for s in st.stop_ids:
    is_stop |= cur == s
  is_stop &= completion
  has_stop = commit & jnp.any(is_stop, axis=-1)
  end = jnp.where(has_stop, c.block_start + jnp.argmax(is_stop, axis=-1) + 1, c.end)
  finished = commit & (has_stop | (c.block_start + block >= gen_end))
  advance = commit & ~finished
  done = c.done | finished
  block_start = jnp.where(advance, c.block_start + block, c.block_start)

  # Denoise the (possibly new) active block: draw x0 at every slot, unmask the strategy's pick.
  win_pos = block_start[:, None] + offsets
  win = _gather(c.canvas, win_pos)
  win_valid = (win_pos < gen_end[:, None]) & ~done[:, None]
  eligible = (win == mask_id) & win_valid & (win_pos >= plen[:, None])
  denoise = jnp.any(eligible, axis=-1)
  if c.cache is not None:
    # Slots past the completion are never stored (invisible as keys), as in the prefill.
    store = commit[:, None] & cur_valid
    logits, cache = _cached_window_logits(
        model, c.cache, win, win_pos, win_valid, cur, cur_pos, store, block
    )
  else:
    logits, cache = _window_logits(model, c, win_pos, win_valid, gen_end, block), None

  x0, conf, dist = _draw(row_keys, c.num_steps, logits, mask_id, st.top_k, kn)
  step_in_block = jnp.where(advance, 0, c.step_in_block)
  schedule = jnp.asarray(transfer_schedule(block, st.steps_per_block))
  n_k = schedule[jnp.minimum(step_in_block, st.steps_per_block - 1)]
  transfer = (
      jax.lax.switch(kn.strategy, list(STRATEGIES.values()), eligible, conf, dist, n_k, kn)
      & eligible
  )
  num_steps = c.num_steps + denoise.astype(jnp.int32)
  canvas = _scatter_where(c.canvas, win_pos, transfer, x0)
  step_map = _scatter_where(
      c.step_map, win_pos, transfer, jnp.broadcast_to(num_steps[:, None], win_pos.shape)
  )
  logprobs = _scatter_where(c.logprobs, win_pos, transfer, token_logprob(logits, x0))
  step_in_block = step_in_block + denoise.astype(jnp.int32)

  states = c.states
  if states is not None:  # row b's completion after its t-th step goes to states[t - 1, b]
    comp = _gather(canvas, plen[:, None] + jnp.arange(g, dtype=jnp.int32))
    slot = jnp.where(denoise, num_steps - 1, states.shape[0])
    states = states.at[slot, jnp.arange(states.shape[1])].set(comp, mode="drop")
    states = constrain(states, (None, "batch", "length"))

  return _Carry(
      canvas=constrain(canvas, _ROW_AXES),
      step_map=constrain(step_map, _ROW_AXES),
      logprobs=constrain(logprobs, _ROW_AXES),
      cache=cache,
      block_start=block_start,
      step_in_block=step_in_block,
      num_steps=num_steps,
      end=end,
      done=done,
      states=states,
      iteration=c.iteration + 1,
  )


def _generate(model, ids, pmask, key, st: _Static, kn: _Knobs, row_offset=0) -> Trajectory:
  mc = model.config
  block, g = st.block_length, st.gen_length
  n_rows, p = ids.shape
  size = _round_up(p + g, block)  # canvas / cache slots: every position any row can reach
  pad_id = mc.pad_token_id if mc.pad_token_id is not None else (mc.eos_token_id or 0)
  ids = constrain(jnp.asarray(ids, jnp.int32), _ROW_AXES)
  pmask = constrain(jnp.asarray(pmask, bool), _ROW_AXES)
  plen = jnp.sum(pmask, axis=-1, dtype=jnp.int32)
  ppos = canvas_positions(pmask)
  gen_end = plen + g

  # Canvas: prompt tokens at their positions, masks on the completion, pad after it.
  pos = jnp.arange(size, dtype=jnp.int32)[None, :]
  canvas = jnp.where(pos < gen_end[:, None], mc.mask_token_id, pad_id).astype(jnp.int32)
  canvas = _scatter_where(canvas, ppos, pmask, ids)

  # Static bounds: blocks a completion can touch (the first may hold L-1 prompt-tail tokens)
  # and steps per block (S, or up to L for entropy_bounded, which the strategy knob allows).
  max_blocks = (g + block - 2) // block + 1
  max_steps = max_blocks * block
  states = (
      jnp.full((max_steps, n_rows, g), mc.mask_token_id, jnp.int32) if st.record_states else None
  )
  zeros = jnp.zeros((n_rows,), jnp.int32)
  carry = _Carry(
      canvas=constrain(canvas, _ROW_AXES),
      step_map=jnp.zeros((n_rows, size), jnp.int32),
      logprobs=jnp.zeros((n_rows, size), F32),
      cache=(
          _prefill(model, ids, pmask, ppos, plen, _phase_sizes(p, size, block)[0], block)
          if st.use_cache
          else None
      ),
      block_start=(plen // block) * block,
      step_in_block=zeros,
      num_steps=zeros,
      end=gen_end,
      done=jnp.zeros((n_rows,), bool),
      states=states,
      iteration=jnp.zeros((), jnp.int32),
  )

  keys = row_keys(key, n_rows, row_offset)  # a shard's / group's rows start at row_offset
  max_iters = max_blocks * (block + 1)  # every block: at most L steps + one commit
  step = functools.partial(_step, model, st, kn, keys, plen)
  c = carry
  for phase_size in (_phase_sizes(p, size, block) if st.use_cache else [size]):
    # A phase runs while every live row's window fits its cache; the next grows the cache.
    if c.cache is not None and phase_size != c.cache.size:
      c = c.replace(cache=_grow_cache(c.cache, phase_size))

    def cond(c, last=phase_size == size, phase_size=phase_size):
      go = ~jnp.all(c.done) & (c.iteration < max_iters)
      return go if last else go & jnp.all(c.done | (c.block_start + block <= phase_size))

    c = jax.lax.while_loop(cond, step, c)

  # Completion space: position P_b + j; everything past the kept end is pad / 0, and after
  # a row's last step its state is the final (truncated) completion.
  comp_pos = plen[:, None] + jnp.arange(g, dtype=jnp.int32)
  return finish(
      ids,
      pmask,
      _gather(c.canvas, comp_pos),
      _gather(c.step_map, comp_pos),
      _gather(c.logprobs, comp_pos),
      c.end - plen,
      c.num_steps,
      pad_id,
      states=c.states,
      tail_truncated=True,
      raw_logprobs=False,
  )


# --------------------------------------------------------------------------- entry points
def _out_specs(static: _Static):
  return trajectory_row_specs(static.record_states, raw_logprobs=False)


@functools.partial(jax.jit, static_argnames=("graphdef", "static", "row_axes"))
def _generate_jit(
    graphdef,
    state,
    prompt_ids,
    prompt_mask,
    key,
    knobs: _Knobs,
    static: _Static,
    row_axes: Tuple[str, ...] = (),
    row_offset=0,
) -> Trajectory:
  """The sampler; with ``row_axes`` (``row_shards.row_shard_axes``) one loop per row shard.
  ``row_offset``: the global index of the first row (a host thread's group, for its keys)."""
  with use_rules(SAMPLING_RULES):  # the trace must not depend on the caller's rules

    def run(shared, rows, row_offset):
      state, key, knobs = shared
      return _generate(nnx.merge(graphdef, state), *rows, key, static, knobs, row_offset)

    return on_row_shards(
        run,
        row_axes,
        _out_specs(static),
        (state, key, knobs),
        (prompt_ids, prompt_mask),
        row_offset,
    )


def _dispatch(
    graphdef, state, prompt_ids, prompt_mask, key, config: BlockSamplerConfig, row_offset: int = 0
) -> Trajectory:
  """The compiled sampler on a validated config: one call, or one per host-thread group.
  ``row_offset``: the global index of the batch's first row (a rollout micro-batch's)."""
  static, knobs = _split(config)
  n_rows = np.shape(prompt_ids)[0]
  threads = check_row_threads(config.row_threads, n_rows, "BlockSamplerConfig.row_threads")
  if threads == 1:
    return _generate_jit(
        graphdef,
        state,
        prompt_ids,
        prompt_mask,
        key,
        knobs,
        static,
        row_shard_axes(n_rows, state),
        np.int32(row_offset),
    )

  def call(rows, offset):
    return _generate_jit(
        graphdef, state, *rows, key, knobs, static, (), np.int32(row_offset) + offset
    )

  return in_host_threads(call, threads, _out_specs(static), (prompt_ids, prompt_mask))


def generate_block(
    graphdef, state, prompt_ids, prompt_mask, key, config: BlockSamplerConfig
) -> Trajectory:
  """The jitted sampler on explicit model state.

  ``prompt_ids`` ``[B, P]`` int32 and ``prompt_mask`` ``[B, P]`` bool (left-padded; positions
  count real tokens from 0), ``key`` a PRNG key. Compiles once per (model graph, B, P, static
  settings, mesh); strategy, temperature, top_p and thresholds are traced values.
  """
  config = config.validate(nnx.merge(graphdef, state).config)
  return _dispatch(graphdef, state, prompt_ids, prompt_mask, key, config)


def _place_batch(x: np.ndarray):
  """Shards a batch-leading host array over ('data', 'fsdp') when a mesh is active."""
  mesh = jax.sharding.get_mesh()
  if mesh is None or mesh.empty or isinstance(x, jax.Array):  # a jax.Array is already placed
    return x
  spec = logical_spec(_ROW_AXES, x.shape, dict(mesh.shape), SAMPLING_RULES)
  return jax.device_put(x, NamedSharding(mesh, spec))


def sample(
    model,
    prompt_ids,
    prompt_mask,
    key,
    config: BlockSamplerConfig,
    *,
    bucket: int = 16,
    row_offset: int = 0,
) -> Trajectory:
  """Samples completions for a batch of prompts with block diffusion.

  ``prompt_ids``: a left-padded ``[B, P]`` array with its bool ``prompt_mask``, or (with
  ``prompt_mask=None``) a list of token-id lists, left-padded here to a multiple of
  ``bucket`` so prompts of one bucket share a compilation. Under ``jax.set_mesh`` the batch
  is sharded over ('data', 'fsdp'); shard the model with ``SAMPLING_RULES`` first.
  ``row_offset``: the global index of the first row when the batch is a slice of a larger
  one (row b draws with row ``row_offset + b``'s keys; traced, so no recompile).
  """
  config = config.validate(model.config)  # before anything is traced or compiled
  if prompt_mask is None:
    if not isinstance(prompt_ids, Sequence) or not len(prompt_ids):
      raise ValueError(
          "prompt_ids must be a non-empty list of token-id lists, or an array "
          "passed together with prompt_mask"
      )
    pad_id = model.config.pad_token_id or 0
    ids, pmask, _ = left_pad(prompt_ids, pad_id, bucket=max(int(bucket), 1))
  else:
    # A jax.Array is used where it lies: a multi-process global batch cannot be read on one host.
    as_rows = lambda x, t: x.astype(t) if isinstance(x, jax.Array) else np.asarray(x, t)  # noqa
    ids, pmask = as_rows(prompt_ids, np.int32), as_rows(prompt_mask, bool)
    if ids.ndim != 2 or ids.shape != pmask.shape:
      raise ValueError(
          f"prompt_ids {ids.shape} and prompt_mask {pmask.shape} must both be " "[B, P]"
      )
  graphdef, state = nnx.split(model)
  return _dispatch(graphdef, state, _place_batch(ids), _place_batch(pmask), key, config, row_offset)
