"""Samplers by name, behind one call: ``sample(name, model, ids, mask, key, settings)``.

``settings`` is a mapping of the sampler config's fields (e.g. a ConfigDict section), so a
config string picks the sampler and its options.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from jdiff.registry import Registry


class SamplerEntry(NamedTuple):
  config_cls: type
  run: Callable[..., Any]  # (model, ids [B,P], mask [B,P], key, config) -> Trajectory


def _block():
  from jdiff.sampling import block

  return SamplerEntry(block.BlockSamplerConfig, block.sample)


def _llada():
  from jdiff.sampling import llada

  return SamplerEntry(llada.LLaDASamplerConfig, llada.sample)


def _dream():
  from jdiff.sampling import dream

  return SamplerEntry(dream.DreamSamplerConfig, dream.sample)


# Entry factories (imported on first use, so a sampler's module loads only when picked).
_SAMPLERS = Registry("sampler")
for _name, _entry in (("block", _block), ("llada", _llada), ("dream", _dream)):
  _SAMPLERS.register(_name, _entry)
del _name, _entry
# The sampler each family decodes with natively.
DEFAULT_FOR_FAMILY = {"sdar": "block", "llada": "llada", "dream": "dream"}


def names():
  return _SAMPLERS.names()


def get(name: str) -> SamplerEntry:
  return _SAMPLERS.get(name)()


def make_config(name: str, settings: Mapping[str, Any]):
  """The sampler's config dataclass from a mapping; unknown keys are an error naming them."""
  cls = get(name).config_cls
  fields = {f.name for f in dataclasses.fields(cls)}
  settings = dict(settings)
  unknown = sorted(set(settings) - fields)
  if unknown:
    renamed = getattr(cls, "RENAMED", {})
    said = ", ".join(f"{k!r} (renamed {renamed[k]})" if k in renamed else repr(k) for k in unknown)
    raise ValueError(f"sampler {name!r} has no setting {said}; known: {sorted(fields)}")
  return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()})


def sample(
    name: str,
    model,
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    key,
    config,
    row_offset: int = 0,
):
  """``row_offset``: the global index of the batch's first row (a micro-batch of a larger
  batch draws what those rows draw in one call)."""
  if row_offset:
    return get(name).run(model, prompt_ids, prompt_mask, key, config, row_offset=row_offset)
  return get(name).run(model, prompt_ids, prompt_mask, key, config)
