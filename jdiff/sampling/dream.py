"""Dream's ``diffusion_generate`` as one jit-compiled loop that records the trajectory.

What it follows (docs/formats.md §Families, tracerl.md §3.2, d1_cjgrpo_dtrpo.md §5-6):

- Canvas ``[prompt | G masks]`` over a left-padded prompt batch. Padding is handled as Dream's
  ``generate`` does: attention is bidirectional over non-pad keys (a pad query sees only
  itself), and positions are ``tok_idx = cumsum(valid) - 1`` with pads set to 1 (Dream sets
  them to 1; they are never attended to, so the value does not matter).
- Dream is AR-initialised: the logit at position i predicts token i+1. Every step realigns
  them as ``logits' = concat(logits[:, :1], logits[:, :-1])``, so completion position j reads
  the output at j-1 (models whose ``config.shift_logits`` is False are read unshifted).
  Only the rows needed are projected through the LM head (the current window), which gives
  the same numbers as projecting all of them.
- ``t, s`` come from ``linspace(1, eps, steps + 1)``. ``origin``: each mask is revealed with
  probability ``1 - s/t`` (all of them at the last step). Other algorithms sample a token at
  every mask, score it (``maskgit_plus``: its probability; ``topk_margin``: top1 - top2;
  ``entropy``: sum p log p) and commit the ``int(n_mask * (1 - s/t))`` best (all at the last
  step); with ``alg_temp > 0`` the positions are drawn without replacement from
  ``softmax(conf / alg_temp)`` (Gumbel-top-k, the same law as torch.multinomial).
- The commit count. The original uses the *batch-averaged* mask count for every row;
  here ``n_mask`` is per row by default (``batch_mean_count=True`` restores the original).
  Every row starts with G masks and commits the same number per step, so both give the same
  counts until rows diverge: once a row has stopped (``stop_at_eos``; it counts as having no
  masks, as dLLM-RL fills a stopped row with pad) the batch mean under-commits for the
  others. The last step of a block always commits every mask left in the row. Counts are
  always clamped to the row's remaining masks, so decoded tokens are never overwritten (the
  original's top-k could then pick already-decoded positions and re-mask them).
- ``block_length`` (Fast-dLLM's Dream version / dLLM-RL ``dream_rl_rollout``): the completion
  is cut into blocks of ``block_length`` counted from the prompt end, ``steps`` are split
  evenly over blocks, the schedule ``linspace(1, eps, steps_per_block + 1)`` restarts in every
  block with ``n_mask`` counted inside the block, and only positions of the current block may
  be unmasked. Each step runs a full forward over the whole canvas (no approximate prefix
  cache), so the numbers equal a plain forward at the same state. With ``stop_at_eos`` a row
  stops after the block holding its first stop token (dLLM-RL stops once a block decodes to
  pad); its later positions stay masked (step_map 0) and become pad in ``tokens``.
- Sampling: temperature -> top-k -> top-p (:func:`filter_logits`; Dream's own order is top-p
  then top-k), then a categorical draw; ``temperature == 0`` is argmax. Confidences come from
  the softmax of the filtered logits (temperature 1 when greedy), as Dream's ``sample_tokens``.
- Differences from the original: only the completion region is ever unmasked (a mask id
  inside the prompt is left alone); top-k ties go to the leftmost position; the mask token
  is excluded from sampling and confidences (Dream would commit a drawn mask id, leaving the
  position masked while the step map says decoded; trained checkpoints give it ~0 mass).
  Log-probs still use the raw logits.
- Randomness, per row as in the other samplers: row b (global index, ``row_offset + b``)
  draws at global step s with ``k_tok, k_pos = split(fold_in(fold_in(key, b), s))``;
  ``k_tok`` draws the row's window tokens ``[W, V]``, ``k_pos`` its ``uniform [W]`` (origin)
  or ``gumbel [W]`` (``alg_temp > 0``). W = G without blocks, ``block_length`` with them.
  A row's draws thus do not depend on the other rows (nor, with per-row commit counts, its
  output: ``batch_mean_count=True`` couples the rows' counts).

Trajectory (see :mod:`jdiff.sampling.common`; the same conventions as the LLaDA sampler):
``step_map`` is 1-based and counted per row over the steps that committed something in that
row (global across blocks; equal to the schedule's step index whenever every step commits,
as with the linear schedule and steps <= gen_length); ``num_steps`` is that count.
``logprobs`` are of the committed token under the shifted temperature-1 logits at the
pre-step state, what a training forward with the shift computes. After the first stop token
``tokens`` are ``pad_id`` and step map / log-prob 0; the untouched canvas, step map and
log-probs are kept as ``raw_*`` (the full-attention model saw those positions, so a trainer
that rebuilds exact states needs them; never-decoded positions have raw step 0 and stay mask
ids). ``states[k, b]`` is row b's raw completion after its (k+1)-th decoding step (the final
canvas for k >= num_steps[b]).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.models import masks as masks_lib
from jdiff.sampling.common import (
    F32,
    Trajectory,
    canvas_positions,
    config_error,
    filter_logits,
    finish,
    row_keys,
    select_top_n,
    stop_lengths,
    token_logprob,
)
from jdiff.sharding.rules import SAMPLING_RULES, use_rules

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def _conf_maskgit_plus(probs, ids):
  return jnp.take_along_axis(probs, ids[..., None], axis=-1)[..., 0]


def _conf_topk_margin(probs, ids):
  top2 = jax.lax.top_k(probs, 2)[0]
  return top2[..., 0] - top2[..., 1]


def _conf_entropy(probs, ids):
  return jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)


# Unmasking strategies by name (``alg``); ``origin`` needs no confidence.
CONFIDENCE = {
    "maskgit_plus": _conf_maskgit_plus,
    "topk_margin": _conf_topk_margin,
    "entropy": _conf_entropy,
}


@dataclasses.dataclass(frozen=True)
class DreamSamplerConfig:
  gen_length: int = 256
  steps: int = 256
  eps: float = 1e-3
  temperature: float = 0.0
  top_p: Optional[float] = None  # None or 1.0: off
  top_k: Optional[int] = None  # None or 0: off
  alg: str = "origin"
  alg_temp: Optional[float] = None  # None/0: top-k positions; > 0: sampled positions
  block_length: Optional[int] = None  # None: Dream's whole-sequence algorithm
  batch_mean_count: bool = False  # True: Dream's batch-averaged commit count
  stop_at_eos: bool = True  # blocks only: a row stops after the block with its stop token
  stop_ids: Tuple[int, ...] = ()  # extra stop ids besides the model's eos (e.g. <|im_end|>)
  record_states: bool = False

  def __post_init__(self):  # lists would make the config unhashable (it is a jit static arg)
    object.__setattr__(self, "stop_ids", tuple(self.stop_ids))

  def validate(self, model_config=None) -> "DreamSamplerConfig":
    """Raises ValueError naming the offending field; runs before anything is traced.
    ``model_config`` (optional) is checked to be a model this sampler decodes."""

    def bad(field, msg):
      raise config_error(self, field, msg)

    def is_int(v):
      return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for f in ("gen_length", "steps"):
      if not is_int(getattr(self, f)) or getattr(self, f) <= 0:
        bad(f, "must be a positive int")
    if not 0.0 < float(self.eps) < 1.0:
      bad("eps", "must be in (0, 1)")
    if float(self.temperature) < 0:
      bad("temperature", "must be >= 0")
    if self.top_p is not None and not 0.0 < float(self.top_p) <= 1.0:
      bad("top_p", "must be in (0, 1] (or None)")
    if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
      bad("top_k", "must be an int >= 0 (or None)")
    if self.alg not in ALGS:
      bad("alg", f"expected one of {ALGS}")
    if self.alg_temp is not None and float(self.alg_temp) < 0:
      bad("alg_temp", "must be >= 0 (or None)")
    if self.block_length is not None:
      if not is_int(self.block_length) or self.block_length <= 0:
        bad("block_length", "must be a positive int (or None)")
      if self.gen_length % self.block_length:
        bad("gen_length", f"must be divisible by block_length={self.block_length}")
      if self.steps % self.num_blocks:
        bad("steps", f"must be divisible by the number of blocks {self.num_blocks}")
    if not all(is_int(i) for i in self.stop_ids):
      bad("stop_ids", "must be a tuple of token ids")
    if model_config is not None:
      _check_model(model_config)
    return self

  @property
  def num_blocks(self) -> int:
    return 1 if self.block_length is None else self.gen_length // self.block_length

  @property
  def window(self) -> int:
    return self.gen_length if self.block_length is None else self.block_length

  @property
  def steps_per_block(self) -> int:
    return self.steps // self.num_blocks

  @property
  def total_steps(self) -> int:
    """The most decoding steps a full decode takes (every step may commit)."""
    return self.steps

  def transfer_ratios(self) -> np.ndarray:
    """``1 - s/t`` for each step of a block, float32 (as Dream computes it in torch)."""
    ts = np.linspace(1.0, self.eps, self.steps_per_block + 1).astype(np.float32)
    return (np.float32(1.0) - ts[1:] / ts[:-1]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Ids:
  mask: int
  pad: int
  stops: Tuple[int, ...]
  shift: bool


# The common record carries the canvas before the stop-token truncation (raw_*).
DreamTrajectory = Trajectory


def _check_model(mc):
  if mc.block_causal:
    raise ValueError(
        f"DreamSamplerConfig: the dream sampler needs a bidirectional model, not " f"{mc.family!r}"
    )
  if mc.mask_token_id is None or mc.eos_token_id is None:
    raise ValueError(
        "DreamSamplerConfig: the model config needs mask_token_id and " "eos_token_id for sampling"
    )


@flax.struct.dataclass
class _Carry:
  iteration: jax.Array  # scalar int32: global steps done
  canvas: jax.Array  # [B, G] completion canvas (mask ids where undecided)
  step_map: jax.Array  # [B, G] int32
  logprobs: jax.Array  # [B, G] float32
  num_steps: jax.Array  # [B] int32: steps that committed something, per row
  done: jax.Array  # [B] bool
  states: Optional[jax.Array]  # [S, B, G] or None


def dream_positions(valid: jax.Array) -> jax.Array:
  """Dream's ``tok_idx``: ``cumsum(valid) - 1`` with pad positions set to 1 (they are
  never attended to)."""
  return canvas_positions(valid, pad_position=1)


def shift_logits(logits: jax.Array) -> jax.Array:
  """Dream's realignment: position j reads the output at j-1 (position 0 keeps its own)."""
  return jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "ids"))
