"""The shape every RL method takes: a batch builder, a log-prob function and a loss.

A method module (``jdiff/rl/tracerl.py``, ``diffu_grpo.py``, ...) defines a frozen config
dataclass and registers a :class:`Method` under its name. The training loop then does, per
rollout batch:

  batch = method.build_batch(traj, advantages, key, cfg, model_config)   # host, numpy
  batch["old_logp"] = method.logprob_fn(old_model, batch, cfg)           # no grad, jitted
  batch["ref_logp"] = method.logprob_fn(ref_model, batch, cfg)           # when a frozen ref is used
  loss, metrics = method.loss_fn(model, batch, cfg)                      # inside the update step

``logprob_fn`` and ``loss_fn`` are pure and jittable; ``loss_fn`` computes its log-probs with
the same ``logprob_fn``, so at the first inner step the ratio is exactly 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import jax.numpy as jnp
import numpy as np

from jdiff.registry import Registry

Batch = Dict[str, Any]


def _kl_to_frozen_reference(cfg) -> bool:
  """Whether ``loss_fn`` reads ``batch["ref_logp"]``: a KL (or DPO) term against a frozen
  reference. TraceRL's default KL is to the pre-update policy instead (``kl_against="old"``)."""
  return getattr(cfg, "beta", 0.0) > 0 and getattr(cfg, "kl_against", "ref") == "ref"


def _no_check(method_cfg, run_cfg, sampler_cfg, model_cfg) -> None:
  del method_cfg, run_cfg, sampler_cfg, model_cfg


def _one_row(method_cfg, sampler_cfg) -> int:
  del method_cfg, sampler_cfg
  return 1


@dataclasses.dataclass(frozen=True)
class Method:
  """An RL method. ``check(method_cfg, run_cfg, sampler_cfg, model_cfg)`` raises
  ``ValueError("config.<section>.<key>: ...")`` for a setting this method cannot run with
  (``run_cfg``: the typed :class:`jdiff.train.config.RunConfig`, ``model_cfg``: the preset's
  architecture or None); it runs in config validation, before anything loads."""

  name: str
  config_cls: type
  build_batch: Callable[..., Batch]
  logprob_fn: Callable[..., Any]
  loss_fn: Callable[..., Any]
  needs_ref: Callable[[Any], bool] = _kl_to_frozen_reference
  offline: bool = False  # trains on a fixed dataset (dTRPO), not on rollouts
  check: Callable[[Any, Any, Any, Any], None] = _no_check
  # Update rows per rollout response (rl.grad_accum must divide responses x this).
  rows_per_response: Callable[[Any, Any], int] = _one_row
  value_model: bool = False  # trains with the value model (config.value.enabled)
  # loss_fn reads the optimizer step's weights (jdiff.rl.losses.step_weights) when the batch
  # carries them; the loop then adds them, minibatches the rows and sums micro-batch losses.
  step_weighted: bool = False


# Methods with μ inner iterations over different inputs (d1's prompt-mask draws) store each
# iteration's arrays stacked on axis 1 under ``iteration_<name>``.
ITER = "iteration_"


def num_iterations(batch: Batch) -> int:
  """μ when the batch stacks per-iteration inputs, else 1."""
  return next((np.shape(v)[1] for k, v in batch.items() if k.startswith(ITER)), 1)


def select_iteration(batch: dict, m: int) -> dict:
  """The batch of inner iteration ``m``: every ``iteration_X [R, μ, ...]`` becomes ``X``;
  ``old_logp`` / ``ref_logp`` holding an iteration axis (``[R, μ, G]``) are sliced too.
  The stacked ``iteration_*`` arrays are left out (the update step does not need them)."""
  out = {}
  lm_ndim = np.ndim(batch["loss_mask"])
  for name, value in batch.items():
    if name.startswith(ITER):
      out[name[len(ITER) :]] = value[:, m]
    elif name in ("old_logp", "ref_logp") and np.ndim(value) == lm_ndim + 1:
      out[name] = value[:, m]
    elif name not in out:
      out[name] = value
  return out


def iteration_logprobs(score, batch: dict):
  """``score(select_iteration(batch, m))`` for every m, stacked on axis 1: ``[R, μ, G]``.
  ``score`` is e.g. a jitted ``lambda b: logprob_fn(old_model, b, cfg)``."""
  mu = num_iterations(batch)
  return jnp.stack([score(select_iteration(batch, m)) for m in range(mu)], axis=1)


def score_all(score, batch: Batch):
  """``score(batch)``, or per-iteration scores ``[R, μ, ...]`` for stacked batches."""
  if any(k.startswith(ITER) for k in batch):
    return iteration_logprobs(score, batch)
  return score(batch)


methods = Registry("rl_method")


def register_method(method: Method) -> Method:
  methods.register(method.name)(method)
  return method
