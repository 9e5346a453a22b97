"""One name -> object table for every lookup a config string drives: RL methods, advantage
estimators, rewards, samplers, SFT objectives, tasks and model presets.

    methods = Registry("rl method")

    @methods.register("tracerl")
    def ...

    methods.get("tracerl")      # KeyError naming the kind and the available names
    "tracerl" in methods; sorted(methods); methods["tracerl"]

The module imports nothing from jdiff, so any module may hold a registry without an import cycle.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Type


class Registry:
  """A small named table of objects of one ``kind`` (e.g. ``"sampler"``)."""

  def __init__(self, kind: str, error: Type[KeyError] = KeyError):
    self.kind = kind
    self._error = error  # a KeyError subclass a caller already catches (rewards)
    self._items: Dict[str, Any] = {}

  def register(self, name: str, obj: Any = None, *, override: bool = False):
    """Registers ``obj`` under ``name``; usable as ``@reg.register("name")`` or directly.

    Registering a second, different object under a taken name is an error unless
    ``override=True`` (re-registering the same object, e.g. on module reload, is allowed).
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

    def deco(f):
      old = self._items.get(name)
      if old is not None and old is not f and not override and old != f and not _same_def(old, f):
        raise ValueError(f"{self.kind} {name!r} is already registered ({old!r})")
      self._items[name] = f
      return f

    return deco if obj is None else deco(obj)

  def unregister(self, name: str) -> None:
    """Removes ``name`` if present (tests that register temporary entries)."""
    self._items.pop(name, None)

  def get(self, name: str) -> Any:
    try:
      return self._items[name]
    except (KeyError, TypeError):
      raise self._error(f"unknown {self.kind} {name!r}; available: {self.names()}") from None

  __getitem__ = get

  def names(self) -> list:
    return sorted(self._items)

  def items(self):
    return self._items.items()

  def __contains__(self, name: Any) -> bool:
    return isinstance(name, str) and name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._items)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {self.names()})"


def _same_def(a, b) -> bool:
  """True for two versions of the same function (module re-imported under tests)."""
  return getattr(a, "__module__", None) == getattr(b, "__module__", object()) and getattr(
      a, "__qualname__", None
  ) == getattr(b, "__qualname__", object())


__all__ = ["Registry"]
