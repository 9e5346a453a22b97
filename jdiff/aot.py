"""Ahead-of-time compilation for TPU topologies, on a machine without a TPU.

``libtpu`` (``pip install jdiff[aot]``) compiles for a TPU topology described by name
(``"v5p:2x2x1"``, ``"v5e:4x4"``, multi-host ones included) on any host: the compiled
program's memory and cost analyses then say, per device, how many bytes of HBM a program
needs and how many FLOPs and bytes it moves, before a TPU is rented. A recipe check is a
loop over ``(name, fn, abstract args, shardings)``::

  mesh = topology_mesh("v5p:2x2x1", (1, 4, 1))
  graphdef, state = abstract_model(preset("sdar_4b"), mesh)
  reports = [compile_program("loss_grad", fn, (state, batch), (shardings(state), ...))]
  print(format_table(reports)); print(verdict(reports))

Nothing is allocated: parameters come from ``nnx.eval_shape`` as ``ShapeDtypeStruct``s.
The TPU backend is only loaded to compile; JAX's default backend is left as it is
(``docs/design.md``, ahead-of-time checks).
"""

from __future__ import annotations

import dataclasses
import contextlib
import functools
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jdiff.sharding.rules import MESH_AXES, TRAIN_RULES, MeshAxes, logical_spec, use_rules

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures of one TPU generation (bf16 peak; HBM capacity and bandwidth)."""

  name: str
  device_kind: str  # jax.Device.device_kind of its devices
  hbm_bytes: float
  peak_flops: float  # bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s


# Google Cloud TPU system-architecture pages, "key specifications" tables (the pages write the
# HBM capacity as "GB"; the chips expose it as GiB, which is what a program is checked against):
CHIPS: Mapping[str, Chip] = {
    # cloud.google.com/tpu/docs/v4: 32 GiB HBM2, 1200 GBps, 275 bf16 TFLOPs per chip.
    "v4": Chip("v4", "TPU v4", 32 * GiB, 275e12, 1.2e12),
    # cloud.google.com/tpu/docs/v5e: 16 GiB HBM2, 819 GBps, 197 bf16 TFLOPs per chip.
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GiB, 197e12, 819e9),
    # cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e, 2765 GBps, 459 bf16 TFLOPs per chip.
    "v5p": Chip("v5p", "TPU v5", 95 * GiB, 459e12, 2.765e12),
    # cloud.google.com/tpu/docs/v6e: 32 GiB HBM, 1640 GBps, 918 bf16 TFLOPs per chip.
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GiB, 918e12, 1.64e12),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
_FORM = "'<generation>:<AxB[xC]>' with generation one of " + ", ".join(CHIPS)


@contextlib.contextmanager
def _libtpu_env():
  """Compiling only: no TPU is opened, so libtpu's one-process-per-host lock (held by any other
  libtpu user on the machine) and its worker discovery need not apply. The variables are
  restored afterwards: a process started later (a training run) must not inherit a
  ``TPU_WORKER_HOSTNAMES`` that makes scripts/train.py take this host for a TPU VM."""
  defaults = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_WORKER_HOSTNAMES": "localhost"}
  added = [k for k in defaults if k not in os.environ]
  os.environ.update({k: defaults[k] for k in added})
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


def parse_topology(name: str) -> Tuple[Chip, Tuple[int, ...]]:
  """``"v5p:2x2x1"`` -> (the v5p :class:`Chip`, (2, 2, 1)); ValueError for anything else."""
  m = _TOPOLOGY.match(str(name))
  if m is None:
    raise ValueError(
        f"unknown TPU topology {name!r}; expected {_FORM} (e.g. 'v5p:2x2x1', " f"'v5e:4x4')"
    )
  return CHIPS[m.group(1)], tuple(int(x) for x in m.group(2).split("x"))


@functools.lru_cache(maxsize=None)
def topology_devices(name: str) -> Tuple[Any, ...]:
  """The (compile-only) devices of a named TPU topology, all processes of it."""
  parse_topology(name)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  with _libtpu_env():
    return tuple(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)


def topology_mesh(
    name: str, mesh_shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES
) -> Mesh:
  """A ``('data', 'fsdp', 'tensor')`` mesh over every device of topology ``name``."""
  devices = topology_devices(name)
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(axis_names) or int(np.prod(shape)) != len(devices):
    raise ValueError(
        f"mesh shape {shape} over axes {tuple(axis_names)} does not fit topology "
        f"{name!r}, which has {len(devices)} devices"
    )
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), tuple(axis_names))


def chip_of(devices: Sequence[Any]) -> Chip:
  kinds = {d.device_kind for d in devices}
  for chip in CHIPS.values():
    if kinds == {chip.device_kind}:
      return chip
  raise ValueError(
      f"devices of kind {sorted(kinds)} match no chip in CHIPS "
      f"({[c.device_kind for c in CHIPS.values()]})"
  )


def devices_per_chip(devices: Sequence[Any]) -> int:
  """Devices sharing one chip's HBM (2 on v4 without megacore, else 1)."""
  chips = {(d.process_index, tuple(getattr(d, "coords", (d.id,)))) for d in devices}
  return max(1, len(devices) // len(chips))


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """One compiled program's per-device figures."""

  name: str
  chip: Chip
  devices: int
  devices_per_chip: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs that reuse donated arguments' buffers
  temp_bytes: int
  # XLA's cost analysis counts a while loop's body once (a lax.scan over layers, the chunked
  # attention's tile loops): for such programs it is a lower bound unless `flops` was given.
  flops: float  # NaN where the compiler refused the program (see oom)
  bytes_accessed: float
  oom: Optional[str] = None  # the TPU compiler's out-of-HBM message, if it refused to compile

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  @property
  def hbm_bytes(self) -> float:
    return self.chip.hbm_bytes / self.devices_per_chip

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def roofline_s(self) -> float:
    """Lower bound on the step time: compute-bound or HBM-bound, whichever is slower."""
    share = 1.0 / self.devices_per_chip
    return max(
        self.flops / (self.chip.peak_flops * share),
        self.bytes_accessed / (self.chip.hbm_bandwidth * share),
    )


def _mesh_of(shardings) -> Mesh:
  for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding)):
    if isinstance(s, NamedSharding):
      return s.mesh
  raise ValueError("in_shardings holds no NamedSharding: cannot tell which topology to compile for")


