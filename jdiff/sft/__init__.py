"""SFT objectives for dLLMs, each a ``(build_batch, loss_fn)`` pair chosen by name.

Interface (every objective):
- ``build_batch(rows, key, cfg, **options) -> dict`` of arrays with static shapes and a leading
  batch dim: ``rows`` is the format of :mod:`jdiff.sft.common` (see :func:`make_rows`), ``key``
  a PRNG key, ``cfg`` the model config; ``options`` are static Python values. Pure and
  jittable (``jax.jit(functools.partial(build_batch, cfg=cfg, **options))``).
- ``loss_fn(model, batch) -> (loss, metrics)``: pure, jittable, float32 scalars; plugs into
  the shared update step (``jdiff.train.make_update_step``).

Objectives:
- ``sft_block``: SDAR/TraDo block diffusion, x_t ⊕ x_0, per-block (or per-sequence) t, 1/t
  weight — or TraceRL's semi-AR variant (:mod:`jdiff.sft.block_sft`);
- ``sft_llada``: LLaDA/d1 masked SFT, bidirectional, CE/p over non-prompt tokens
  (:mod:`jdiff.sft.llada_sft`);
- ``sft_semi_ar``: TraceRL semi-AR SFT for full-attention models, with Dream's logit shift
  (:mod:`jdiff.sft.semi_ar_sft`);
- ``trace_sft``: TraceRL's trace SFT on the model's own preferred trajectories, block and
  full-attention models (:mod:`jdiff.sft.trace_sft`; ``scripts/sft.py`` collects them first).
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

from jdiff.registry import Registry

from jdiff.sft import block_sft, common, llada_sft, semi_ar_sft, trace_sft
from jdiff.sft.common import make_rows


class SFTObjective(NamedTuple):
  build_batch: Callable
  loss_fn: Callable
  options: frozenset = frozenset()  # build_batch's keyword-only options (config.sft.options)


OBJECTIVES = Registry("SFT objective")


def register(name: str, build_batch: Callable, loss_fn: Callable) -> SFTObjective:
  """Registers an objective; a different pair under a taken name is an error."""
  params = inspect.signature(build_batch).parameters.values()
  kw = frozenset(p.name for p in params if p.kind == p.KEYWORD_ONLY)
  return OBJECTIVES.register(name, SFTObjective(build_batch, loss_fn, kw))


def get(name: str) -> SFTObjective:
  return OBJECTIVES.get(name)


def names() -> list:
  return OBJECTIVES.names()


def options(name: str) -> frozenset:
  """The keyword options objective ``name`` takes (the keys config.sft.options may hold)."""
  return OBJECTIVES.get(name).options


register("sft_block", block_sft.build_batch, block_sft.loss_fn)
register("sft_llada", llada_sft.build_batch, llada_sft.loss_fn)
register("sft_semi_ar", semi_ar_sft.build_batch, semi_ar_sft.loss_fn)
register("trace_sft", trace_sft.build_batch, trace_sft.loss_fn)

__all__ = [
    "OBJECTIVES",
    "SFTObjective",
    "block_sft",
    "common",
    "get",
    "llada_sft",
    "make_rows",
    "names",
    "options",
    "register",
    "semi_ar_sft",
    "trace_sft",
]
