"""No import cycle inside jdiff: every module's jdiff imports (top-level and inside functions),
parsed with ast, form a graph without a cycle."""

import ast
import os
from typing import Dict, List, Optional, Set

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jdiff")


def _modules() -> Dict[str, str]:
  """Dotted module name -> file path for every .py file under jdiff/."""
  out = {}
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), os.path.dirname(ROOT))[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(d, f)
  return out


def _resolve(name: str, modules) -> Optional[str]:
  """The longest jdiff module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def import_graph() -> Dict[str, Set[str]]:
  """module -> the jdiff modules it imports (a package's ``__init__`` counts as the package)."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for mod, path in modules.items():
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):  # every import, at any depth (functions included)
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
          pkg = pkg[: len(pkg) - (node.level - 1)]
          base = ".".join(pkg + ([base] if base else []))
        # ``from pkg import sub`` depends on the submodule; ``from mod import name`` on mod.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
      for n in names:
        if n == "jdiff" or n.startswith("jdiff."):
          target = _resolve(n, modules)
          if target is not None and target != mod:
            graph[mod].add(target)
  return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """One cycle as ``[a, b, ..., a]``, or None (iterative DFS, colours white/grey/black)."""
  colour = {m: 0 for m in graph}
  for root in sorted(graph):
    if colour[root]:
      continue
    stack = [(root, iter(sorted(graph[root])))]
    path = [root]
    colour[root] = 1
    while stack:
      node, it = stack[-1]
      nxt = next(it, None)
      if nxt is None:
        colour[node] = 2
        stack.pop()
        path.pop()
      elif colour[nxt] == 1:
        return path[path.index(nxt) :] + [nxt]
      elif colour[nxt] == 0:
        colour[nxt] = 1
        stack.append((nxt, iter(sorted(graph[nxt]))))
        path.append(nxt)
  return None


def test_finder_sees_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_reads_function_level_imports():
  graph = import_graph()
  # rollout.py imports the sampler registry at top level; the value runtime imports ValueModel
  # inside a function.
  assert "jdiff.sampling.registry" in graph["jdiff.train.rollout"]
  assert "jdiff.models.transformer" in graph["jdiff.train.runtime"]


def test_no_import_cycle_in_jdiff():
  graph = import_graph()
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)
