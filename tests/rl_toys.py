"""Toy RL data shared by the method tests: hand-built trajectories of the tiny presets, a toy
reward, and a few optimizer steps that check a method moves probability the right way."""

import jax
import numpy as np
import optax
from flax import nnx

from jdiff.sampling.common import Trajectory

MASK, EOS, PAD = 3, 1, 1  # tiny presets
TARGET = 7  # toy reward: fraction of completion tokens equal to this id
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]


def make_traj(prompts, completions, g):
  """A hand-built trajectory: left-padded prompts, completions cut after their first EOS."""
  b, p = len(prompts), max(len(x) for x in prompts)
  pids, pmask = np.full((b, p), PAD, np.int32), np.zeros((b, p), bool)
  toks, lengths = np.full((b, g), PAD, np.int32), np.zeros((b,), np.int32)
  for i, (x, c) in enumerate(zip(prompts, completions)):
    pids[i, p - len(x) :], pmask[i, p - len(x) :] = x, True
    c = list(c)[:g]
    c = c[: c.index(EOS) + 1] if EOS in c else c
    toks[i, : len(c)], lengths[i] = c, len(c)
  steps = np.where(np.arange(g)[None] < lengths[:, None], np.arange(1, g + 1)[None], 0)
  return Trajectory(
      prompt_ids=pids,
      prompt_mask=pmask,
      tokens=toks,
      step_map=steps.astype(np.int32),
      logprobs=np.zeros((b, g), np.float32),
      lengths=lengths,
      num_steps=lengths.copy(),
  )


def target_reward(traj):
  """Fraction of each completion's kept tokens equal to :data:`TARGET`."""
  toks, lengths = np.asarray(traj.tokens), np.asarray(traj.lengths)
  kept = np.arange(toks.shape[1])[None] < lengths[:, None]
  return ((toks == TARGET) & kept).sum(1) / np.maximum(kept.sum(1), 1)


def toy_trajectory(seed, n_prompts=4, group=4, g=8):
  """``(trajectory, group)``: random completions, some rich in TARGET, some cut by EOS."""
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(4, 30, size=rng.integers(2, 6))) for _ in range(n_prompts)]
  comps = []
  for _ in range(n_prompts * group):
    c = rng.integers(4, 30, size=g)
    c[rng.random(g) < rng.uniform(0.0, 0.6)] = TARGET
    if rng.random() < 0.5:
      c[rng.integers(3, g)] = EOS
    comps.append(list(c))
  return make_traj([x for x in prompts for _ in range(group)], comps, g), group


def learn(model, method, cfg, prepare, lr=1e-2):
  """adamw steps on ``method.loss_fn``. ``prepare(score)`` (``score(batch)`` = the initial
  policy's log-probs) returns the per-step batches and a probe batch; returns the mean
  log-prob of the probe's targets at its supervised positions before and after."""
  graphdef, params = nnx.split(model)
  score = jax.jit(lambda s, b: method.logprob_fn(nnx.merge(graphdef, s), b, cfg))
  step = jax.jit(jax.value_and_grad(lambda s, b: method.loss_fn(nnx.merge(graphdef, s), b, cfg)[0]))
  batches, probe = prepare(lambda b: score(params, b))
  mask = np.asarray(probe["loss_mask"], np.float32)
  rewarded = lambda s: float((np.asarray(score(s, probe)) * mask).sum() / mask.sum())
  opt = optax.adamw(lr)
  opt_state = opt.init(params)
  before = rewarded(params)
  for batch in batches:
    loss, grads = step(params, batch)
    assert np.isfinite(float(loss))
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return before, rewarded(params)
