"""Test setup: 8 fake CPU devices (set before JAX starts), tiny HF checkpoint fixtures."""

import os
import sys

# Must run before anything imports jax: the device count is fixed when the backend starts.
_xla = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count=8" not in _xla:
  _xla += " --xla_force_host_platform_device_count=8"  # appended: the last occurrence wins
# Tests compile many tiny programs and run each only a few times: a low XLA CPU backend
# optimisation level cuts total test CPU time by about a third (set the flag to override).
if "--xla_backend_optimization_level" not in _xla:
  _xla += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _xla.strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
  sys.path.insert(0, _TESTS)

import pytest  # noqa: E402

FAMILIES = ("llada", "dream", "sdar")


class _HFCheckpoint:
  """A tiny HF checkpoint directory and its torch reference model."""

  def __init__(self, family, path, torch_model):
    self.family, self.path, self.torch_model = family, path, torch_model

  def __fspath__(self):
    return self.path


@pytest.fixture
def compile_events():
  """A list that receives one entry per XLA compilation while the test runs (``clear()`` it
  after a warm-up to count what follows)."""
  import jax

  events = []

  def listener(name, *args, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module", autouse=True)
def _drop_compiled_programs():
  """Frees every compiled program after each test module.

  XLA's CPU backend maps each executable's machine code into its own memory pages, and the
  suite compiles thousands of programs in one process: kept alive by JAX's caches, their
  mappings reached the kernel's per-process limit (vm.max_map_count, 65530 by default)
  about 90% into the run, and the next compilation died with a segmentation fault. A module
  that needs a program again recompiles it.
  """
  yield
  import gc

  import jax

  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """Builds (lazily, once per session) one checkpoint per family: ``hf_checkpoints(family)``."""
  import hf_fixtures

  cache = {}

  def get(family, **overrides):
    key = (family, tuple(sorted(overrides.items())))
    if key not in cache:
      path = str(tmp_path_factory.mktemp(f"hf_{family}"))
      model = hf_fixtures.MAKERS[family](path, **overrides)
      cache[key] = _HFCheckpoint(family, path, model)
    return cache[key]

  return get


@pytest.fixture(scope="session")
def jdiff_models():
  """Session cache of ``jdiff.from_pretrained(hf_dir, dtype='float32')`` per checkpoint path."""
  cache = {}

  def get(ckpt):
    if ckpt.path not in cache:
      import jdiff

      cache[ckpt.path] = jdiff.from_pretrained(ckpt.path, dtype="float32")
    return cache[ckpt.path]

  return get


@pytest.fixture(params=FAMILIES)
def family(request):
  return request.param


@pytest.fixture
def hf_dir(family, hf_checkpoints):
  """The default tiny checkpoint of ``family`` (GQA: 4 query heads over 2 kv heads)."""
  return hf_checkpoints(family)


# Max abs logit differences recorded by the parity tests, printed at the end of the run.
_DIFFS = {}


@pytest.fixture(scope="session")
def record_diff():
  def record(name, value):
    _DIFFS[name] = max(float(value), _DIFFS.get(name, 0.0))

  return record


def pytest_terminal_summary(terminalreporter):
  if _DIFFS:
    terminalreporter.section("max |logit diff| vs torch reference")
    for name in sorted(_DIFFS):
      terminalreporter.write_line(f"{name:<48s} {_DIFFS[name]:.3e}")
