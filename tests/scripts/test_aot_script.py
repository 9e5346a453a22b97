"""scripts/aot.py: every program of a config compiled for a TPU topology on the CPU host.

The report runs in-process (one JAX start); the exit codes run the command line.
"""

import functools
import importlib.util
import os
import re
import subprocess
import sys

import jax
import pytest

pytest.importorskip("libtpu")

from jdiff.config_loading import load_config_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = re.compile(
    r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
    r"([\d.]+)\s+([\d.]+)$"
)


@functools.lru_cache(maxsize=None)
def _script():
  """scripts/aot.py, loaded once (it defines absl flags)."""
  spec = importlib.util.spec_from_file_location(
      "_jdiff_aot_script", os.path.join(ROOT, "scripts", "aot.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(**rl):
  c = load_config_module(os.path.join(ROOT, "configs", "tracerl.py")).get_config()
  for k, v in rl.items():
    c.rl[k] = v
  return c


def _run(config, topology):
  lines = []
  ok, progs, reports = _script().report(
      config, topology, out=lambda s: lines.extend(s.splitlines())
  )
  rows = {m.group(1): [float(x) for x in m.groups()[1:]] for m in map(ROW.match, lines) if m}
  assert set(rows) == {r.name for r in reports} and len(progs) == len(reports)
  return ok, lines, {r.name: r for r in reports}


def test_default_recipe_fits_v5e_2x2():
  ok, lines, rows = _run(_config(), "v5e:2x2")
  assert ok and lines[-1] == "fits: yes"
  assert set(rows) == {
      "rollout_sampler",
      "policy_logprobs",
      "policy_update",
      "eval_sampler",
      "warm_start_sft_update",
  }
  for name, r in rows.items():
    assert r.argument_bytes > 0 and r.total_bytes > 0 and r.temp_bytes >= 0, name
    assert r.hbm_bytes == 16 * 1024**3 and r.flops > 0 and r.bytes_accessed > 0, name
    assert r.roofline_s > 0 and r.fits, name
  assert lines[0].startswith("topology v5e:2x2 (4 devices), mesh (data, fsdp, tensor) = (4, 1, 1)")
  step = float(re.search(r"projected step \(roofline\): ([\d.e+-]+) s", "\n".join(lines)).group(1))
  assert step > 0
  assert jax.default_backend() == "cpu"


def test_multi_host_v5e_4x4_with_rollout_micro_batches():
  config = _config(rollout_batch=16)  # 64 rows in 4 sampler calls of 16 (one per data shard)
  config.sft.steps = 0
  ok, lines, rows = _run(config, "v5e:4x4")
  assert ok and lines[-1] == "fits: yes" and "(16 devices)" in lines[0]
  assert set(rows) == {"rollout_sampler", "policy_logprobs", "policy_update", "eval_sampler"}
  assert all(r.flops > 0 and r.bytes_accessed > 0 and r.devices == 16 for r in rows.values())
  assert "rollout_sampler x4" in "\n".join(lines)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [
          sys.executable,
          os.path.join(ROOT, "scripts", "aot.py"),
          "--config",
          os.path.join(ROOT, "configs", "tracerl.py"),
          *args,
      ],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
      check=False,
  )


def test_too_large_batch_says_no_and_exits_non_zero():
  # 65536 prompts x 8 responses: the update's activations and the sampler's canvases and
  # caches are tens of GiB per v5e chip.
  done = _cli("--topology", "v5e:2x2", "--config.rl.prompts_per_step=65536", "--config.sft.steps=0")
  last = done.stdout.strip().splitlines()[-1]
  assert done.returncode == 1, done.stderr[-2000:]
  assert re.fullmatch(r"fits: no \(\S+ needs [\d.]+ GiB of 16\.00 GiB per device\)", last), last


def test_bad_topology_and_mesh_are_named():
  done = _cli("--topology", "v9:2x2")
  assert done.returncode == 2 and "unknown TPU topology 'v9:2x2'" in done.stderr
  assert "v4, v5e, v5p, v6e" in done.stderr
  done = _cli("--topology", "v5e:2x2", "--mesh", "2,4,1")
  assert done.returncode == 2
  assert "mesh shape (2, 4, 1)" in done.stderr and "'v5e:2x2', which has 4 devices" in done.stderr
