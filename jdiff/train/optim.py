"""Optimizers from a plain config: ``clip_by_global_norm`` then AdamW with an LR schedule.

Defaults follow TraceRL (docs/methods.md §TraceRL block rows: AdamW β 0.9/0.999, eps 1e-8, wd 0,
grad-norm clip 1.0, effectively constant LR, no warmup). d1 uses β2 0.99, wd 0.1,
constant_with_warmup, max_grad_norm 0.2 (d1_cjgrpo_dtrpo.md §2.2).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")
DEFAULTS = dict(
    lr=1e-6,
    schedule="constant",
    warmup_steps=0,
    total_steps=0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    max_grad_norm=1.0,
    min_lr_ratio=0.0,
    decay_matrices_only=True,
)


def _get(cfg: Any, key: str):
  """Reads ``key`` from a dict, ConfigDict or attribute object, else the default."""
  if cfg is None:
    return DEFAULTS[key]
  if isinstance(cfg, Mapping):
    if key == "lr" and "lr" not in cfg and "learning_rate" in cfg:
      return cfg["learning_rate"]
    return cfg.get(key, DEFAULTS[key])
  if key == "lr" and not hasattr(cfg, "lr") and hasattr(cfg, "learning_rate"):
    return getattr(cfg, "learning_rate")
  return getattr(cfg, key, DEFAULTS[key])


def make_schedule(cfg: Any) -> optax.Schedule:
  """The learning-rate schedule ``step -> lr``.

  - ``constant``: ``lr``.
  - ``constant_with_warmup``: linear 0 -> lr over ``warmup_steps``, then ``lr``.
  - ``cosine``: warmup, then cosine decay to ``lr * min_lr_ratio`` at ``total_steps``.
  - ``linear``: warmup, then linear decay to ``lr * min_lr_ratio`` at ``total_steps``.
  """
  lr, name = float(_get(cfg, "lr")), str(_get(cfg, "schedule"))
  warmup, total = int(_get(cfg, "warmup_steps")), int(_get(cfg, "total_steps"))
  end = lr * float(_get(cfg, "min_lr_ratio"))
  if lr < 0 or warmup < 0:
    raise ValueError(f"optimizer: lr={lr} and warmup_steps={warmup} must be >= 0")
  if name == "constant":
    return optax.constant_schedule(lr)
  warm = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else optax.constant_schedule(lr)
  if name == "constant_with_warmup":
    return optax.join_schedules([warm, optax.constant_schedule(lr)], [warmup])
  if name in ("cosine", "linear"):
    if total <= warmup:
      raise ValueError(
          f"optimizer: schedule {name!r} needs total_steps ({total}) > " f"warmup_steps ({warmup})"
      )
    if name == "cosine":
      decay = optax.cosine_decay_schedule(lr, total - warmup, alpha=end / lr if lr else 0.0)
    else:
      decay = optax.linear_schedule(lr, end, total - warmup)
    return optax.join_schedules([warm, decay], [warmup])
  raise ValueError(f"optimizer: unknown schedule {name!r}; expected one of {SCHEDULES}")


def _decay_mask(params):
  """Weight decay on matrices only (ndim >= 2), not on norms, biases or value heads."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: Any = None) -> optax.GradientTransformation:
  """``optax.chain(clip_by_global_norm(max_grad_norm), adamw(schedule, ...))``.

  ``cfg`` is a dict, ``ml_collections.ConfigDict`` or any object with attributes among
  ``lr`` (or ``learning_rate``), ``schedule``, ``warmup_steps``, ``total_steps``, ``b1``,
  ``b2``, ``eps``, ``weight_decay``, ``max_grad_norm`` (0/None = no clipping),
  ``min_lr_ratio``, ``decay_matrices_only``; missing keys take :data:`DEFAULTS`.
  """
  schedule = make_schedule(cfg)
  wd = float(_get(cfg, "weight_decay"))
  mask = _decay_mask if (wd and bool(_get(cfg, "decay_matrices_only"))) else None
  adamw = optax.adamw(
      schedule,
      b1=float(_get(cfg, "b1")),
      b2=float(_get(cfg, "b2")),
      eps=float(_get(cfg, "eps")),
      weight_decay=wd,
      mask=mask,
  )
  clip = _get(cfg, "max_grad_norm")
  if clip is None or float(clip) <= 0:
    return adamw
  return optax.chain(optax.clip_by_global_norm(float(clip)), adamw)


__all__ = ["DEFAULTS", "SCHEDULES", "make_optimizer", "make_schedule"]
