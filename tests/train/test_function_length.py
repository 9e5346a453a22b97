"""House style: no function in jdiff/train is longer than 60 lines (def line to last line)."""

import ast
import os

TRAIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "jdiff", "train"
)
LIMIT = 60


def long_functions(root: str = TRAIN, limit: int = LIMIT):
  out = []
  for f in sorted(os.listdir(root)):
    if not f.endswith(".py"):
      continue
    path = os.path.join(root, f)
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno
        if n > limit:
          out.append(f"{f}:{node.lineno} {node.name} ({n} lines)")
  return out


def test_counter_sees_a_long_function(tmp_path):
  (tmp_path / "m.py").write_text("def f():\n" + "  x = 1\n" * 61 + "\n\ndef g():\n  pass\n")
  assert long_functions(str(tmp_path)) == ["m.py:1 f (61 lines)"]


def test_no_function_in_train_over_60_lines():
  assert long_functions() == []
