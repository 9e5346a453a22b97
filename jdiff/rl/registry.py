"""Name -> callable registries for the interchangeable RL pieces (DESIGN.md "Conventions").

A config string picks a policy loss, an advantage estimator, a batch builder or a value
loss; each method module registers its pieces at import time::

    @policy_losses.register("clipped")
    def clipped_policy_loss(...): ...

    loss_fn = policy_losses.get(config.policy_loss)
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, TypeVar

T = TypeVar("T", bound=Callable)


class Registry:
  """A small named table of callables of one ``kind`` (e.g. ``"policy loss"``)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: Dict[str, Callable] = {}

  def register(self, name: str, fn: Optional[T] = None, *, override: bool = False):
    """Registers ``fn`` under ``name``; usable as ``@reg.register("name")`` or directly.

    Registering a second, different object under a taken name is an error unless
    ``override=True`` (re-registering the same object, e.g. on module reload, is allowed).
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

    def deco(f: T) -> T:
      old = self._items.get(name)
      if old is not None and old is not f and not override and not _same_def(old, f):
        raise ValueError(f"{self.kind} {name!r} is already registered ({old!r})")
      self._items[name] = f
      return f

    return deco if fn is None else deco(fn)

  def get(self, name: str) -> Callable:
    try:
      return self._items[name]
    except KeyError:
      raise KeyError(f"unknown {self.kind} {name!r}; available: {sorted(self._items)}") from None

  def names(self) -> list:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._items)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {self.names()})"


def _same_def(a, b) -> bool:
  """True for two versions of the same function (module re-imported under tests)."""
  return (getattr(a, "__module__", None) == getattr(b, "__module__", object())
          and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", object()))


policy_losses = Registry("policy loss")
advantage_estimators = Registry("advantage estimator")
batch_builders = Registry("batch builder")
value_losses = Registry("value loss")

__all__ = ["Registry", "advantage_estimators", "batch_builders", "policy_losses", "value_losses"]
