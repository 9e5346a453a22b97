"""Mesh construction and placing a model's state onto a mesh by the rules table."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jdiff.sharding.rules import MESH_AXES, MeshAxes, active_rules, logical_spec


def make_mesh(
    shape: Sequence[int] = (-1, 1, 1),
    axis_names: Sequence[str] = MESH_AXES,
    devices: Optional[Sequence[jax.Device]] = None,
) -> Mesh:
  """A ``('data','fsdp','tensor')`` mesh; one entry of ``shape`` may be -1 (fill the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {shape} does not match axis names {tuple(axis_names)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} cannot be filled with {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  total = int(np.prod(shape))
  if total > len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {total} devices, only {len(devices)} exist")
  arr = np.asarray(devices[:total]).reshape(shape)
  return Mesh(arr, tuple(axis_names))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Optional[Mapping[str, MeshAxes]] = None):
  """A pytree of NamedSharding matching ``state``, from each Param's ``logical_axes``."""
  rules = active_rules() if rules is None else rules
  mesh_shape = dict(mesh.shape)

  def one(var):
    names = var.get_metadata().get("logical_axes")
    value = var.get_value() if hasattr(var, "get_value") else var.value
    if names is None:
      names = (None,) * np.ndim(value)
    spec = logical_spec(names, np.shape(value), mesh_shape, rules)
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: nnx.State, mesh: Mesh, rules=None) -> nnx.State:
  """Places every leaf of ``state`` according to the rules table."""
  shardings = state_shardings(state, mesh, rules)
  return jax.tree.map(lambda x, s: jax.device_put(x, s), state, shardings)


def shard_model(model: nnx.Module, mesh: Mesh, rules=None) -> nnx.Module:
  """Returns ``model`` with its state laid out on ``mesh`` (the module is updated in place)."""
  graphdef, state = nnx.split(model)
  state = shard_state(state, mesh, rules)
  nnx.update(model, state)
  return model
