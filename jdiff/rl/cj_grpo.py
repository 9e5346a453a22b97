"""CJ-GRPO: GRPO on every denoising transition the rollout actually took.

Spec: docs/methods.md §CJ-GRPO, EOSER and ASS (algorithm), §3.4 (hyperparameters), §8 (porting).
The sampler records the completion canvas after every step (``record_states=True``;
``Trajectory.states[k, b]`` = row b after its (k+1)-th step, the final canvas afterwards).
Step s (0-based) goes from ``x_{s-1}`` = ``states[s-1]`` (the all-mask completion for s = 0)
to ``x_s`` = ``states[s]``. Its training row is ``[prompt | x_{s-1}]`` under the model's native
attention (LLaDA / Dream: bidirectional with key padding; SDAR: block-causal at absolute
positions, which is exactly what the block sampler attends to), its targets are ``x_s``'s
tokens and its loss positions ``pos_s`` = masked in ``x_{s-1}`` and filled in ``x_s`` (the
"newly unmasked" tokens, §3.3.1). Per token (§3.3.4), at temperature 1 (§3.3.5), with no
log-ratio clipping (d1 / CJ-GRPO code):
  ``λ = −min(ρA, clip(ρ, 1−ε, 1+ε)A) + β·k3(π_θ ‖ π_ref)``, ``ρ = exp(ℓ − ℓ_old)``;
  ``L_s = Σ_{i,k} λ·pos_s / Σ_{i,k} pos_s`` (token mean over the batch at step s);
  ``loss = (1/S) Σ_s L_s`` (§3.3.5).
No EOS truncation mask: every recorded transition counts, trailing EOS runs included.
Dream's logit shift is applied by :func:`model_token_logprobs`.

Decisions where the spec is open:
- Rows that finished early. A row's steps after its last one (``s ≥ num_steps[b]``) have no
  loss positions and contribute nothing to ``L_s``. ``S`` is the number of step indices whose
  ``pos_s`` is non-empty somewhere in the batch; it equals the rollouts' step count whenever
  every rollout takes all of its steps (the reference setting: a fixed ``diffusion_steps`` that
  each commit ≥ 1 token), and it never lets all-empty steps dilute the mean.
- Normalisation without a step loop. The builder turns ``(1/S) Σ_s L_s`` into per-token weights
  ``w = (n_acc / S) / N_s`` on ``pos_s`` (``N_s`` = Σ pos_s over the batch), so the loss is
  ``Σ λ·w``, exact and jittable in one call; ``n_acc`` is the update step's ``grad_accum``
  (``cfg.grad_accum``; default 1 for ``"rows"``, S_max for ``"accumulate"``). The update step
  averages its micro-batch losses (divides by ``n_acc``), so the result is ``(1/S) Σ_s L_s`` in
  both modes, whatever the split.
- ``step_batching``: the S independent step terms (§3.3.6) are rows ``r = b·S_max + s``.
  ``"rows"`` runs all ``S_max × B`` rows in one forward. ``"accumulate"`` is for
  ``make_update_step(..., grad_accum=S_max)``: its strided split (micro-batch i = rows i, i+n,
  ...) then gives micro-batch s exactly the B rows of step s, so activation memory is that of
  one step's forward (a multiple ``k·S_max`` also keeps micro-batches single-step when k
  divides B). The weights are normalised over the batch ``build_batch`` returned (μ inner
  updates on that batch are fine); a loop that splits it into several optimiser minibatches
  should call ``build_batch`` per minibatch.
- Positions: the real-token count (the samplers' default); ``padding_blind_positions=True``
  matches the LLaDA sampler's option of the same name.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jdiff.models import masks
from jdiff.models.logprobs import model_token_logprobs
from jdiff.rl.losses import clipped_policy_loss
from jdiff.rl.method import Method, register_method

STEP_BATCHING = ("rows", "accumulate")


@dataclasses.dataclass(frozen=True)
class CJGRPOConfig:
  eps: float = 0.5  # PPO clip (§3.4: 0.5)
  beta: float = 0.04  # k3 KL to the frozen reference (§3.4)
  num_iterations: int = 12  # μ inner updates per rollout batch (§3.4: 12 GSM8K/MATH, 8 others)
  step_batching: str = "rows"  # "rows" (S×B rows, one forward) | "accumulate" (one step per micro)
  grad_accum: Optional[int] = None  # the update step's grad_accum; None: 1 (rows) / S (accumulate)
  padding_blind_positions: bool = False
  chunk_size: int = 8192  # vocabulary chunk of the float32 log-softmax

  def __post_init__(self):
    if not 0 < self.eps < 1:
      raise ValueError(f"CJGRPOConfig.eps must be in (0, 1), got {self.eps}")
    if self.beta < 0:
      raise ValueError(f"CJGRPOConfig.beta must be >= 0, got {self.beta}")
    if self.num_iterations < 1:
      raise ValueError(f"CJGRPOConfig.num_iterations must be >= 1, got {self.num_iterations}")
    if self.step_batching not in STEP_BATCHING:
      raise ValueError(
          f"CJGRPOConfig.step_batching={self.step_batching!r}; expected one of " f"{STEP_BATCHING}"
      )
    if self.grad_accum is not None and self.grad_accum < 1:
      raise ValueError(f"CJGRPOConfig.grad_accum must be None or >= 1, got {self.grad_accum}")


def step_positions(traj, mask_id: int) -> np.ndarray:
  """``pos [S, B, G]``: masked before step s, filled after it, and s < the row's step count."""
  if traj.states is None:
    raise ValueError(
        "CJ-GRPO trains on the intermediate states x_0..x_S, but this trajectory "
        "has none: sample with record_states=True"
    )
  states = np.asarray(traj.states)
  s_max, nb, g = states.shape
  before = np.concatenate([np.full((1, nb, g), mask_id, states.dtype), states[:-1]], axis=0)
  live = np.ones((s_max, nb), bool)
  if traj.num_steps is not None:
    live = np.arange(s_max)[:, None] < np.asarray(traj.num_steps)[None, :]
  return (before == mask_id) & (states != mask_id) & live[..., None]


