"""dTRPO: offline DPO on re-masked final states, every block scored in one forward.

Spec: research/d1_cjgrpo_dtrpo.md §4 (a reconstruction: the paper's full text and code were
not available), §8. For a preference pair (y_w, y_l) given a prompt x:
  ``Δ(y) = Σ_b w_b Σ_{j ∈ M_b(t_b)} [log π_θ(y_j | x, y_{<b}, ỹ_b) − log π_ref(y_j | …)]``,
  ``loss = −log σ(β (Δ(y_w) − Δ(y_l)))`` (mean over pairs),
with one timestep t_b per block (time reduction) and the re-masked tokens M_b standing in for
the "newly unmasked" tokens of a transition (state reduction). Each response is ONE row in the
``x_t ⊕ x_0`` layout: a clean copy of the prompt and response and a noisy copy in which every
block b is re-masked at its own t_b; the block-diffusion mask lets noisy block b see the clean
blocks before it and itself, so all blocks are scored by one forward. The mask draws are made
in :func:`build_batch` and stored in the batch, so π_θ and π_ref (``batch['ref_logp']``,
precomputed once with :func:`logprob_fn`) score exactly the same re-masked tokens.

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
- Dream (shifted logits) is rejected: in the ``x_t ⊕ x_0`` layout the slot before a noisy
  block is not the token the shifted prediction must be read from.
- t_b is continuous, ``t_b ~ U(0, 1)``; block b (n_b real tokens) re-masks
  ``m_b = clip(ceil(t_b·n_b), 1, n_b)`` tokens chosen uniformly at random (offline data carries
  no decoding order), so every block contributes at least one token.
- w_b: ``block_weight="one"`` (default, w_b = 1) or ``"inverse_t"`` (w_b = n_b / m_b, the
  masked-diffusion ELBO's 1/t with the realised fraction).
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
from jdiff.rl.logprobs import model_token_logprobs
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

  @classmethod
  def from_lists(cls, prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]],
                 rejected: Sequence[Sequence[int]], pad_id: int,
                 width: Optional[int] = None) -> "PreferencePairs":
    """Left-pads the prompts and right-pads both responses to ``width`` (default: longest)."""
    p = max(len(x) for x in prompts)
    g = width or max(len(x) for x in list(chosen) + list(rejected))
    ids = np.full((len(prompts), p), pad_id, np.int32)
    pm = np.zeros((len(prompts), p), bool)
    for i, x in enumerate(prompts):
      if len(x):
        ids[i, p - len(x):], pm[i, p - len(x):] = x, True

    def right(rs):
      out = np.full((len(rs), g), pad_id, np.int32)
      for i, r in enumerate(rs):
        out[i, :len(r)] = r
      return out, np.array([len(r) for r in rs], np.int32)

    (cw, lw), (cl, ll) = right(chosen), right(rejected)
    return cls(ids, pm, cw, lw, cl, ll)


@dataclasses.dataclass(frozen=True)
class DTRPOConfig:
  beta: float = 0.1  # DPO temperature (a choice; see the module docstring)
  block_length: int = 32  # full-attention models only (LLaDA semi-AR block); SDAR: block_size
  block_weight: str = "one"  # "one" | "inverse_t"
  padding: str = "drop"  # "drop" | "eos"
  chunk_size: int = 8192

  def __post_init__(self):
    if self.beta <= 0:
      raise ValueError(f"DTRPOConfig.beta must be > 0, got {self.beta}")
    if self.block_length < 1:
      raise ValueError(f"DTRPOConfig.block_length must be >= 1, got {self.block_length}")
    if self.block_weight not in ("one", "inverse_t"):
      raise ValueError(f"DTRPOConfig.block_weight={self.block_weight!r}; expected 'one' or "
                       "'inverse_t'")
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
      targets=np.concatenate([np.full((r, p + g), pad_id), toks], 1))


def build_batch(pairs: PreferencePairs, advantages, key, cfg: DTRPOConfig, model_config) -> dict:
  """Pairs -> ``2B`` rows ``[chosen_0..B-1 | rejected_0..B-1]`` with the re-masking drawn
  from ``key``. Keys: ``input_ids``, ``positions``, ``blocks``, ``noisy``, ``valid``,
  ``targets``, ``loss_mask`` (re-masked tokens), ``token_weight`` (w_b on them),
  ``response_index``, ``mask_fraction`` (numpy)."""
  del advantages  # offline: the preference is the signal
  c = model_config
  if c.shift_logits:
    raise ValueError(f"dTRPO does not support shifted-logit models (family {c.family!r}); "
                     "see jdiff/rl/dtrpo.py")
  if key is None:
    raise ValueError("dTRPO draws its re-masking from `key`; got None")
  pids = np.asarray(pairs.prompt_ids, np.int32)
  pmask = np.asarray(pairs.prompt_mask, bool)
  toks = np.concatenate([np.asarray(pairs.chosen), np.asarray(pairs.rejected)]).astype(np.int32)
  lengths = np.concatenate([np.asarray(pairs.chosen_lengths),
                            np.asarray(pairs.rejected_lengths)]).astype(np.int32)
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
  plen = pmask.sum(-1)

  if c.block_causal:
    blk = c.block_size
    traj = Trajectory(prompt_ids=pids, prompt_mask=pmask, tokens=toks,
                      step_map=(np.arange(g)[None] < lengths[:, None]).astype(np.int32),
                      logprobs=np.zeros(toks.shape, np.float32), lengths=lengths,
                      num_steps=np.ones_like(lengths))
    # shrink = block size: one round per response, every block of it fully noisy.
    rows = build_block_rows(traj, block_size=blk, mask_id=c.mask_token_id, pad_id=pad_id,
                            shrink=blk)
    rows = {k: rows[k] for k in ("input_ids", "positions", "blocks", "noisy", "valid", "targets")}
    resp_block = (plen[:, None] + np.arange(g)) // blk
  else:
    rows = _full_attention_rows(pids, pmask, toks, lengths, cfg.block_length, pad_id)
    resp_block = np.broadcast_to(np.arange(g) // cfg.block_length, toks.shape)
  resp_block = resp_block - resp_block[:, :1]  # 0 = the response's first block

  n_rows = 2 * nb
  kt, ku = jax.random.split(key)
  t = np.asarray(jax.random.uniform(kt, (n_rows, int(resp_block.max()) + 1)))
  u = np.asarray(jax.random.uniform(ku, (n_rows, g)))
  remask = np.zeros((n_rows, g), bool)
  weight = np.zeros((n_rows, g), np.float32)
  frac = np.zeros((n_rows, g), np.float32)
  for r in range(n_rows):
    real = np.arange(g) < lengths[r]
    for k in np.unique(resp_block[r][real]):
      idx = np.nonzero(real & (resp_block[r] == k))[0]
      n = len(idx)
      m = int(np.clip(np.ceil(t[r, k] * n), 1, n))
      sel = idx[np.argsort(u[r, idx], kind="stable")[:m]]
      remask[r, sel] = True
      weight[r, sel] = 1.0 if cfg.block_weight == "one" else n / m
      frac[r, idx] = m / n

  n = rows["input_ids"].shape[1]
  ids = rows["input_ids"].copy()
  ids[:, n - g:] = np.where(remask, c.mask_token_id, toks)  # build_block_rows masked it all
  head = np.zeros((n_rows, n - g))
  rows.update(
      input_ids=ids.astype(np.int32), positions=rows["positions"].astype(np.int32),
      blocks=rows["blocks"].astype(np.int32), targets=rows["targets"].astype(np.int32),
      loss_mask=np.concatenate([head.astype(bool), remask], 1),
      token_weight=np.concatenate([head.astype(np.float32), weight], 1),
      mask_fraction=np.concatenate([head.astype(np.float32), frac], 1),
      response_index=np.tile(np.arange(nb, dtype=np.int32), 2))
  return rows


def logprob_fn(model, batch, cfg: DTRPOConfig):
  """log π(y_j) at every slot ``[R, N]`` under the ``x_t ⊕ x_0`` block-diffusion mask."""
  mask = masks.block_diffusion(batch["blocks"], batch["noisy"], batch["valid"])
  return model_token_logprobs(model, batch["input_ids"], batch["positions"], mask,
                              batch["targets"], cfg.chunk_size)


def sequence_log_ratio(logp, ref_logp, token_weight):
  """Δ per row: ``Σ_j w_j (logp_j − ref_j)`` over the re-masked tokens ``[R]``."""
  w = jnp.asarray(token_weight, jnp.float32)
  d = jnp.asarray(logp, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(ref_logp, jnp.float32))
  return jnp.sum(jnp.where(w > 0, w * d, 0.0), axis=-1)


def loss_fn(model, batch, cfg: DTRPOConfig):
  """``mean_pairs −log σ(β (Δ(y_w) − Δ(y_l)))``; rows ``[chosen | rejected]``."""
  if "ref_logp" not in batch:
    raise ValueError("dTRPO needs batch['ref_logp'] = logprob_fn(ref_model, batch, cfg)")
  logp = logprob_fn(model, batch, cfg)
  delta = sequence_log_ratio(logp, batch["ref_logp"], batch["token_weight"])
  half = delta.shape[0] // 2
  chosen, rejected = delta[:half], delta[half:]
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


def check(cfg: DTRPOConfig, run_cfg, sampler_cfg, model_cfg) -> None:
  del cfg, sampler_cfg, model_cfg
  if run_cfg.family == "dream":
    raise ValueError("config.model.family: dTRPO does not support shifted-logit (dream) models")


METHOD = register_method(Method("dtrpo", DTRPOConfig, build_batch, logprob_fn, loss_fn,
                                offline=True, check=check))