def _sample_jit(
    graphdef,
    state,
    prompt_ids,
    prompt_mask,
    key,
    row_offset=0,
    *,
    cfg: DreamSamplerConfig,
    ids: _Ids,
) -> DreamTrajectory:
  """The sampler; ``row_offset`` (traced): the global index of the first row, for its keys."""
  model = nnx.merge(graphdef, state)
  b, p = prompt_ids.shape
  g, w, spb = cfg.gen_length, cfg.window, cfg.steps_per_block
  valid = jnp.concatenate([prompt_mask, jnp.ones((b, g), bool)], axis=1)
  positions = dream_positions(valid)
  attn = masks_lib.bidirectional(valid)
  ratios = jnp.asarray(cfg.transfer_ratios())
  stops = jnp.asarray(ids.stops, jnp.int32)
  temperature = float(cfg.temperature)
  top_k, top_p = int(cfg.top_k or 0), float(cfg.top_p or 1.0)
  alg_temp = float(cfg.alg_temp or 0.0)
  keys = row_keys(key, b, row_offset)

  def body(c: _Carry) -> _Carry:
    i = c.iteration % spb
    start = (c.iteration // spb) * w
    last = i == spb - 1
    tokens = jnp.concatenate([prompt_ids, c.canvas], axis=1)
    h, _ = model.backbone(tokens, positions, attn, window=(p + start - int(ids.shift), w))
    logits = model.logits_from_hidden(h)  # [B, W, V] float32, already shifted
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, c.iteration)))(keys)
    k_tok, k_pos = step_keys[:, 0], step_keys[:, 1]
    filtered = filter_logits(
        logits.at[..., ids.mask].set(-jnp.inf),
        temperature if temperature > 0 else 1.0,
        top_k,
        top_p,
    )
    if temperature > 0:
      new = jax.vmap(jax.random.categorical)(k_tok, filtered).astype(jnp.int32)
    else:
      new = jnp.argmax(filtered, axis=-1).astype(jnp.int32)
    win = jax.lax.dynamic_slice_in_dim(c.canvas, start, w, axis=1)
    eligible = (win == ids.mask) & ~c.done[:, None]
    if cfg.alg == "origin":
      u = jax.vmap(lambda k: jax.random.uniform(k, (w,), F32))(k_pos)
      transfer = eligible & ((u < ratios[i]) | last)
    else:
      conf = CONFIDENCE[cfg.alg](jax.nn.softmax(filtered, axis=-1), new)
      if alg_temp > 0:
        conf = conf / alg_temp + jax.vmap(lambda k: jax.random.gumbel(k, (w,), F32))(k_pos)
      n_row = jnp.sum(eligible, axis=-1).astype(F32)  # a stopped row counts no masks
      n_mask = jnp.broadcast_to(jnp.mean(n_row), (b,)) if cfg.batch_mean_count else n_row
      count = jnp.floor(jnp.where(last, n_row, n_mask * ratios[i])).astype(jnp.int32)
      transfer = select_top_n(conf, eligible, count)
    new_win = jnp.where(transfer, new, win)
    put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, start, axis=1)
    canvas = put(c.canvas, new_win)
    committed = jnp.any(transfer, axis=-1)
    num_steps = c.num_steps + committed.astype(jnp.int32)
    step_map = put(
        c.step_map,
        jnp.where(
            transfer, num_steps[:, None], jax.lax.dynamic_slice_in_dim(c.step_map, start, w, 1)
        ),
    )
    logprobs = put(
        c.logprobs,
        jnp.where(
            transfer,
            token_logprob(logits, new),
            jax.lax.dynamic_slice_in_dim(c.logprobs, start, w, 1),
        ),
    )
    done = c.done | ~jnp.any(canvas == ids.mask, axis=-1)
    if cfg.stop_at_eos:
      done = done | (last & jnp.any(jnp.isin(new_win, stops), axis=-1))
    states = c.states
    if states is not None:  # row b's canvas after its own k-th step (rows not stepping: dropped)
      slot = jnp.where(committed, num_steps - 1, cfg.steps)
      states = states.at[slot, jnp.arange(b)].set(canvas, mode="drop")
    return _Carry(
        iteration=c.iteration + 1,
        canvas=canvas,
        step_map=step_map,
        logprobs=logprobs,
        num_steps=num_steps,
        done=done,
        states=states,
    )

  def cond(c: _Carry):
    return (c.iteration < cfg.steps) & ~jnp.all(c.done)

  init = _Carry(
      iteration=jnp.zeros((), jnp.int32),
      canvas=jnp.full((b, g), ids.mask, jnp.int32),
      step_map=jnp.zeros((b, g), jnp.int32),
      logprobs=jnp.zeros((b, g), F32),
      num_steps=jnp.zeros((b,), jnp.int32),
      done=jnp.zeros((b,), bool),
      states=(jnp.zeros((cfg.steps, b, g), jnp.int32) if cfg.record_states else None),
  )
  c = jax.lax.while_loop(cond, body, init)
  # A row's states after its last step repeat its final canvas.
  return finish(
      prompt_ids,
      prompt_mask,
      c.canvas,
      c.step_map,
      c.logprobs,
      stop_lengths(c.canvas, ids.stops),
      c.num_steps,
      ids.pad,
      states=c.states,
  )


