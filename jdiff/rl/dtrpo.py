"""dTRPO: offline DPO on trajectory log-ratios estimated at one state per block, every block
scored in one forward.

Spec: docs/methods.md (dTRPO). For a preference pair (y_w, y_l) given a prompt x:
  ``Δ(y) = Σ_b Σ_j w_j [log π_θ(y_j | x, y_{<b}, ỹ_b) − log π_ref(y_j | …)]``,
  ``loss = −log σ(β (Δ(y_w) − Δ(y_l)))`` (mean over pairs),
where Δ(y) estimates the trajectory log-ratio ``Σ_t Σ_{j ∈ I_t} [log π_θ − log π_ref]`` of
decoding y (I_t: the tokens unmasked at step t). Per block b one step t_b ~ U{1..T_B} is drawn
(time reduction) and the state ỹ_b right before it is built: tokens decoded at or after t_b
are masked, earlier ones visible. Two estimators (:mod:`jdiff.rl.dtrpo_draws`):
- ``estimator="newly_unmasked"`` (the paper's): score only I_{t_b}, ``w = T_B``. Its
  expectation over t_b is the trajectory sum exactly. Orders: the sampler's recorded step
  map for self-sampled pairs (``PreferencePairs.chosen_steps``), a random order on the step
  grid for pairs from a file (no order recorded).
- ``estimator="remasked"`` (default): score every masked token with
  ``w = T_B k_t / m_t`` (``block_weight="inverse_t"``; ``n_b / m_b`` on an even grid). Under
  random-order decoding the newly unmasked k_t tokens are a uniform subset of the m_t masked
  ones given the state, so this has the SAME expectation as the paper's estimator (the
  expected trajectory sum) while scoring m_t instead of k_t tokens. ``block_weight="one"``
  (w = 1) is kept only as a biased ablation (~0.6x the log-ratio, state-dependent).
The step grid: ``steps_per_block`` = T_B (0: one token per step) with the static schedule;
when a block is decoded in T_B < n_b steps, only masked counts on that grid are states that
decoding visits. ``timesteps_per_block`` = K draws per block (K rows per response, Δ averaged);
``share_timesteps`` gives a pair's chosen and rejected the same t_b uniform.

Each (response, draw) is ONE row in the ``x_t ⊕ x_0`` layout: a clean copy of the prompt and
response and a noisy copy in which every block is in its drawn state; the block-diffusion mask
lets noisy block b see the clean blocks before it and itself, so all blocks are scored by one
forward. The draws are made in :func:`build_batch` and stored in the batch, so π_θ and π_ref
(``batch['ref_logp']``, precomputed once with :func:`logprob_fn`) score the same tokens.

Decisions where the spec is open (§4 "Unknowns"):
- Input: :class:`PreferencePairs` (shared left-padded prompt; chosen/rejected ids ``[B, G]``
  with lengths). ``advantages`` is unused (offline). Rows are ``[all chosen | all rejected]``,
  so the update step's strided micro-batch split keeps pairs together (and the first half of a
  micro-batch chosen) whenever ``grad_accum`` divides the number of pairs.
- Blocks: block models (SDAR) use the model's absolute-position blocks and the
  :func:`trace_rows.build_block_rows` layout ``[prompt | clean | noisy window]`` (the first
  block may hold prompt-tail tokens, which are in-block context and never re-masked).
  Full-attention models (LLaDA) use blocks of ``cfg.block_length`` counted from the completion
  start (LLaDA's semi-AR blocks) with the prompt as block 0, layout ``[prompt | clean | noisy]``.
  The model is then run with the block-diffusion mask, not its native bidirectional attention:
  a noisy block does not see the later (all-mask) blocks that semi-AR decoding shows it. This
  deviates from the model's training distribution but keeps the one-forward cost that is the
  point of the method, and θ and ref share the conditioning, so Δ stays a like-for-like
  log-ratio. Exact semi-AR states would need one row per block.
- Dream (shifted logits, full attention): output i predicts token i+1. Noisy token j reads
  noisy slot j−1, except the first token of block b, which reads the last CLEAN token of
  block b−1 (the last prompt slot for the first block); that slot sees exactly
  ``[prompt, y_<b]``, as in a separate ``[prompt, y_<b, ỹ_b]`` forward (``logit_source``).
- A block with n_b < T_B real tokens (a short last block, the prompt-tail block of SDAR) is
  decoded on min(T_B, n_b) steps. Every block contributes at least one scored token.
- β = 0.1 (a common DPO value; the paper's is unknown).
- EOS / padding: ``padding="drop"`` (default) treats y as its ``length`` tokens (EOS included,
  scored); slots after it are invisible and never scored. ``padding="eos"`` fills them with
  EOS and treats them as response tokens (LLaDA's SFT convention).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.models import masks
from jdiff.models.logprobs import model_token_logprobs, token_logprobs_chunked
from jdiff.rl import dtrpo_draws
from jdiff.rl.method import Method, register_method
from jdiff.rl.trace_rows import build_block_rows
from jdiff.sampling.common import Trajectory


@dataclasses.dataclass(frozen=True)
class PreferencePairs:
  """B preference pairs over a shared prompt; numpy (or array-like) fields."""

  prompt_ids: np.ndarray  # [B, P] left-padded
  prompt_mask: np.ndarray  # [B, P] bool
  chosen: np.ndarray  # [B, G] y_w ids (anything after chosen_lengths is ignored)
  chosen_lengths: np.ndarray  # [B] tokens of y_w, EOS included
  rejected: np.ndarray  # [B, G] y_l
  rejected_lengths: np.ndarray  # [B]
  # The sampler's step maps (the 1-based step that unmasked each token; 0 = unknown) for
  # self-sampled pairs; None for pairs from a file, which carry no decoding order.
  chosen_steps: Optional[np.ndarray] = None  # [B, G]
  rejected_steps: Optional[np.ndarray] = None  # [B, G]

  @classmethod
  def from_lists(
      cls,
      prompts: Sequence[Sequence[int]],
      chosen: Sequence[Sequence[int]],
      rejected: Sequence[Sequence[int]],
      pad_id: int,
      width: Optional[int] = None,
      chosen_steps: Optional[Sequence[Sequence[int]]] = None,
      rejected_steps: Optional[Sequence[Sequence[int]]] = None,
  ) -> "PreferencePairs":
    """Left-pads the prompts and right-pads both responses (and their step maps, with 0) to
    ``width`` (default: longest)."""
    p = max(len(x) for x in prompts)
    g = width or max(len(x) for x in list(chosen) + list(rejected))
    ids = np.full((len(prompts), p), pad_id, np.int32)
    pm = np.zeros((len(prompts), p), bool)
    for i, x in enumerate(prompts):
      if len(x):
        ids[i, p - len(x) :], pm[i, p - len(x) :] = x, True

    def right(rs, fill=pad_id):
      out = np.full((len(rs), g), fill, np.int32)
      for i, r in enumerate(rs):
        out[i, : len(r)] = r
      return out, np.array([len(r) for r in rs], np.int32)

    (cw, lw), (cl, ll) = right(chosen), right(rejected)
    sw = None if chosen_steps is None else right(chosen_steps, 0)[0]
    sl = None if rejected_steps is None else right(rejected_steps, 0)[0]
    return cls(ids, pm, cw, lw, cl, ll, sw, sl)


@dataclasses.dataclass(frozen=True)
class DTRPOConfig:
  beta: float = 0.1  # DPO temperature (a choice; see the module docstring)
  block_length: int = 32  # full-attention models only (LLaDA semi-AR block); SDAR: block_size
  estimator: str = "remasked"  # "remasked" | "newly_unmasked" (dtrpo_draws)
  block_weight: str = "inverse_t"  # remasked only: "inverse_t" (unbiased) | "one" (ablation)
  steps_per_block: int = 0  # T_B, the decoding grid; 0 = one token per step
  timesteps_per_block: int = 1  # K draws of t_b per block (K rows per response)
  share_timesteps: bool = False  # a pair's chosen and rejected share t_b
  padding: str = "drop"  # "drop" | "eos"
  chunk_size: int = 8192

  def __post_init__(self):
    if self.beta <= 0:
      raise ValueError(f"DTRPOConfig.beta must be > 0, got {self.beta}")
    if self.block_length < 1:
      raise ValueError(f"DTRPOConfig.block_length must be >= 1, got {self.block_length}")
    if self.estimator not in dtrpo_draws.ESTIMATORS:
      raise ValueError(
          f"DTRPOConfig.estimator={self.estimator!r}; expected one of " f"{dtrpo_draws.ESTIMATORS}"
      )
    if self.block_weight not in dtrpo_draws.BLOCK_WEIGHTS:
      raise ValueError(
          f"DTRPOConfig.block_weight={self.block_weight!r}; expected one of "
          f"{dtrpo_draws.BLOCK_WEIGHTS}"
      )
    if self.steps_per_block < 0:
      raise ValueError(f"DTRPOConfig.steps_per_block must be >= 0, got {self.steps_per_block}")
    if self.timesteps_per_block < 1:
      raise ValueError(
          "DTRPOConfig.timesteps_per_block must be >= 1, got " f"{self.timesteps_per_block}"
      )
    if self.padding not in ("drop", "eos"):
      raise ValueError(f"DTRPOConfig.padding={self.padding!r}; expected 'drop' or 'eos'")


def _full_attention_rows(pids, pmask, toks, lengths, block_length, pad_id):
  """``[prompt | clean response | noisy response]``; prompt = block 0, response block
  ``1 + j // block_length`` in both copies."""
  r, p = pids.shape
  g = toks.shape[1]
  plen = pmask.sum(-1)
  real = np.arange(g)[None] < lengths[:, None]
  rpos = plen[:, None] + np.arange(g)
  rblk = np.broadcast_to(1 + np.arange(g) // block_length, (r, g))
  zeros = np.zeros((r, p), np.int32)
  return dict(
      input_ids=np.concatenate([pids, toks, toks], 1),
      positions=np.concatenate([np.maximum(np.cumsum(pmask, -1) - 1, 0), rpos, rpos], 1),
      blocks=np.concatenate([zeros, rblk, rblk], 1),
      noisy=np.concatenate([np.zeros((r, p + g), bool), np.ones((r, g), bool)], 1),
      valid=np.concatenate([pmask, real, real], 1),
      targets=np.concatenate([np.full((r, p + g), pad_id), toks], 1),
  )


def _recorded_steps(pairs: PreferencePairs, g: int, cfg: DTRPOConfig) -> Optional[np.ndarray]:
  """The sampler's step maps ``[2B, G]`` (chosen then rejected) when the estimator uses them
  and the pairs carry them; else None (random orders on the grid)."""
  if cfg.estimator != "newly_unmasked" or pairs.chosen_steps is None:
    return None
  if pairs.rejected_steps is None:
    raise ValueError("PreferencePairs: chosen_steps given without rejected_steps")
  steps = np.concatenate([np.asarray(pairs.chosen_steps), np.asarray(pairs.rejected_steps)])
  if steps.shape != (2 * np.asarray(pairs.chosen).shape[0], g):
    raise ValueError(
        f"PreferencePairs: chosen_steps / rejected_steps must be [B, G={g}] like "
        f"chosen / rejected, got {steps.shape[1:]} per side"
    )
  return steps.astype(np.int64)


def _draw(key, resp_block, lengths, steps, cfg: DTRPOConfig):
  """Every row's per-block draws (:func:`dtrpo_draws.draw_block`): the input mask, the token
  weights (> 0 = scored) and the masked fraction of each token's block, each ``[R, G]``.
  Rows are ``[chosen x K | rejected x K]`` (equal halves); with
  ``share_timesteps`` a pair's chosen and rejected rows share the uniform behind t_b."""
  n_rows, g = resp_block.shape
  n_blocks = int(resp_block.max()) + 1
  kt, ku = jax.random.split(key)
  v = np.asarray(jax.random.uniform(kt, (n_rows, n_blocks)))
  if cfg.share_timesteps:
    v = np.concatenate([v[: n_rows // 2], v[: n_rows // 2]])
  u = np.asarray(jax.random.uniform(ku, (n_rows, g)))
  masked = np.zeros((n_rows, g), bool)
  weight = np.zeros((n_rows, g), np.float32)
  frac = np.zeros((n_rows, g), np.float32)
  for r in range(n_rows):
    real = np.arange(g) < lengths[r]
    for k in np.unique(resp_block[r][real]):
      idx = np.nonzero(real & (resp_block[r] == k))[0]
      rec = None if steps is None else steps[r, idx]
      m, w, _ = dtrpo_draws.draw_block(
          u[r, idx], float(v[r, k]), cfg.steps_per_block, cfg.estimator, cfg.block_weight, rec
      )
      masked[r, idx], weight[r, idx], frac[r, idx] = m, w, m.mean()
  return masked, weight, frac


def _logit_source(p: int, g: int, block_length: int, n_rows: int) -> np.ndarray:
  """For shifted-logit models (Dream) in ``[prompt P | clean G | noisy G]``: the slot whose
  output predicts each slot ``[R, N]``. Noisy token j reads slot j−1 of the noisy copy, except
  the first token of each block, which reads the last clean token of the block before (the
  last prompt slot for the first block): that slot sees exactly ``[prompt, y_<b]``, the
  prefix a separate ``[prompt, y_<b, ỹ_b]`` forward shows the shifted prediction."""
  src = np.maximum(np.arange(p + 2 * g) - 1, 0)
  j = np.arange(0, g, block_length)
  src[p + g + j] = p + j - 1
  return np.broadcast_to(src, (n_rows, p + 2 * g)).astype(np.int32)


def _layout(pids, pmask, toks, lengths, cfg: DTRPOConfig, c, pad_id: int):
  """The ``x_t ⊕ x_0`` rows (noisy copy all masks) and each response token's block, counted
  from the response's first block ``[R, G]``."""
  g = toks.shape[1]
  plen = pmask.sum(-1)
  if c.block_causal:
    blk = c.block_size
    traj = Trajectory(
        prompt_ids=pids,
        prompt_mask=pmask,
        tokens=toks,
        step_map=(np.arange(g)[None] < lengths[:, None]).astype(np.int32),
        logprobs=np.zeros(toks.shape, np.float32),
        lengths=lengths,
        num_steps=np.ones_like(lengths),
    )
    # shrink = block size: one round per response, every block of it fully noisy.
    rows = build_block_rows(
        traj, block_size=blk, mask_id=c.mask_token_id, pad_id=pad_id, shrink=blk
    )
    rows = {k: rows[k] for k in ("input_ids", "positions", "blocks", "noisy", "valid", "targets")}
    resp_block = (plen[:, None] + np.arange(g)) // blk
  else:
    rows = _full_attention_rows(pids, pmask, toks, lengths, cfg.block_length, pad_id)
    resp_block = np.broadcast_to(np.arange(g) // cfg.block_length, toks.shape)
  return rows, resp_block - resp_block[:, :1]  # 0 = the response's first block


def build_batch(pairs: PreferencePairs, advantages, key, cfg: DTRPOConfig, model_config) -> dict:
  """Pairs -> ``2B`` rows ``[chosen_0..B-1 | rejected_0..B-1]`` with the re-masking drawn
  from ``key``. Keys: ``input_ids``, ``positions``, ``blocks``, ``noisy``, ``valid``,
  ``targets``, ``loss_mask`` (scored tokens), ``token_weight`` (w on them),
  ``response_index``, ``mask_fraction`` (numpy); ``logit_source`` for shifted-logit models.
  With ``timesteps_per_block`` K the rows are ``[chosen x K | rejected x K]`` (``K·B`` each,
  draw-major)."""
  del advantages  # offline: the preference is the signal
  c = model_config
  if c.shift_logits and c.block_causal:
    raise ValueError(
        f"dTRPO: shifted logits with a block-causal model (family {c.family!r}) "
        "have no logit-alignment rule here"
    )
  if key is None:
    raise ValueError("dTRPO draws its re-masking from `key`; got None")
  pids = np.asarray(pairs.prompt_ids, np.int32)
  pmask = np.asarray(pairs.prompt_mask, bool)
  toks = np.concatenate([np.asarray(pairs.chosen), np.asarray(pairs.rejected)]).astype(np.int32)
  lengths = np.concatenate(
      [np.asarray(pairs.chosen_lengths), np.asarray(pairs.rejected_lengths)]
  ).astype(np.int32)
  nb, g = pids.shape[0], toks.shape[1]
  if toks.shape[0] != 2 * nb or np.asarray(pairs.rejected).shape[1] != g:
    raise ValueError("chosen and rejected must both be [B, G] with B = prompt_ids.shape[0]")
  if np.any(lengths < 1) or np.any(lengths > g):
    raise ValueError(f"response lengths must be in [1, G={g}], got {lengths}")
  pids, pmask = np.concatenate([pids, pids]), np.concatenate([pmask, pmask])
  pad_id = c.pad_token_id if c.pad_token_id is not None else 0
  if cfg.padding == "eos":
    toks = np.where(np.arange(g)[None] < lengths[:, None], toks, c.eos_token_id)
    lengths = np.full_like(lengths, g)
  else:
    toks = np.where(np.arange(g)[None] < lengths[:, None], toks, pad_id)
  rows, resp_block = _layout(pids, pmask, toks, lengths, cfg, c, pad_id)

  steps = _recorded_steps(pairs, g, cfg)
  kk = cfg.timesteps_per_block
  order = np.concatenate([np.tile(np.arange(nb), kk), nb + np.tile(np.arange(nb), kk)])
  rows = {k: v[order] for k, v in rows.items()}
  toks, lengths, resp_block = toks[order], lengths[order], resp_block[order]
  steps = None if steps is None else steps[order]
  masked, weight, frac = _draw(key, resp_block, lengths, steps, cfg)

  n = rows["input_ids"].shape[1]
  ids = rows["input_ids"].copy()
  ids[:, n - g :] = np.where(masked, c.mask_token_id, toks)  # build_block_rows masked it all
  n_rows = toks.shape[0]
  head = np.zeros((n_rows, n - g))
  rows.update(
      input_ids=ids.astype(np.int32),
      positions=rows["positions"].astype(np.int32),
      blocks=rows["blocks"].astype(np.int32),
      targets=rows["targets"].astype(np.int32),
      loss_mask=np.concatenate([head.astype(bool), weight > 0], 1),
      token_weight=np.concatenate([head.astype(np.float32), weight], 1),
      mask_fraction=np.concatenate([head.astype(np.float32), frac], 1),
      response_index=np.tile(np.arange(nb, dtype=np.int32), 2 * kk),
  )
  if c.shift_logits:
    rows["logit_source"] = _logit_source(pids.shape[1], g, cfg.block_length, n_rows)
  return rows


def logprob_fn(model, batch, cfg: DTRPOConfig):
  """log π(y_j) at every slot ``[R, N]`` under the ``x_t ⊕ x_0`` block-diffusion mask."""
  mask = masks.spec_block_diffusion(batch["blocks"], batch["noisy"], batch["valid"])
  if "logit_source" not in batch:
    return model_token_logprobs(
        model, batch["input_ids"], batch["positions"], mask, batch["targets"], cfg.chunk_size
    )
  # Shifted logits: each slot's prediction is read from its ``logit_source`` slot.
  hidden, _ = model.backbone(batch["input_ids"], batch["positions"], mask)
  src = jnp.asarray(batch["logit_source"], jnp.int32)
  hidden = jnp.take_along_axis(hidden, src[..., None], axis=1)
  return token_logprobs_chunked(hidden, model.head_weight(), batch["targets"], cfg.chunk_size)


def sequence_log_ratio(logp, ref_logp, token_weight):
  """Δ per row: ``Σ_j w_j (logp_j − ref_j)`` over the re-masked tokens ``[R]``."""
  w = jnp.asarray(token_weight, jnp.float32)
  d = jnp.asarray(logp, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(ref_logp, jnp.float32))
  return jnp.sum(jnp.where(w > 0, w * d, 0.0), axis=-1)


def loss_fn(model, batch, cfg: DTRPOConfig):
  """``mean_pairs −log σ(β (Δ(y_w) − Δ(y_l)))``; rows ``[chosen x K | rejected x K]``, Δ the
  mean over a response's K rows."""
  if "ref_logp" not in batch:
    raise ValueError("dTRPO needs batch['ref_logp'] = logprob_fn(ref_model, batch, cfg)")
  logp = logprob_fn(model, batch, cfg)
  delta = sequence_log_ratio(logp, batch["ref_logp"], batch["token_weight"])
  delta = jnp.mean(delta.reshape(2, cfg.timesteps_per_block, -1), axis=1)
  chosen, rejected = delta[0], delta[1]
  margin = chosen - rejected
  loss = jnp.mean(jax.nn.softplus(-cfg.beta * margin))
  metrics = {
      "loss": loss,
      "margin": jnp.mean(margin),
      "reward_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
      "chosen_reward": cfg.beta * jnp.mean(chosen),
      "rejected_reward": cfg.beta * jnp.mean(rejected),
      "num_tokens": jnp.sum(jnp.asarray(batch["loss_mask"], jnp.float32)),
  }
  return loss, metrics


METHOD = register_method(
    Method("dtrpo", DTRPOConfig, build_batch, logprob_fn, loss_fn, offline=True)
)
