"""jdiff.registry.Registry: the one name lookup behind methods, samplers, rewards, tasks, ..."""

import pytest

from jdiff.registry import Registry


def test_register_get_and_errors():
  reg = Registry("thing")
  assert reg.register("a")(len) is len  # decorator form returns the object
  reg.register("b", abs)
  assert reg.get("a") is len and reg["b"] is abs
  assert "a" in reg and "c" not in reg and 3 not in reg
  assert list(reg) == ["a", "b"] and len(reg) == 2
  with pytest.raises(KeyError, match=r"unknown thing 'c'; available: \['a', 'b'\]"):
    reg.get("c")
  with pytest.raises(ValueError, match="already registered"):
    reg.register("a", abs)
  reg.register("a", len)  # the same object again is fine (module reload)
  reg.register("a", abs, override=True)
  assert reg.get("a") is abs
  reg.unregister("a")
  assert "a" not in reg
  with pytest.raises(ValueError, match="non-empty"):
    reg.register("", len)


def test_custom_error_class():
  class Missing(KeyError):
    pass

  with pytest.raises(Missing):
    Registry("reward", error=Missing).get("x")


def test_every_lookup_uses_the_registry():
  from jdiff import sft
  from jdiff.models.config import PRESETS
  from jdiff.rewards import registry as rewards
  from jdiff.rl.method import methods
  from jdiff.rl.registry import advantage_estimators
  from jdiff.sampling import registry as samplers
  from jdiff.tasks import TASKS

  for reg in (
      PRESETS,
      rewards._REGISTRY,
      methods,
      advantage_estimators,
      samplers._SAMPLERS,
      TASKS,
      sft.OBJECTIVES,
  ):
    assert isinstance(reg, Registry), reg
  assert {"tracerl", "dtrpo", "cj_grpo"} <= set(methods)
  assert samplers.names() == ["block", "dream", "llada"]
  with pytest.raises(KeyError, match="unknown sampler 'nope'"):
    samplers.get("nope")
  with pytest.raises(KeyError, match="unknown task 'nope'"):
    TASKS.get("nope")