def build_batch(traj, advantages, key, cfg: CJGRPOConfig, model_config) -> dict:
  """Trajectory with ``states`` + advantages (``[B]``, or per token ``[B, G]``) -> rows.

  Row ``r = b·S_max + s`` is ``[prompt_b | x_{s-1}]``; keys: ``input_ids``, ``positions``,
  ``valid``, ``targets``, ``loss_mask`` (pos_s), ``loss_weight`` (module docstring),
  ``advantages``, ``step_index``, ``response_index`` (numpy).
  """
  del key  # the rows are deterministic given the trajectory
  c = model_config
  pos = step_positions(traj, c.mask_token_id)
  states = np.asarray(traj.states, np.int32)
  s_max, nb, g = states.shape
  pids = np.asarray(traj.prompt_ids, np.int32)
  pmask = np.asarray(traj.prompt_mask, bool)
  if pids.shape[0] != nb:
    raise ValueError(f"states have {nb} rows but prompt_ids has {pids.shape[0]}")
  p = pids.shape[1]
  n_acc = cfg.grad_accum or (s_max if cfg.step_batching == "accumulate" else 1)
  if cfg.step_batching == "accumulate" and n_acc % s_max:
    raise ValueError(
        f"step_batching='accumulate' needs grad_accum to be a multiple of the "
        f"{s_max} recorded steps, got {n_acc}"
    )
  if (nb * s_max) % n_acc:
    raise ValueError(f"grad_accum={n_acc} does not divide the {nb * s_max} rows (B·S_max)")

  before = np.concatenate([np.full((1, nb, g), c.mask_token_id, np.int32), states[:-1]], 0)
  # [S, B, ...] -> rows b-major: r = b*S + s.
  rows = lambda x: np.swapaxes(x, 0, 1).reshape((nb * s_max,) + x.shape[2:])
  tile = lambda x: np.repeat(x, s_max, axis=0)
  plen = pmask.sum(-1)
  if cfg.padding_blind_positions:
    positions = np.broadcast_to(np.arange(p + g, dtype=np.int32), (nb, p + g))
  else:
    positions = np.concatenate(
        [np.maximum(np.cumsum(pmask, -1) - 1, 0), plen[:, None] + np.arange(g)], axis=1
    ).astype(np.int32)

  n_s = pos.reshape(s_max, -1).sum(-1)  # [S] tokens per step over the batch
  n_steps = max(int((n_s > 0).sum()), 1)
  w_s = np.where(n_s > 0, (n_acc / n_steps) / np.maximum(n_s, 1), 0.0)  # [S]
  weight = pos * w_s[:, None, None]
  pad = lambda x, fill: np.concatenate([np.full((x.shape[0], p), fill, x.dtype), x], axis=1)

  out = dict(
      input_ids=np.concatenate([tile(pids), rows(before)], axis=1),
      positions=tile(positions),
      valid=np.concatenate([tile(pmask), np.ones((nb * s_max, g), bool)], axis=1),
      targets=pad(rows(states), c.pad_token_id or 0),
      loss_mask=pad(rows(pos), False),
      loss_weight=pad(rows(weight).astype(np.float32), np.float32(0)),
      step_index=np.tile(np.arange(s_max, dtype=np.int32), nb),
      response_index=np.repeat(np.arange(nb, dtype=np.int32), s_max),
  )
  if advantages is None:
    raise ValueError("CJ-GRPO needs advantages ([B] per rollout or [B, G] per token)")
  adv = np.asarray(advantages, np.float32)
  if adv.shape == (nb,):
    out["advantages"] = tile(adv)
  elif adv.shape == (nb, g):
    out["advantages"] = pad(tile(adv), np.float32(0))
  else:
    raise ValueError(f"advantages must be [B]={nb} or [B, G]={(nb, g)}, got {adv.shape}")
  return out


