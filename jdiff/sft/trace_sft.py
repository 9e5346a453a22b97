"""Trace SFT (``trace_sft``): fine-tune on the model's own preferred decoding trajectories.

TraceRL's first finding (its Table 1) is that supervising a model on its own correct inference
trajectories, step by step, beats the usual SFT objectives at low compute. The recipe
(docs/methods.md §SFT objectives):

1. **Collect** (:func:`collect`): sample each training prompt with the configured sampler,
   score it with the task reward and keep the trajectories whose reward passes the threshold
   (the task's correct ones by default). Token ids and step maps are stored in the workdir
   (:data:`TRAJECTORIES_FILE`, written atomically), so a rerun reuses them.
2. **Rows** (:func:`build_rows`): exactly TraceRL's trace rows
   (:func:`jdiff.rl.tracerl.build_batch`, shrink s): each row's supervised tokens are those
   decoded in one (group of) step(s), predicted from the state just before it. Rows with no
   supervised token are dropped (TraceRL's loss ignores them too).
3. **Loss** (:func:`loss_fn`): the plain likelihood under TraceRL's normalisation, no ratio,
   clip or advantage: block models ``Σ_P −log p / L1`` per row (L1 the padded response width),
   full-attention models ``Σ_P −log p / |P|`` per row; the mean over non-empty rows.

``build_batch`` is the identity on the precomputed rows (they are built on the host from the
collected set), so the objective plugs into the shared SFT loop (:mod:`jdiff.train.sft_loop`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.rl import tracerl
from jdiff.rl.losses import _row_reduce
from jdiff.sampling.common import Trajectory

TRAJECTORIES_FILE = "trace_sft_trajectories.jsonl"
ROW_KEYS = (
    "input_ids",
    "positions",
    "valid",
    "targets",
    "loss_mask",
    "row_norm",
    "blocks",
    "noisy",
)


@dataclasses.dataclass(frozen=True)
class TraceCollectConfig:
  """``config.sft.trace``: how the preferred trajectories are collected and sliced."""

  samples_per_prompt: int = 1  # trajectories sampled per training prompt
  min_reward: Optional[float] = None  # keep reward >= this; None: the task's correct ones
  num_prompts: int = 0  # training prompts sampled (0 = all)
  rollout_batch: int = 32  # prompts per sampler call (one compiled shape)
  shrink: int = 1  # TraceRL's s: steps predicted together in one row
  max_steps: Optional[int] = None  # full attention: static bound on decoding steps
  # Steps of a standard SFT objective before collecting (a from-scratch model decodes nothing
  # correct to learn from); 0 when config.model.checkpoint is already a capable policy.
  warm_start_steps: int = 0
  warm_start_objective: str = "sft_block"
  warm_start_options: Any = None

  def __post_init__(self):
    for f in ("samples_per_prompt", "rollout_batch", "shrink"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"config.sft.trace.{f}={getattr(self, f)} must be >= 1")
    for f in ("num_prompts", "warm_start_steps"):
      if int(getattr(self, f)) < 0:
        raise ValueError(f"config.sft.trace.{f}={getattr(self, f)} must be >= 0")


def keep_mask(
    rewards: np.ndarray, correct: Callable[[np.ndarray], np.ndarray], min_reward: Optional[float]
) -> np.ndarray:
  """Which trajectories are preferred: reward >= ``min_reward``, or the task's ``correct``."""
  rewards = np.asarray(rewards, np.float64)
  if min_reward is None:
    return np.asarray(correct(rewards), bool)
  return rewards >= float(min_reward)


def _records(traj, rewards, keep, idx, prompt_ids) -> List[dict]:
  tokens, steps, lengths = (np.asarray(x) for x in (traj.tokens, traj.step_map, traj.lengths))
  out = []
  for row in np.flatnonzero(keep):
    n = int(lengths[row])
    out.append(
        dict(
            prompt_index=int(idx[row]),
            prompt_ids=list(map(int, prompt_ids[row])),
            tokens=tokens[row, :n].tolist(),
            step_map=steps[row, :n].tolist(),
            reward=float(rewards[row]),
        )
    )
  return out


