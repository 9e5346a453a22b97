"""LLaDA's semi-autoregressive low-confidence sampler, with EOSER, ASS, CFG and Fast-dLLM options.

Spec: ``docs/methods.md`` §1 (LLaDA ``generate``), §3.1 (EOSER), §3.2 (ASS), §6
(Fast-dLLM, :mod:`jdiff.sampling.fast_dllm`); ``docs/formats.md`` §B2.

Canvas ``[prompt (left-padded, P) | G masks]``. For each step of the plan
(:mod:`jdiff.sampling.schedules`): logits over the whole canvas (key-padding bidirectional
attention); optional CFG ``un + (s+1)(cond − un)`` with the real prompt tokens masked in the
unconditional copy; candidates ``x̂ = argmax(logits + τ·Gumbel)`` in float32 (LLaDA uses
float64; float32 Gumbel-max is the same distribution and what TPUs support, see
:func:`common.gumbel_argmax`); confidence ``softmax(logits)[x̂]`` at temperature 1 (or
U(0,1) for ``remasking='random'``); EOSER multiplies the confidence of positions whose
candidate is EOS by γ(s) — for ranking only, x̂ is unchanged; masked positions of the current
block compete and the top ``n_s`` are committed.

Deviation: the mask token's logit is set to −∞ before sampling and confidence. LLaDA would
commit a sampled mask id and silently re-decode that position later, which breaks the step
map; trained checkpoints give the mask token ~0 mass, so this changes nothing in practice.

Randomness is a pure function of ``(key, step s, row b, completion index j)``:
``kg, kr = split(fold_in(key, s))``; position j of row b draws its Gumbel noise (shape
``[V]``) from ``fold_in(fold_in(kg, b), j)`` and its random-remasking confidence from
``fold_in(fold_in(kr, b), j)``. Draws thus do not depend on how much of the canvas a step
looks at, which keeps the exact and Fast-dLLM samplers (and test references) comparable.
``s`` is the global step for the step plans, where every row takes every step; with
threshold decoding it is the row's own step count (its draws before its (s+1)-th step), as
is the index into an EOSER γ schedule: rows then wait for each other at block ends (below)
without that changing what any row samples.

Rows never depend on each other: threshold decoding's batch moves on to the next block
together, but a row that waits changes nothing, and its draws follow its own steps. So on a
data mesh (:mod:`row_shards`) each shard of the batch runs its own loop over its rows, with
no cross-device reduction per step, and its rows wait only for the rows of their shard;
tokens, step maps and log-probs equal the one-device run's. For the same reason
``rows_per_loop`` may split a batch (or shard) into groups decoded one loop after another
(:func:`row_shards.in_row_groups`), with the same outputs: a threshold loop runs until its
slowest row has filled every block, and its idle rows compute every step until then, so on a
compute-bound CPU one row per loop saves that work (dual cache + threshold, tiny LLaDA, gen
256, 2 cores: 1.4x faster than one loop over 8 rows); on an accelerator, whose steps cost
the same for 1 row as for 8, keep one loop (the default). ``row_threads`` splits the batch
into groups that separate host threads decode at once, each with its own call of the
compiled sampler (:func:`row_shards.in_host_threads`; one device, no mesh): on a multi-core
CPU, where one loop's small ops keep one core busy, that is what a data mesh of CPU devices
gives without the device flag.

Positions: by default the cumulative count of real tokens, so a left-padded row sees the
same positions as when run alone. LLaDA's official code is padding-blind (positions are
``arange`` over the physical canvas, so left padding shifts them);
``padding_blind_positions=True`` reproduces that.

Recorded per committed token (see :mod:`common`): ``step_map`` (1-based, counted per row
over the steps that committed something in that row), ``logprobs`` = ``token_logprob`` of
the *conditional, raw* logits at the pre-step state (temperature 1, before CFG mixing and
before ``logits_eos_inf``) — what a training forward over the stored state computes.
Tokens after the first EOS are set to ``pad_id`` with step map and log-prob 0; the untouched
canvas, step map and log-probs are kept as ``raw_*`` because CJ-GRPO trains on every
transition, EOS runs included (§3.3.5). ``states[k, b]`` is row b's completion after its
(k+1)-th decoding step (the final canvas for k ≥ num_steps[b]).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.models import masks as masks_lib
from jdiff.sampling import fast_dllm
from jdiff.sampling import schedules as sched
from jdiff.sampling.common import (
    F32,
    Trajectory,
    canvas_positions,
    config_error,
    finish,
    gumbel_argmax,
    is_positive_int,
    prob_at,
    select_top_n,
    stop_lengths,
    token_logprob,
    trajectory_row_specs,
    transfer_schedule,
)
from jdiff.sampling.row_shards import (
    check_row_threads,
    check_rows_per_loop,
    in_host_threads,
    in_row_groups,
    on_row_shards,
    row_shard_axes,
    shard_count,
)
from jdiff.sharding.rules import SAMPLING_RULES, use_rules

REMASKING = ("low_confidence", "random")
_DEFAULT_GAMMA = {"uniform": "linear", "ass": "ass"}  # eoser=True picks the paper's pairing


@dataclasses.dataclass(frozen=True)
class LLaDASamplerConfig:
  """Settings of :func:`sample`; hashable, so one compiled program serves each setting."""

  gen_length: int = 128
  block_length: int = 32  # ASS: only fixes the number of blocks, gen_length // block_length
  steps: int = 64
  temperature: float = 0.0
  remasking: str = "low_confidence"
  cfg_scale: float = 0.0
  schedule: str = "uniform"  # schedules.STEP_SCHEDULES
  eoser: Union[bool, str] = False  # False | True (schedule's paired γ) | a GAMMA_SCHEDULES name
  eos_min_gamma: float = 0.01
  eos_max_gamma: float = 1.0
  logits_eos_inf: bool = False  # forbid EOS in sampling (LLaDA's option); logprobs stay raw
  record_states: bool = False
  padding_blind_positions: bool = False
  cache: str = "none"  # Fast-dLLM: none | prefix | dual
  threshold: Optional[float] = None  # Fast-dLLM parallel decoding: commit conf >= threshold
  # Decode the batch (each data shard's rows) in groups of this many rows, one loop per
  # group, one group after another; None = one loop. Same outputs for every grouping (see
  # the module doc); small groups save idle rows' work on a compute-bound CPU.
  rows_per_loop: Optional[int] = None
  # Decode the batch as this many equal groups of rows, each by its own call of the compiled
  # sampler from its own host thread, all at once (one device, no mesh); same outputs.
  row_threads: int = 1

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def total_steps(self) -> int:
    """The most decoding steps a full decode takes: ``steps``, or with threshold decoding
    (at least one token per step) ``gen_length``."""
    return self.gen_length if self.threshold is not None else self.steps

  @property
  def gamma_name(self) -> Optional[str]:
    if self.eoser is False or self.eoser is None:
      return None
    return _DEFAULT_GAMMA[self.schedule] if self.eoser is True else self.eoser

  def plan(self) -> sched.StepPlan:
    return sched.step_plan(self.schedule, self.gen_length, self.num_blocks, self.steps)

  def validate(self, model_config=None) -> "LLaDASamplerConfig":
    """Raises ValueError naming the offending field; runs before anything is traced.
    ``model_config`` (optional) is checked to be a model this sampler decodes."""

    def bad(field, why):
      raise config_error(self, field, why)

    for f in ("gen_length", "block_length", "steps"):
      if not isinstance(getattr(self, f), (int, np.integer)) or getattr(self, f) <= 0:
        bad(f, "must be a positive int")
    if self.gen_length % self.block_length:
      bad("gen_length", f"not divisible by block_length={self.block_length}")
    if self.remasking not in REMASKING:
      bad("remasking", f"expected one of {REMASKING}")
    if self.schedule not in sched.STEP_SCHEDULES:
      bad("schedule", f"expected one of {sorted(sched.STEP_SCHEDULES)}")
    if self.schedule == "uniform" and self.steps % self.num_blocks:
      bad("steps", f"not divisible by the number of blocks {self.num_blocks}")
    if self.schedule == "ass":
      if self.gen_length < 2:
        bad("gen_length", "ASS needs at least 2 tokens")
      s_total = sched.ass_num_steps(self.gen_length)
      if self.steps != s_total:
        bad("steps", f"ASS needs steps = floor(log2(gen_length)) = {s_total}")
      if self.num_blocks > s_total:
        bad("block_length", f"ASS supports at most {s_total} blocks, got {self.num_blocks}")
    if self.temperature < 0:
      bad("temperature", "must be >= 0")
    if self.cfg_scale < 0:
      bad("cfg_scale", "must be >= 0")
    if not (self.eoser in (False, True, None) or self.eoser in sched.GAMMA_SCHEDULES):
      bad("eoser", f"expected a bool or one of {sorted(sched.GAMMA_SCHEDULES)}")
    if not 0 <= self.eos_min_gamma <= self.eos_max_gamma:
      bad("eos_min_gamma", f"need 0 <= eos_min_gamma <= eos_max_gamma={self.eos_max_gamma}")
    if self.cache not in fast_dllm.CACHE_MODES:
      bad("cache", f"expected one of {fast_dllm.CACHE_MODES}")
    if self.threshold is not None and not 0 < self.threshold <= 1:
      bad("threshold", "must be None or in (0, 1]")
    if self.rows_per_loop is not None and not is_positive_int(self.rows_per_loop):
      bad("rows_per_loop", "must be None or a positive int")
    if not is_positive_int(self.row_threads):
      bad("row_threads", "must be a positive int")
    fast = self.cache != "none" or self.threshold is not None
    if fast and self.schedule != "uniform":
      bad("schedule", "Fast-dLLM cache/threshold decoding needs equal blocks ('uniform')")
    if self.threshold is not None and self.remasking != "low_confidence":
      bad("remasking", "threshold decoding ranks by model confidence ('low_confidence')")
    if self.cache != "none" and self.cfg_scale > 0:
      bad("cfg_scale", "CFG is not supported together with a Fast-dLLM cache")
    if model_config is not None:
      _check_model(model_config)
    return self


# The common record carries the canvas before EOS truncation (raw_*), which CJ-GRPO needs.
LLaDATrajectory = Trajectory


@flax.struct.dataclass
class _Carry:
  iteration: jax.Array  # global step (loop iteration), indexes the plan / keys / γ
  block: jax.Array  # current block (threshold decoding only)
  step_in_block: jax.Array  # step within the block (threshold decoding only)
  canvas: jax.Array  # [B, G] completion canvas
  step_map: jax.Array
  logprobs: jax.Array
  num_steps: jax.Array  # [B] decoding steps so far, per row
  done: jax.Array  # [B] no mask left in the completion
  states: Optional[jax.Array] = None


def sample(
    model, prompt_ids, prompt_mask, key, config: LLaDASamplerConfig, *, row_offset: int = 0
) -> LLaDATrajectory:
  """Samples ``config.gen_length`` tokens after each left-padded prompt ``[B, P]``.
  ``row_offset``: the global index of the first row when the batch is a slice of a larger
  one (row b draws with row ``row_offset + b``'s keys; traced, so no recompile)."""
  graphdef, state = nnx.split(model)
  return sample_state(graphdef, state, prompt_ids, prompt_mask, key, config, row_offset=row_offset)


def sample_state(
    graphdef,
    state,
    prompt_ids,
    prompt_mask,
    key,
    config: LLaDASamplerConfig,
    *,
    row_offset: int = 0,
) -> LLaDATrajectory:
  """:func:`sample` on a split model (what an RL loop holds between updates)."""
  config.validate(nnx.merge(graphdef, state).config)
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  if prompt_ids.ndim != 2:
    raise ValueError(f"prompt_ids must be [B, P], got shape {prompt_ids.shape}")
  prompt_mask = (
      jnp.ones(prompt_ids.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
  )
  if prompt_mask.shape != prompt_ids.shape:
    raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_ids {prompt_ids.shape}")
  n_rows = prompt_ids.shape[0]
  threads = check_row_threads(config.row_threads, n_rows, "LLaDASamplerConfig.row_threads")
  owner = "LLaDASamplerConfig.rows_per_loop"
  # Sampling layout: weights are not FSDP-gathered at every step.
  with use_rules(SAMPLING_RULES):
    if threads == 1:
      row_axes = row_shard_axes(n_rows, state)
      check_rows_per_loop(config.rows_per_loop, n_rows, shard_count(row_axes), owner)
      return _sample_jit(
          graphdef,
          state,
          prompt_ids,
          prompt_mask,
          key,
          np.int32(row_offset),
          config=config,
          row_axes=row_axes,
      )
    check_rows_per_loop(config.rows_per_loop, n_rows, threads, owner, "host threads")
    # Every thread count shares the compiled program of its group's shape.
    one = dataclasses.replace(config, row_threads=1)

    def call(rows, offset):
      return _sample_jit(graphdef, state, *rows, key, np.int32(row_offset) + offset, config=one)

    return in_host_threads(call, threads, _out_specs(one), (prompt_ids, prompt_mask))


def _out_specs(config: LLaDASamplerConfig):
  return trajectory_row_specs(config.record_states, raw_logprobs=True)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "row_axes"))
