"""Rollouts, rewards and evaluation on a mesh: the one home the online and offline loops and
``scripts/eval.py`` share."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.data.loading import left_pad
from jdiff.rewards import compute_rewards
from jdiff.sampling import registry as samplers
from jdiff.sharding import make_mesh
from jdiff.sharding.rules import SAMPLING_RULES
from jdiff.train import distributed as dist


def decode(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> List[str]:
  return [
      tokenizer.decode(t[:n].tolist(), skip_special_tokens=True)
      for t, n in zip(np.asarray(tokens), np.asarray(lengths))
  ]


def _columns(task, rows):
  return {c: [r[c] for r in rows] for c in task.columns}


def rollout(
    model,
    mesh,
    sampler_name,
    sampler_cfg,
    prompt_ids,
    pad_id,
    prompt_len,
    key,
    rollout_batch: int = 0,
):
  """Samples ``prompt_ids`` (the whole global batch, as every process knows it) on ``mesh``.

  Each process pads and places only the rows its devices hold. Returns the trajectory as
  global arrays and those local rows' global indices. ``rollout_batch`` (> 0): rows per
  sampler call, so that one call's KV cache fits; every row keeps its global index's keys,
  so the trajectory is the one-call trajectory (``rl.rollout_batch``).
  """
  n, rb = len(prompt_ids), int(rollout_batch)
  if rb <= 0 or rb >= n:
    return _rollout_rows(
        model, mesh, sampler_name, sampler_cfg, prompt_ids, pad_id, prompt_len, key, 0
    )
  if n % rb:
    raise ValueError(f"rl.rollout_batch={rb} must divide the rollout's {n} rows")
  parts = [
      _rollout_rows(
          model, mesh, sampler_name, sampler_cfg, prompt_ids[s : s + rb], pad_id, prompt_len, key, s
      )
      for s in range(0, n, rb)
  ]
  return _concat_trajectories([t for t, _ in parts]), np.concatenate(
      [rows + s for (_, rows), s in zip(parts, range(0, n, rb))]
  )


def _concat_trajectories(trajs):
  """Row-wise concatenation (``states`` holds its rows on axis 1)."""
  fields = {}
  for name in (f.name for f in dataclasses.fields(trajs[0])):
    leaves = [getattr(t, name) for t in trajs]
    fields[name] = (
        None if leaves[0] is None else jnp.concatenate(leaves, axis=1 if name == "states" else 0)
    )
  return type(trajs[0])(**fields)


def _rollout_rows(
    model, mesh, sampler_name, sampler_cfg, prompt_ids, pad_id, prompt_len, key, row_offset
):
  shape = (len(prompt_ids), int(prompt_len))
  sharding = dist.row_sharding(mesh, shape, SAMPLING_RULES)
  rows = dist.local_rows(sharding, shape)
  ids, mask, _ = left_pad([prompt_ids[i] for i in rows], pad_id, length=prompt_len)
  ids = dist.rows_to_global(ids, rows, shape, sharding)
  mask = dist.rows_to_global(mask, rows, shape, sharding)
  with jax.set_mesh(mesh):
    traj = samplers.sample(sampler_name, model, ids, mask, key, sampler_cfg, row_offset)
  return traj, rows


def reward_options(task_section, sampler_cfg, traj, rollouts: bool = True) -> Dict[str, Any]:
  """``local_rewards``' keyword options from ``config.task`` for a (host) trajectory.

  ``task.reward_text="whole"`` scores the whole canvas (``raw_tokens``, incl. what was decoded
  after the stop; special tokens skipped), as d1 / CJ-GRPO and the full-attention TraceRL
  rollouts do; "to_eos" the text up to the first stop. ``task.length_penalty`` (rollouts only,
  not eval) passes the response lengths and the sampler's ``gen_length`` to the reward
  (TraceRL: a response reaching ``max_tokens - 5`` scores as incorrect, docs/methods.md).
  """
  out: Dict[str, Any] = {}
  if task_section.get("reward_text", "to_eos") == "whole":
    raw = traj.raw_tokens if traj.raw_tokens is not None else traj.tokens
    out["canvas"] = np.asarray(raw)
  if rollouts and task_section.get("length_penalty", False):
    out["max_tokens"] = int(sampler_cfg.gen_length)
  return out


def local_rewards(
    spec,
    tokenizer,
    task,
    tokens,
    lengths,
    rows,
    task_rows,
    *,
    canvas: Optional[np.ndarray] = None,
    max_tokens: Optional[int] = None,
):
  """Summed rewards of the local ``rows`` only: the text is decoded and scored where it lives
  (reward functions may be slow, e.g. running code).

  ``canvas`` (``[B, G]``): score each row's whole canvas instead of ``tokens[:length]``.
  ``max_tokens``: the rewards also get the ``response_length`` (``lengths``) and
  ``max_tokens`` columns (the math reward's length penalty)."""
  rows = list(rows)
  if canvas is not None:
    canvas = np.asarray(canvas)
    texts = decode(tokenizer, canvas[rows], [canvas.shape[1]] * len(rows))
  else:
    texts = decode(tokenizer, tokens[rows], lengths[rows])
  columns = _columns(task, [task_rows[i] for i in rows])
  if max_tokens is not None:
    columns.update(
        response_length=[int(n) for n in np.asarray(lengths)[rows]], max_tokens=int(max_tokens)
    )
  return compute_rewards(spec, texts, **columns).sum(-1)


def evaluate(
    model, mesh, tokenizer, task, prompts, sampler_name, sampler_cfg, cfg, key
) -> Dict[str, float]:
  """Accuracy and mean reward over the eval prompts (fixed batches, one compile).

  ``model``'s state lies on ``mesh``; None: one device (an unsharded model).
  """
  mesh = make_mesh((1, 1, 1)) if mesh is None else mesh
  bs = int(cfg.eval.batch_size)
  correct, rewards = [], []
  for start in range(0, len(prompts.rows), bs):
    idx = list(range(start, min(start + bs, len(prompts.rows))))
    idx += [idx[-1]] * (bs - len(idx))  # pad the last batch to the compiled size
    traj, mine = rollout(
        model,
        mesh,
        sampler_name,
        sampler_cfg,
        [prompts.ids[i] for i in idx],
        model.config.pad_token_id,
        cfg.data.max_prompt_len,
        jax.random.fold_in(key, start),
    )
    traj = dist.to_host(traj.replace(states=None))  # states: never scored, possibly large
    r = local_rewards(
        task.reward,
        tokenizer,
        task,
        np.asarray(traj.tokens),
        np.asarray(traj.lengths),
        mine,
        [prompts.rows[i] for i in idx],
        **reward_options(cfg.task, sampler_cfg, traj, rollouts=False),
    )
    r = dist.gather_rows(r, mine, bs)
    n_real = min(bs, len(prompts.rows) - start)
    rewards.extend(r[:n_real].tolist())
    correct.extend(task.correct(r)[:n_real].tolist())
  return {"accuracy": float(np.mean(correct)), "reward": float(np.mean(rewards))}
