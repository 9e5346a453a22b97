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

from jdiff.rl.registry import Registry

Batch = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  config_cls: type
  build_batch: Callable[..., Batch]
  logprob_fn: Callable[..., Any]
  loss_fn: Callable[..., Any]


methods = Registry("rl_method")


def register_method(method: Method) -> Method:
  methods.register(method.name)(method)
  return method