def _sample_jit(
    graphdef, state, prompt_ids, prompt_mask, key, row_offset=0, *, config, row_axes=()
):
  """The sampler; with ``row_axes`` (``row_shards.row_shard_axes``) one loop per row shard
  (per group of ``config.rows_per_loop`` rows of it). ``row_offset``: the global index of
  the first row (a host thread's group, for its keys)."""

  def one_loop(shared, rows, row_offset):
    state, key = shared
    return _run(nnx.merge(graphdef, state), *rows, key, config, row_offset)

  def run(shared, rows, row_offset):
    return in_row_groups(
        one_loop, config.rows_per_loop, _out_specs(config), shared, rows, row_offset
    )

  return on_row_shards(
      run, row_axes, _out_specs(config), (state, key), (prompt_ids, prompt_mask), row_offset
  )


def _check_model(mc):
  if mc.block_causal or mc.shift_logits:
    raise ValueError(
        f"LLaDASamplerConfig: the llada sampler needs a bidirectional, unshifted "
        f"model (llada), not {mc.family!r}"
    )
  if mc.mask_token_id is None or mc.eos_token_id is None:
    raise ValueError("LLaDASamplerConfig: the model config needs mask_token_id and " "eos_token_id")


def _position_keys(keys, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Keys ``[B, W]``: ``fold_in(fold_in(keys[b], rows[b]), col)`` (the scheme in the module
  doc); ``keys`` ``[B]`` holds each row's step key, ``rows`` the global row indices."""
  per_row = jax.vmap(jax.random.fold_in)(keys, rows)
  return jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(cols))(per_row)


