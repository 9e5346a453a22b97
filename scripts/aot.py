#!/usr/bin/env python
"""Compiles every program of a recipe for a TPU topology, on a machine without a TPU.

  python scripts/aot.py --config configs/tracerl_trado4b_math.py --topology v5p:2x2x1 \
      [--mesh 1,4,1] [--config.rl.rollout_batch=512 ...]

Prints one row per program (per-device argument / output / temp bytes, total vs the chip's
HBM, FLOPs and bytes moved, roofline time), a projected step time (each program times how
often a step runs it), and last ``fits: yes`` or ``fits: no (PROGRAM needs X GiB of Y GiB per
device)``; the exit code is 0 only for yes. Nothing is allocated and no checkpoint is read
(``jdiff.aot``, ``jdiff.aot_recipe``). Needs ``libtpu`` (``pip install jdiff[tpu]``).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, "a TPU topology, e.g. v5p:2x2x1, v5e:4x4")
_ONLY = flags.DEFINE_list("only", None, "compile only these programs (names as printed)")
_MESH = flags.DEFINE_string(
    "mesh",
    None,
    "data,fsdp,tensor (default: config.mesh.shape, one -1 " "filling the topology's devices)",
)


def mesh_shape(text, config_shape, devices: int):
  """``--mesh d,f,t`` or the config's shape with its -1 resolved for ``devices``."""
  shape = [int(x) for x in text.split(",")] if text else [int(x) for x in config_shape]
  if len(shape) != 3:
    raise ValueError(f"--mesh {text or config_shape}: expected three sizes data,fsdp,tensor")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)}: at most one -1")
  if -1 in shape:
    known = -1 * int(__import__("numpy").prod(shape))
    if devices % known:
      raise ValueError(
          f"mesh shape {tuple(shape)} does not fit the topology's {devices} " "devices"
      )
    shape[shape.index(-1)] = devices // known
  return tuple(shape)


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def report(config, topology: str, mesh_text=None, out=print, only=None):
  """Compiles ``config``'s programs for ``topology`` and prints the table: (all fit, the
  programs, their reports)."""
  from jdiff import aot, aot_recipe

  devices = aot.topology_devices(topology)
  shape = mesh_shape(mesh_text, config.get("mesh", {}).get("shape", (1, -1, 1)), len(devices))
  mesh = aot.topology_mesh(topology, shape)
  progs = aot_recipe.programs(config, mesh)
  if only:
    unknown = sorted(set(only) - {p.name for p in progs})
    if unknown:
      raise ValueError(
          f"--only {unknown}: no such program; this config's: " f"{[p.name for p in progs]}"
      )
    progs = [p for p in progs if p.name in only]
  reports = aot_recipe.compile_all(progs, log=_progress)
  out(f"topology {topology} ({len(devices)} devices), mesh (data, fsdp, tensor) = {shape}")
  out(aot.format_table(reports))
  runs = ", ".join(f"{p.name} x{p.runs_per_step:g}" for p in progs)
  out(f"projected step (roofline): {aot_recipe.step_time(progs, reports):.4g} s  [{runs}]")
  text = aot.verdict(reports)
  out(text)
  return text == "fits: yes", progs, reports


def main(argv):
  del argv
  try:
    ok, _, _ = report(_CONFIG.value, _TOPOLOGY.value, _MESH.value, only=_ONLY.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