def sample(
    model, prompt_ids, prompt_mask, key: Optional[jax.Array], config: DreamSamplerConfig
) -> DreamTrajectory:
  """Runs Dream's sampler on a left-padded batch (``prompt_ids``/``prompt_mask`` ``[B, P]``).

  Compiles once per (model graph, B, P, config); ``key`` may be None (PRNGKey(0)).
  """
  graphdef, state = nnx.split(model)
  return sample_state(graphdef, state, prompt_ids, prompt_mask, key, config)


def sample_state(
    graphdef,
    state,
    prompt_ids,
    prompt_mask,
    key: Optional[jax.Array],
    config: DreamSamplerConfig,
    *,
    row_offset: int = 0,
) -> DreamTrajectory:
  """:func:`sample` on a split model (what an RL loop holds between updates).

  ``row_offset``: the global index of the batch's first row when it is a slice of a larger
  batch (row b draws with the keys of row ``row_offset + b``); traced, so no recompile.
  """
  mc = nnx.merge(graphdef, state).config
  cfg = config.validate(mc)
  # A jax.Array stays where it lies: a multi-process global batch cannot be read on one host.
  pm = (
      prompt_mask.astype(bool)
      if isinstance(prompt_mask, jax.Array)
      else np.asarray(prompt_mask, bool)
  )
  if pm.ndim != 2 or pm.shape != np.shape(prompt_ids):
    raise ValueError(
        f"prompt_ids {np.shape(prompt_ids)} and prompt_mask {pm.shape} must both " f"be [B, P]"
    )
  if pm.shape[1] == 0 or not bool(pm[:, -1].all()):
    raise ValueError("prompts must be left-padded and non-empty (last column all real tokens)")
  if pm.shape[1] + cfg.gen_length > mc.max_position_embeddings:
    raise ValueError(
        f"prompt length {pm.shape[1]} + gen_length {cfg.gen_length} exceeds the "
        f"model's max_position_embeddings={mc.max_position_embeddings}"
    )
  pad = mc.pad_token_id if mc.pad_token_id is not None else mc.eos_token_id
  ids = _Ids(
      mask=int(mc.mask_token_id),
      pad=int(pad),
      shift=bool(mc.shift_logits),
      stops=tuple(sorted({int(mc.eos_token_id), *map(int, cfg.stop_ids)})),
  )
  if key is None:
    key = jax.random.PRNGKey(0)
  # Always traced under the sampling layout, so a cached trace never depends on the caller.
  with use_rules(SAMPLING_RULES):
    return _sample_jit(
        graphdef,
        state,
        jnp.asarray(prompt_ids, jnp.int32),
        jnp.asarray(pm),
        key,
        np.int32(row_offset),
        cfg=cfg,
        ids=ids,
    )