def _run(
    model, prompt_ids, prompt_mask, key, c: LLaDASamplerConfig, row_offset=0
) -> LLaDATrajectory:
  """The sampler on rows ``[row_offset, row_offset + B)`` of the batch (a row shard's)."""
  mc = model.config
  _check_model(mc)
  b, p = prompt_ids.shape
  g, bk = c.gen_length, c.block_length
  mask_id, eos = mc.mask_token_id, mc.eos_token_id
  pad_id = eos if mc.pad_token_id is None else mc.pad_token_id
  plan = c.plan()
  use_threshold = c.threshold is not None
  # Logits are only needed on the current block: a window of the widest block's size.
  width = bk if c.schedule == "uniform" else plan.max_block_size
  max_steps = g if use_threshold else plan.num_steps
  counts, starts, ends = (jnp.asarray(a) for a in (plan.counts, plan.block_start, plan.block_end))
  gammas = None
  if c.gamma_name is not None:
    gammas = jnp.asarray(
        sched.gamma_schedule(c.gamma_name, plan.num_steps, c.eos_min_gamma, c.eos_max_gamma)
    )

  rows = row_offset + jnp.arange(b, dtype=jnp.int32)  # global row indices (keys)
  valid = jnp.concatenate([prompt_mask, jnp.ones((b, g), bool)], axis=1)
  positions = canvas_positions(valid, c.padding_blind_positions)
  attn = masks_lib.bidirectional(valid)

  def window_logits(comp, ws):
    """(conditional logits, guided logits) ``[B, width, V]`` on completion ``[ws, ws+width)``."""
    canvas = jnp.concatenate([prompt_ids, comp], axis=1)
    # Only the window's hidden states: the last layer and the LM head skip the other rows.
    if c.cfg_scale > 0:
      uncond = jnp.where(valid & (jnp.arange(p + g) < p), mask_id, canvas)
      h, _ = model.backbone(
          jnp.concatenate([canvas, uncond]),
          jnp.concatenate([positions, positions]),
          jnp.concatenate([attn, attn]),
          window=(p + ws, width),
      )
    else:
      h, _ = model.backbone(canvas, positions, attn, window=(p + ws, width))
    lg = model.logits_from_hidden(h)
    if c.cfg_scale == 0:
      return lg, lg
    cond, un = lg[:b], lg[b:]
    return cond, un + (c.cfg_scale + 1.0) * (cond - un)

  def decode(cr: _Carry, logits, guided, bs, be, ws, count) -> _Carry:
    """One decoding step on the window ``[ws, ws + width)`` given its logits: candidates,
    confidence, the commit set among the masks of ``[bs, be)``, and the records."""
    # Never propose the mask token itself: committing it would leave a "decoded" mask (LLaDA
    # would silently re-decode it later, breaking the step map). Trained models give it ~0 mass.
    guided = guided.at[..., mask_id].set(-jnp.inf)
    if c.logits_eos_inf:
      guided = guided.at[..., eos].set(-jnp.inf)

    cols = ws + jnp.arange(width, dtype=jnp.int32)
    # Threshold decoding: each row's own step count (rows wait at block ends; see module doc).
    step = cr.num_steps if use_threshold else jnp.full((b,), cr.iteration)
    step_keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(key, s)))(step)
    kg, kr = step_keys[:, 0], step_keys[:, 1]
    if c.temperature == 0:
      xhat = gumbel_argmax(None, guided, 0.0)
    else:
      pos_keys = _position_keys(kg, rows, cols)
      xhat = jax.vmap(jax.vmap(gumbel_argmax, (0, 0, None)), (0, 0, None))(
          pos_keys, guided, c.temperature
      )
    if c.remasking == "low_confidence":
      conf = prob_at(guided.astype(F32), xhat)
    else:
      pos_keys = _position_keys(kr, rows, cols)
      conf = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (), F32)))(pos_keys)
    if gammas is not None:  # EOSER: rank EOS candidates lower early on
      gamma = gammas[jnp.minimum(step, gammas.shape[0] - 1)][:, None]
      conf = jnp.where(xhat == eos, conf * gamma, conf)

    win = jax.lax.dynamic_slice_in_dim(cr.canvas, ws, width, axis=1)
    eligible = (win == mask_id) & (cols >= bs) & (cols < be)
    if use_threshold:
      commit = fast_dllm.threshold_select(conf, eligible, c.threshold)
    else:
      commit = select_top_n(conf, eligible, jnp.full((b,), count, jnp.int32))
    decoded = jnp.any(commit, axis=-1)
    nsteps = cr.num_steps + decoded.astype(jnp.int32)

    def put(full, new):
      old = jax.lax.dynamic_slice_in_dim(full, ws, width, axis=1)
      return jax.lax.dynamic_update_slice_in_dim(full, jnp.where(commit, new, old), ws, axis=1)

    comp = put(cr.canvas, xhat)
    step_map = put(cr.step_map, jnp.broadcast_to(nsteps[:, None], commit.shape))
    logprobs = put(cr.logprobs, token_logprob(logits, xhat))
    states = cr.states
    if states is not None:  # row r's (k+1)-th step goes to states[k, r]
      slot = jnp.where(decoded, nsteps - 1, states.shape[0])
      states = states.at[slot, jnp.arange(b)].set(comp, mode="drop")
    return cr.replace(
        iteration=cr.iteration + 1,
        canvas=comp,
        step_map=step_map,
        logprobs=logprobs,
        num_steps=nsteps,
        done=~jnp.any(comp == mask_id, axis=-1),
        states=states,
    )

  def block_open(comp, bs, be):
    """Whether any row still has a mask in ``[bs, be)`` (threshold decoding moves the batch
    on only once every row's block is full, as Fast-dLLM's batched loop does)."""
    cidx = jnp.arange(g)
    return jnp.any((comp == mask_id) & (cidx >= bs) & (cidx < be))

  def body(cr: _Carry) -> _Carry:
    if use_threshold:
      bs = cr.block * bk
      be, count = bs + bk, None
    else:
      bs, be, count = starts[cr.iteration], ends[cr.iteration], counts[cr.iteration]
    ws = jnp.minimum(bs, g - width)  # the window always contains [bs, be)
    logits, guided = window_logits(cr.canvas, ws)
    cr = decode(cr, logits, guided, bs, be, ws, count)
    if use_threshold:
      is_open = block_open(cr.canvas, bs, be)
      cr = cr.replace(
          block=jnp.where(is_open, cr.block, cr.block + 1),
          step_in_block=jnp.where(is_open, cr.step_in_block + 1, 0),
      )
    return cr

  def cond(cr: _Carry):
    go = (cr.iteration < max_steps) & ~jnp.all(cr.done)
    return go & (cr.block < c.num_blocks) if use_threshold else go

  zero = jnp.zeros((), jnp.int32)
  init = _Carry(
      iteration=zero,
      block=zero,
      step_in_block=zero,
      canvas=jnp.full((b, g), mask_id, jnp.int32),
      step_map=jnp.zeros((b, g), jnp.int32),
      logprobs=jnp.zeros((b, g), F32),
      num_steps=jnp.zeros((b,), jnp.int32),
      done=jnp.zeros((b,), bool),
      states=jnp.zeros((max_steps, b, g), jnp.int32) if c.record_states else None,
  )
  if c.cache == "none":
    out = jax.lax.while_loop(cond, body, init)
    return _finish(out, prompt_ids, prompt_mask, eos, pad_id)

  # Fast-dLLM: an unrolled loop over blocks (so each block's shapes are static: the prefix
  # cache holds exactly the slots before the block and its suffix pass exactly the tokens
  # from the block on); the refresh runs once per block, the cached steps in a while_loop.
  per_block = plan.num_steps // c.num_blocks
  out = init
  for blk in range(c.num_blocks):
    bs, be = blk * bk, (blk + 1) * bk
    block_counts = jnp.asarray(transfer_schedule(bk, per_block))
    step0 = out.iteration  # the block's first global step

    def count_at(cr, step0=step0, block_counts=block_counts):
      return None if use_threshold else block_counts[cr.iteration - step0]

    canvas = jnp.concatenate([prompt_ids, out.canvas], axis=1)
    h, cache = fast_dllm.refresh(model, c.cache, canvas, positions, attn, valid, p + bs, bk)
    logits = model.logits_from_hidden(h)
    out = decode(out, logits, logits, bs, be, bs, count_at(out))

    def cached_body(cr, bs=bs, be=be, cache=cache, count_at=count_at):
      canvas = jnp.concatenate([prompt_ids, cr.canvas], axis=1)
      h = fast_dllm.cached_hidden(model, c.cache, canvas, positions, cache, p + bs, bk)
      logits = model.logits_from_hidden(h)
      return decode(cr, logits, logits, bs, be, bs, count_at(cr))

    def cached_cond(cr, bs=bs, be=be, step0=step0):
      go = (cr.iteration < max_steps) & ~jnp.all(cr.done)
      if use_threshold:
        return go & block_open(cr.canvas, bs, be)
      return go & (cr.iteration < step0 + per_block)

    out = jax.lax.while_loop(cached_cond, cached_body, out)
  return _finish(out, prompt_ids, prompt_mask, eos, pad_id)


def _finish(out: _Carry, prompt_ids, prompt_mask, eos: int, pad_id: int) -> LLaDATrajectory:
  """Truncates after the first EOS and assembles the trajectory."""
  return finish(
      prompt_ids,
      prompt_mask,
      out.canvas,
      out.step_map,
      out.logprobs,
      stop_lengths(out.canvas, (eos,)),
      out.num_steps,
      pad_id,
      states=out.states,
  )