def collect(
    sample_rows: Callable,
    correct: Callable,
    prompt_ids: List[List[int]],
    cc: TraceCollectConfig,
    key,
) -> Tuple[List[dict], Dict[str, float]]:
  """Samples ``samples_per_prompt`` trajectories per prompt and keeps the preferred ones.

  ``sample_rows(idx, key) -> (trajectory on the host, rewards [len(idx)])`` decodes and scores
  the prompts ``prompt_ids[i] for i in idx`` (:func:`jdiff.train.rollout.rollout` + ``local_rewards``).
  Returns (records, stats): each record holds ``prompt_ids``, ``tokens`` and ``step_map`` (the
  kept completion) and its ``reward``."""
  n = int(cc.num_prompts) or len(prompt_ids)
  g, bs = int(cc.samples_per_prompt), int(cc.rollout_batch)
  records, sampled = [], 0
  for start in range(0, n, bs):
    real = list(range(start, min(start + bs, n)))
    idx = [i for i in real + [real[-1]] * (bs - len(real)) for _ in range(g)]  # fixed shape
    ids = [prompt_ids[i] for i in idx]
    traj, rewards = sample_rows(idx, jax.random.fold_in(key, start))
    keep = keep_mask(rewards, correct, cc.min_reward)
    keep[len(real) * g :] = False  # the padding rows of the last call
    records += _records(traj, rewards, keep, idx, ids)
    sampled += len(real) * g
  stats = {
      "trace_prompts": n,
      "trace_sampled": sampled,
      "trace_kept": len(records),
      "trace_acceptance": len(records) / max(sampled, 1),
  }
  return records, stats


def collected(workdir: str, make: Callable[[], Tuple[List[dict], dict]], log=print):
  """The workdir's collected set, or ``make()``'s, saved atomically; (records, stats)."""
  from jdiff.train.pairs import read_pairs, save_pairs  # generic atomic jsonl read/write

  path = os.path.join(workdir, TRAJECTORIES_FILE)
  if os.path.exists(path):
    records = read_pairs(path)
    log(f"trace sft: reusing {len(records)} trajectories from {path}")
    return records, {"trace_kept": len(records), "trace_reused": True}
  records, stats = make()
  log(
      f"trace sft: kept {stats['trace_kept']} of {stats['trace_sampled']} trajectories "
      f"({stats['trace_prompts']} prompts, acceptance {stats['trace_acceptance']:.3f})"
  )
  if not records:
    raise ValueError(
        "trace sft: no trajectory passed the reward threshold; warm-start the "
        "model (config.sft.trace.warm_start_steps) or lower config.sft.trace."
        "min_reward"
    )
  os.makedirs(workdir, exist_ok=True)
  save_pairs(path, records)
  return records, stats


def as_trajectory(records: List[dict], pad_id: int, gen_width: Optional[int] = None):
  """Records -> a host :class:`Trajectory` (prompts left-padded, completions right-padded)."""
  p = max(len(r["prompt_ids"]) for r in records)
  g = gen_width or max(len(r["tokens"]) for r in records)
  b = len(records)
  pids, pmask = np.full((b, p), pad_id, np.int32), np.zeros((b, p), bool)
  toks, steps = np.full((b, g), pad_id, np.int32), np.zeros((b, g), np.int32)
  for i, r in enumerate(records):
    pl, n = len(r["prompt_ids"]), len(r["tokens"])
    pids[i, p - pl :], pmask[i, p - pl :] = r["prompt_ids"], True
    toks[i, :n], steps[i, :n] = r["tokens"], r["step_map"]
  lengths = np.array([len(r["tokens"]) for r in records], np.int32)
  return Trajectory(
      prompt_ids=pids,
      prompt_mask=pmask,
      tokens=toks,
      step_map=steps,
      logprobs=np.zeros((b, g), np.float32),
      lengths=lengths,
      num_steps=steps.max(-1),
  )


def build_rows(traj, model_config, cc: TraceCollectConfig) -> Dict[str, np.ndarray]:
  """TraceRL's rows for ``traj`` (advantage 1), without the rows that supervise nothing."""
  cfg = tracerl.TraceRLConfig(shrink=int(cc.shrink), max_steps=cc.max_steps)
  ones = np.ones((len(np.asarray(traj.lengths)),), np.float32)
  rows = tracerl.build_batch(traj, ones, None, cfg, model_config)
  keep = rows["loss_mask"].any(-1)
  return {k: v[keep] for k, v in rows.items() if k in ROW_KEYS}


def build_batch(rows: Mapping[str, jax.Array], key: jax.Array, cfg) -> dict:
  """The SFT loop's batch step: the trace rows are built on the host already."""
  del key, cfg
  return dict(rows)


def loss_fn(model, batch) -> Tuple[jax.Array, dict]:
  """Mean over rows of the supervised tokens' NLL, normalised as TraceRL normalises."""
  logp = tracerl.logprob_fn(model, batch, tracerl.TraceRLConfig())
  mask = jnp.asarray(batch["loss_mask"], jnp.float32)
  norm = "per_row_sum_over_length" if model.config.block_causal else "per_row_mean"
  nll = -logp
  loss = _row_reduce(nll, mask, norm, batch.get("row_norm"), "trace_sft")
  n = jnp.maximum(jnp.sum(mask), 1.0)
  return loss, {"nll": jnp.sum(nll * mask) / n, "num_supervised": jnp.sum(mask)}


__all__ = [
    "TRAJECTORIES_FILE",
    "TraceCollectConfig",
    "as_trajectory",
    "build_batch",
    "build_rows",
    "collect",
    "collected",
    "keep_mask",
    "loss_fn",
]
