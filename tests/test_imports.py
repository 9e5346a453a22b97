"""Every import of the package and its scripts resolves with the declared dependencies.

An import that only the test extra satisfies (torch pulls jinja2, for instance) passes the
suite and fails a user who ran ``pip install -e .``. So ``.ci/run`` also runs this file as a
script in a virtual environment with the runtime dependencies only::

  python tests/test_imports.py   # prints "N passed, M failed" and exits 1 on a failure

It imports every module of ``jdiff``, then every module that any ``import`` statement in
``jdiff/`` or ``scripts/`` names, including the ones inside functions (lazy imports of
optional paths such as the math reward's ``math_verify``), without running any script.
Modules of an optional extra are listed in ``OPTIONAL`` with the extra that installs them.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import sys
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top-level modules that only an optional extra installs: {module: extra}.
OPTIONAL: Dict[str, str] = {"libtpu": "aot"}


def package_modules() -> List[str]:
  """Every module of the ``jdiff`` package."""
  sys.path.insert(0, ROOT)
  import jdiff

  names = ["jdiff"]
  for info in pkgutil.walk_packages(jdiff.__path__, "jdiff."):
    names.append(info.name)
  return sorted(names)


def imported_names(paths: List[str]) -> Set[str]:
  """The absolute module names that the import statements in ``paths`` name."""
  names = set()
  for path in paths:
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module)
  return names


def source_files() -> List[str]:
  out = []
  for top in ("jdiff", "scripts"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      out.extend(os.path.join(dirpath, f) for f in files if f.endswith(".py"))
  return sorted(out)


def modules_to_check() -> List[str]:
  names = set(package_modules()) | imported_names(source_files())
  return sorted(n for n in names if n.split(".")[0] not in OPTIONAL)


def import_all() -> Dict[str, str]:
  """``{module: error}`` for every module that fails to import."""
  failures = {}
  for name in modules_to_check():
    try:
      importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - report every kind of import failure
      failures[name] = f"{type(e).__name__}: {e}"
  return failures


def test_every_import_resolves():
  assert import_all() == {}


def test_scripts_imports_are_seen():
  # The walk must reach imports inside functions, where the scripts keep theirs.
  names = imported_names([os.path.join(ROOT, "scripts", "train.py")])
  assert {"absl", "ml_collections", "jax", "jdiff.train.rl_loop"} <= names


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  failed = import_all()
  for name, err in failed.items():
    print(f"FAILED import {name}: {err}")
  print(f"{len(modules_to_check()) - len(failed)} passed, {len(failed)} failed")
  sys.exit(1 if failed else 0)