def attention_mask(batch, model_config):
  """The model's inference pattern over ``[prompt | state]`` (module docstring)."""
  return masks.native(
      model_config.block_size if model_config.block_causal else None,
      batch["positions"],
      batch["valid"],
  )


def logprob_fn(model, batch, cfg: CJGRPOConfig):
  """``log f(x_s | x_{s-1})`` at every position of every row ``[R, P+G]`` (float32)."""
  return model_token_logprobs(
      model,
      batch["input_ids"],
      batch["positions"],
      attention_mask(batch, model.config),
      batch["targets"],
      cfg.chunk_size,
  )


def loss_fn(model, batch, cfg: CJGRPOConfig):
  """``Σ λ·w`` = ``(1/S) Σ_s L_s`` (or this micro-batch's share of it, see the docstring)."""
  logp = logprob_fn(model, batch, cfg)
  ref = batch.get("ref_logp")
  if cfg.beta > 0 and ref is None:
    raise ValueError(
        "CJ-GRPO's KL is to the frozen reference: set batch['ref_logp'] = "
        "logprob_fn(ref_model, batch, cfg), or use beta=0"
    )
  w = jnp.asarray(batch["loss_weight"], jnp.float32)
  loss, metrics = clipped_policy_loss(
      logp,
      batch["old_logp"],
      batch["advantages"],
      w,
      eps_low=cfg.eps,
      kl_coef=cfg.beta,
      ref_logp=ref if cfg.beta > 0 else None,
      normalization="token_mean",
      log_ratio_clip=None,
  )
  # token_mean divided by max(Σw, 1); undo it so the loss is Σ λ·w exactly. The other
  # metrics stay per-step-balanced means over the trained tokens.
  scale = jnp.maximum(jnp.sum(w), 1.0)
  metrics = dict(metrics)
  for k in ("loss", "policy_loss", "kl_loss"):
    metrics[k] = metrics[k] * scale
  metrics["num_tokens"] = jnp.sum(w > 0).astype(jnp.float32)
  return loss * scale, metrics


def _rows_per_response(cfg: CJGRPOConfig, sampler_cfg) -> int:
  del cfg
  return int(sampler_cfg.total_steps)  # one row per recorded step


def check(cfg: CJGRPOConfig, run_cfg, sampler_cfg, model_cfg) -> None:
  """The sampler must record its states, and the update split must match the step rows."""
  del model_cfg
  if not getattr(sampler_cfg, "record_states", False):
    raise ValueError(
        "config.sampler.record_states: CJ-GRPO trains on the rollout's "
        "intermediate states: set it to True"
    )
  steps, n_acc, ga = int(sampler_cfg.total_steps), cfg.grad_accum, run_cfg.rl.grad_accum
  if cfg.step_batching == "accumulate" and (n_acc or steps) % steps:
    raise ValueError(
        f"config.method.grad_accum: {n_acc}: step_batching='accumulate' needs a "
        f"multiple of the {steps} sampler steps"
    )
  if n_acc is not None and n_acc != ga:
    raise ValueError(
        f"config.method.grad_accum: {n_acc} must equal config.rl.grad_accum={ga} "
        "(the loss weights are normalised for the update step's split)"
    )


METHOD = register_method(
    Method(
        "cj_grpo",
        CJGRPOConfig,
        build_batch,
        logprob_fn,
        loss_fn,
        check=check,
        rows_per_response=_rows_per_response,
    )
)
