"""Name -> reward-function registry and a batched ``compute_rewards`` helper.

A reward function is a plain host-side callable::

    fn(completions: list[str], **columns) -> list[float]

``completions`` are the decoded model outputs (one string per sample) and the
keyword arguments are dataset columns aligned with them (``answer``,
``target``, ``numbers``, ``puzzle``, ``solution``, ``tests``, ...).  Each
function declares the columns it needs as named parameters; ``compute_rewards``
inspects the signature and passes only those, so one batch dict with many
columns can be fed to several reward functions (this mirrors how TRL/d1 pass
dataset columns as ``**kwargs`` to every reward function).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from jdiff.registry import Registry

RewardFn = Callable[..., List[float]]
# What compute_rewards accepts: one name, a list of names/callables, or a
# mapping {name_or_callable: weight}.
RewardSpec = Union[str, RewardFn, Sequence[Union[str, RewardFn]], Mapping[Any, float]]


class UnknownRewardError(KeyError):
  """Raised by :func:`get_reward` for a name that was never registered."""

  def __str__(self) -> str:  # KeyError would show the repr() of the message
    return str(self.args[0]) if self.args else ""


_REGISTRY = Registry("reward", error=UnknownRewardError)


class MissingColumnError(KeyError):
  """A reward function needs a dataset column that was not provided."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def register_reward(name: str, fn: Optional[RewardFn] = None, *, overwrite: bool = False):
  """Register ``fn`` under ``name``; usable directly or as a decorator.

  ``register_reward("x", f)`` registers and returns ``f``;
  ``@register_reward("x")`` does the same for the decorated function.
  Re-registering an existing name raises unless ``overwrite=True`` (silent
  replacement of e.g. "math" would be a nasty bug to track down).
  """

  def _register(f: RewardFn) -> RewardFn:
    if not callable(f):
      raise TypeError(f"reward {name!r} must be callable, got {type(f).__name__}")
    if name in _REGISTRY and _REGISTRY.get(name) is not f and not overwrite:
      raise ValueError(f"reward {name!r} is already registered (pass overwrite=True)")
    return _REGISTRY.register(name, f, override=True)

  return _register if fn is None else _register(fn)


def unregister_reward(name: str) -> None:
  """Remove ``name`` from the registry (mainly for tests)."""
  _REGISTRY.unregister(name)


def available_rewards() -> List[str]:
  """Sorted list of registered reward names."""
  return _REGISTRY.names()


def get_reward(name: str) -> RewardFn:
  """Return the reward registered as ``name``.

  Raises :class:`UnknownRewardError` (a ``KeyError``) listing the valid names.
  """
  return _REGISTRY.get(name)


def _normalize_spec(spec: RewardSpec) -> List[Tuple[str, RewardFn, float]]:
  """Turn any accepted spec into ``[(label, fn, weight), ...]``."""
  if isinstance(spec, str) or callable(spec):
    items: List[Tuple[Any, float]] = [(spec, 1.0)]
  elif isinstance(spec, Mapping):
    items = [(k, float(w)) for k, w in spec.items()]
  else:
    items = [(k, 1.0) for k in spec]
  out = []
  for key, weight in items:
    if isinstance(key, str):
      out.append((key, get_reward(key), weight))
    elif callable(key):
      out.append((getattr(key, "__name__", repr(key)), key, weight))
    else:
      raise TypeError(f"reward spec entries must be names or callables, got {key!r}")
  return out


def select_columns(fn: RewardFn, columns: Mapping[str, Any], label: Optional[str] = None) -> dict:
  """Pick the subset of ``columns`` that ``fn`` accepts.

  * a ``**kwargs`` parameter means "give me everything";
  * otherwise only named parameters (after ``completions``) are passed;
  * a required parameter with no matching column raises
    :class:`MissingColumnError` naming both the function and the column.
  """
  label = label or getattr(fn, "__name__", repr(fn))
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):  # some C callables have no signature
    return dict(columns)
  if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
    params = params[1:]  # the completions argument
  if any(p.kind is p.VAR_KEYWORD for p in params):
    return dict(columns)
  chosen = {}
  for p in params:
    if p.kind is p.VAR_POSITIONAL:
      continue
    if p.name in columns:
      chosen[p.name] = columns[p.name]
    elif p.default is p.empty:
      raise MissingColumnError(
          f"reward function {label!r} requires column {p.name!r}, "
          f"but only {sorted(columns)} were provided"
      )
  return chosen


def compute_rewards(spec: RewardSpec, completions: Sequence[str], **columns) -> np.ndarray:
  """Evaluate several reward functions on one batch.

  Args:
    spec: a registered name, a list of names/callables, or a mapping
      ``{name_or_callable: weight}``; weights scale that function's column.
    completions: ``n`` decoded completions.
    **columns: dataset columns aligned with ``completions``.

  Returns:
    ``float64`` array of shape ``[n, num_fns]`` (column order = spec order);
    ``.sum(axis=1)`` gives the total (weighted) reward per sample.
  """
  completions = list(completions)
  fns = _normalize_spec(spec)
  out = np.zeros((len(completions), len(fns)), dtype=np.float64)
  for j, (label, fn, weight) in enumerate(fns):
    values = fn(completions, **select_columns(fn, columns, label))
    values = list(values)
    if len(values) != len(completions):
      raise ValueError(
          f"reward function {label!r} returned {len(values)} values "
          f"for {len(completions)} completions"
      )
    out[:, j] = np.asarray(values, dtype=np.float64) * weight
  return out