def _cost(compiled) -> Mapping[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return cost or {}


def compile_program(
    name: str,
    fn: Callable,
    abstract_args: Sequence[Any],
    in_shardings,
    out_shardings=None,
    *,
    donate_argnums: Sequence[int] = (),
    rules: Mapping[str, MeshAxes] = TRAIN_RULES,
    flops: Optional[float] = None,
) -> ProgramReport:
  """Compiles ``fn(*abstract_args)`` for the topology of ``in_shardings``' mesh.

  ``abstract_args``: pytrees of ``jax.ShapeDtypeStruct`` (or arrays); the mesh is active
  while tracing, so ``constrain`` inside ``fn`` applies ``rules``. ``flops``: per-device
  FLOPs to report instead of XLA's count, which sees a loop body once (for a model scanned
  over its layers, pass e.g. ``3 * config.flops_per_token(L) * tokens / devices`` for a
  forward and backward).
  """
  mesh = _mesh_of(in_shardings)
  devices = list(mesh.devices.flat)
  jitted = jax.jit(
      fn,
      in_shardings=tuple(in_shardings),
      out_shardings=out_shardings,
      donate_argnums=tuple(donate_argnums),
  )
  common = dict(
      name=name,
      chip=chip_of(devices),
      devices=len(devices),
      devices_per_chip=devices_per_chip(devices),
  )
  with jax.set_mesh(mesh), use_rules(rules):
    lowered = jitted.lower(*abstract_args)
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      oom = _compile_time_oom(str(e))
      if oom is None:
        raise
      return ProgramReport(
          **common,
          argument_bytes=_argument_bytes(abstract_args, in_shardings),
          output_bytes=0,
          alias_bytes=0,
          temp_bytes=oom[0],
          flops=float("nan") if flops is None else float(flops),
          bytes_accessed=float("nan"),
          oom=oom[1],
      )
  mem, cost = compiled.memory_analysis(), _cost(compiled)
  return ProgramReport(
      **common,
      argument_bytes=int(mem.argument_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes),
      temp_bytes=int(mem.temp_size_in_bytes),
      flops=float(cost.get("flops", 0.0)) if flops is None else float(flops),
      bytes_accessed=float(cost.get("bytes accessed", 0.0)),
  )


_OOM = re.compile(r"CompileTimeHbmOom.*?temporaries \(([\d.]+)([KMGT]?)\)", re.S)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _compile_time_oom(message: str) -> Optional[Tuple[int, str]]:
  """(temporary bytes, message) from the TPU compiler's refusal of a program over HBM.

  The compiler stops at the first buffer assignment over budget, so no memory or cost
  analysis exists; its message says how many bytes of temporaries the program needed.
  """
  m = _OOM.search(message)
  if m is None:
    return None
  line = next((ln for ln in message.splitlines() if "CompileTimeHbmOom" in ln), message)
  return int(float(m.group(1)) * _UNITS[m.group(2)]), line.strip()


def _argument_bytes(abstract_args, in_shardings) -> int:
  """Per-device bytes of the arguments' shards (device 0's share of each array)."""
  total = 0
  for arg, sharding in zip(abstract_args, in_shardings):
    shardings = jax.tree.leaves(sharding, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(shardings) == 1:
      shardings = shardings * len(jax.tree.leaves(arg))
    for leaf, s in zip(jax.tree.leaves(arg), shardings):
      total += int(np.prod(s.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
  return total


def _resolve(reports: Sequence[ProgramReport], chip: Union[None, str, Chip]):
  """Reports with ``chip`` (a name or :class:`Chip`) substituted where given."""
  if chip is None:
    return list(reports)
  if isinstance(chip, str):
    if chip not in CHIPS:
      raise ValueError(f"unknown chip {chip!r}; expected one of {sorted(CHIPS)}")
    chip = CHIPS[chip]
  return [dataclasses.replace(r, chip=chip) for r in reports]


def format_table(reports: Sequence[ProgramReport], chip: Union[None, str, Chip] = None) -> str:
  """One row per program: per-device GiB (args, out, temp, total vs HBM), GFLOP, roofline."""
  rows = _resolve(reports, chip)
  head = (
      f"{'program':<24} {'args':>8} {'out':>8} {'temp':>8} {'total':>8} {'HBM':>7} "
      f"{'GFLOP':>10} {'GB moved':>9} {'roofline ms':>11}"
  )
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(
        f"{r.name:<24} {r.argument_bytes / GiB:8.2f} {r.output_bytes / GiB:8.2f} "
        f"{r.temp_bytes / GiB:8.2f} {r.total_bytes / GiB:8.2f} {r.hbm_bytes / GiB:7.1f} "
        f"{r.flops / 1e9:10.1f} {r.bytes_accessed / 1e9:9.2f} {r.roofline_s * 1e3:11.3f}"
    )
  return "\n".join(lines)


def verdict(reports: Sequence[ProgramReport], chip: Union[None, str, Chip] = None) -> str:
  """``fits: yes``, or ``fits: no (PROGRAM needs X GiB of Y GiB per device)`` for the largest
  program that does not fit."""
  over = [r for r in _resolve(reports, chip) if not r.fits]
  if not over:
    return "fits: yes"
  worst = max(over, key=lambda r: r.total_bytes / r.hbm_bytes)
  return (
      f"fits: no ({worst.name} needs {worst.total_bytes / GiB:.2f} GiB of "
      f"{worst.hbm_bytes / GiB:.2f} GiB per device)"
  )


def abstract_model(
    config, mesh: Mesh, rules: Optional[Mapping[str, MeshAxes]] = None, model_cls=None
):
  """``(graphdef, state)`` of a model whose state leaves are sharded ``ShapeDtypeStruct``s.

  ``config``: a :class:`~jdiff.models.ModelConfig`; ``model_cls`` defaults to
  :class:`~jdiff.models.DiffusionLM`. Nothing is allocated (``nnx.eval_shape``); each
  parameter's sharding follows its logical axes under ``rules`` (default TRAIN_RULES;
  SAMPLING_RULES for rollout programs).
  """
  from jdiff.models import DiffusionLM  # pylint: disable=g-import-not-at-top

  cls = DiffusionLM if model_cls is None else model_cls
  rules = TRAIN_RULES if rules is None else rules
  model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  mesh_shape = dict(mesh.shape)

  def one(var):
    value = var.get_value() if hasattr(var, "get_value") else var.value
    names = var.get_metadata().get("logical_axes") or (None,) * len(value.shape)
    spec = logical_spec(names, value.shape, mesh_shape, rules)
    return var.replace(
        jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=NamedSharding(mesh, spec))
    )

  state = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, state


def shardings_of(tree):
  """The ``sharding`` of every ``ShapeDtypeStruct`` leaf of ``tree`` (for ``in_shardings``)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def abstract_batch(
    mesh: Mesh,
    shapes: Mapping[str, Tuple[Tuple[int, ...], Any]],
    rules: Optional[Mapping[str, MeshAxes]] = None,
):
  """``{name: ShapeDtypeStruct}`` with the leading dim sharded as ``batch`` under ``rules``."""
  rules = TRAIN_RULES if rules is None else rules
  out = {}
  for key, (shape, dtype) in shapes.items():
    names = ("batch",) + (None,) * (len(shape) - 1)
    spec = logical_spec(names, shape, dict(mesh.shape), rules)
    out[key] = jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=NamedSharding(mesh, spec))
  return out
