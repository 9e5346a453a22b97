"""Config sections as typed dataclasses: ``section_to`` and the offline loop's schema."""

from __future__ import annotations

import dataclasses
from typing import Any


def section_to(cls, section, where: str, skip=()):
  """A config dataclass from a ConfigDict section; an unknown key is an error naming it."""
  fields = {f.name for f in dataclasses.fields(cls)}
  values = {k: v for k, v in section.items() if k not in skip}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"{where} has unknown key(s) {unknown}; {cls.__name__} accepts "
                     f"{sorted(fields)}")
  return cls(**values)


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
  """``config.offline``: where the pairs come from and how they are trained on."""
  pairs_path: str = ""  # local pairs file; empty = sample them from the warm-started policy
  field_map: Any = None  # {"prompt"|"chosen"|"rejected": "<column>"} for pairs_path
  num_prompts: int = 0  # training prompts used to build pairs (0 = all)
  group_size: int = 8  # completions sampled per prompt
  rollout_batch: int = 16  # prompts per sampler call (one compiled shape)
  max_response_len: int = 0  # response width of a pairs file (0 = its longest response)
  pairs_per_step: int = 16
  epochs: int = 1
  grad_accum: int = 1
  eval_every: int = 0  # update steps between evals (0 = only before and after)
  max_steps: int = 0  # stop after this many update steps (0 = `epochs` worth)

  def __post_init__(self):
    for f in ("group_size", "rollout_batch", "pairs_per_step", "epochs", "grad_accum"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"config.offline.{f}={getattr(self, f)} must be >= 1")
    if self.group_size < 2 and not self.pairs_path:
      raise ValueError("config.offline.group_size must be >= 2 to pair completions")
    if self.pairs_per_step % self.grad_accum:
      raise ValueError(f"config.offline.pairs_per_step={self.pairs_per_step} must be divisible "
                       f"by config.offline.grad_accum={self.grad_accum} (pairs stay together "
                       "in a micro-batch)")


def offline_config(config) -> OfflineConfig:
  oc = section_to(OfflineConfig, config.offline, "config.offline")
  return dataclasses.replace(oc, field_map=dict(oc.field_map or {}))
