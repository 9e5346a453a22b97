"""Loading ``configs/*.py`` files by path, so configs can build on each other without any
``sys.path`` edits (a config is a plain file, not part of an importable package, and
``scripts/*.py --config PATH`` may be run from any directory)."""

import importlib.util
import os
from types import ModuleType


def load_config_module(path: str) -> ModuleType:
  """Executes the Python file ``path`` as a fresh module (named after the file) and returns it.

  Fresh on every call: a derived config that edits its base's ``get_config()`` result never
  sees another config's edits, and nothing is cached in ``sys.modules``.
  """
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling(anchor_file: str, name: str) -> ModuleType:
  """The config file ``name``.py in the directory of ``anchor_file`` (pass ``__file__``).

  Usage in a config: ``tracerl = load_sibling(__file__, "tracerl")``.
  """
  folder = os.path.dirname(os.path.abspath(anchor_file))
  return load_config_module(os.path.join(folder, f"{name}.py"))


__all__ = ["load_config_module", "load_sibling"]
