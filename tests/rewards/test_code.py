"""Tests for the sandboxed code reward, including hostile programs."""

import os
import socket
import time
import uuid

import pytest

from jdiff.rewards.code import code_reward, extract_code
from jdiff.rewards.sandbox import SandboxLimits, run_python_sandboxed, sandbox_isolation

FAST = SandboxLimits(timeout_s=1.0, cpu_s=1)
GOOD = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def fenced(code: str, lang: str = "python") -> str:
  return f"Here is my solution:\n```{lang}\n{code}```\nDone."


def reward(code: str, tests=("assert True",), **kw) -> float:
  (value,) = code_reward(
      [fenced(code)], [list(tests) if not isinstance(tests, str) else tests], limits=FAST, **kw
  )
  return value


# ------------------------------------------------------------- extraction
def test_extract_last_python_block():
  text = "```python\nx = 1\n```\nbetter:\n```python\nx = 2\n```"
  assert extract_code(text) == "x = 2\n"


def test_extract_falls_back_to_any_fence():
  assert extract_code("```\nprint(1)\n```") == "print(1)\n"
  assert extract_code("```py\ny = 3\n```") == "y = 3\n"
  assert extract_code("no code here") is None
  assert extract_code("```python\nunterminated") is None


# ---------------------------------------------------------------- scoring
def test_correct_solution_passes_all():
  assert reward(GOOD, TESTS) == 1.0


def test_fraction_of_tests_passed():
  buggy = "def add(a, b):\n    return a + b if a > 0 else -99\n"
  assert reward(buggy, TESTS) == pytest.approx(2 / 3)


def test_string_tests_are_one_program():
  assert reward(GOOD, "assert add(1, 2) == 3\nassert add(2, 2) == 4") == 1.0
  assert reward(GOOD, "assert add(1, 2) == 3\nassert add(2, 2) == 5") == 0.0
  assert reward(GOOD, '["assert add(1, 2) == 3", "assert add(2, 2) == 5"]') == 0.5  # JSON list


def test_no_code_or_no_tests_is_zero():
  assert code_reward(["no fence"], [TESTS], limits=FAST) == [0.0]
  assert reward(GOOD, []) == 0.0


def test_syntax_error_and_main_guard():
  assert reward("def add(a, b) return a + b", TESTS) == 0.0
  # the module is named "solution", so a __main__ block (reading stdin) does not run
  assert reward(GOOD + "if __name__ == '__main__':\n    input()\n", TESTS) == 1.0


def test_batch_alignment():
  completions = [fenced(GOOD), "nothing", fenced("def add(a, b):\n    return None\n")]
  assert code_reward(completions, [TESTS] * 3, limits=FAST) == [1.0, 0.0, 0.0]


def test_isolation_level_is_reported():
  assert sandbox_isolation() in {"netns+nobody", "userns+netns", "nobody", "netns", "plain"}


# ---------------------------------------------------------- hostile code
def test_infinite_loop_is_killed():
  start = time.monotonic()
  assert reward("while True:\n    pass\n") == 0.0
  assert time.monotonic() - start < 5.0


def test_hang_in_one_test_keeps_fraction_of_others():
  code = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
  tests = ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]
  assert reward(code, tests) == pytest.approx(2 / 3)


def test_fork_bomb_is_blocked():
  assert reward("import os\nwhile True:\n    os.fork()\n") == 0.0
  assert reward("import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])\n") == 0.0
  assert reward("import os\nos.system('sleep 100 &')\n") == 0.0


def test_write_outside_workdir_is_blocked(tmp_path):
  targets = [tmp_path / "outside-file", f"/tmp/jdiff-outside-{uuid.uuid4().hex}"]
  for target in targets:
    assert reward(f"open({str(target)!r}, 'w').write('pwned')\n") == 0.0
    assert reward(f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n") == 0.0
    assert not os.path.exists(target)
  assert reward("open('../escape.txt', 'w').write('x')\n") == 0.0
  # writing inside the working directory is fine
  assert reward("open('ok.txt', 'w').write('hi')\nassert open('ok.txt').read() == 'hi'\n") == 1.0


def test_hard_link_to_outside_file_is_blocked(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("original")
  code = f"import os\nos.link({str(victim)!r}, 'alias')\nopen('alias', 'w').write('pwned')\n"
  assert reward(code) == 0.0
  assert victim.read_text() == "original"


def test_parent_secrets_are_not_visible(monkeypatch):
  monkeypatch.setenv("JDIFF_SECRET", "s3cr3t")
  assert reward("import os\nassert os.environ.get('JDIFF_SECRET') == 's3cr3t'\n") == 0.0
  # positive control: the program ran and simply does not see the variable
  assert reward("import os\nassert 'JDIFF_SECRET' not in os.environ\n") == 1.0
  leak = "import os\nassert b's3cr3t' in open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
  assert reward(leak) == 0.0
  assert reward("open('/etc/passwd').read()\n") == 0.0


def test_huge_memory_allocation_fails():
  assert reward("x = bytearray(8 * 1024 ** 3)\n") == 0.0
  assert reward("x = [0] * (10 ** 10)\n") == 0.0


def test_network_is_blocked():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  server.settimeout(0.2)
  port = server.getsockname()[1]
  try:
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    assert reward(code) == 0.0
    assert reward(f"s = __import__('_socket').socket()\ns.connect(('127.0.0.1', {port}))\n") == 0.0
    with pytest.raises(OSError):  # socket.timeout is an OSError: nobody connected
      server.accept()
  finally:
    server.close()


def test_exit_tricks_do_not_count_as_passing():
  assert reward("import os\nos._exit(0)\n", ["assert False"]) == 0.0
  assert reward("import sys\nsys.exit(0)\n", ["assert False"]) == 0.0
  assert reward("raise SystemExit(0)\n") == 0.0


def test_other_escape_hatches_are_blocked():
  assert reward("import ctypes\n") == 0.0
  assert reward("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\n") == 0.0
  assert reward("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n") == 0.0
  assert reward("import gc\ngc.get_objects()\n") == 0.0


def test_output_flood_is_bounded():
  start = time.monotonic()
  assert reward("while True:\n    print('x' * 100000)\n") == 0.0
  assert time.monotonic() - start < 5.0


def test_workdir_is_removed_and_nonce_hidden():
  result = run_python_sandboxed(
      "import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd())\n", limits=FAST
  )
  assert result.passed
  workdir = result.stdout.strip()
  assert workdir and not os.path.exists(workdir)
  assert result.stdout.strip() == workdir  # the pass marker is stripped from stdout
