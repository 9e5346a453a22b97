"""The one table that maps logical axis names to mesh axes ('data', 'fsdp', 'tensor').

Parameters carry logical names in their ``logical_axes`` metadata; activations are
constrained through :func:`constrain`, which is a no-op unless a mesh is active
(``jax.set_mesh``). A dimension whose size does not divide the mesh axes it maps to is
replicated instead of failing, so tiny test models shard on any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Mapping, Optional, Sequence, Union

import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[None, str, tuple]

# Training layout: weights FSDP-sharded on their embed dim, tensor-parallel on heads/mlp/vocab.
TRAIN_RULES: Mapping[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "kv_length": None,
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "norm": None,
}
# Sampling layout: no FSDP gathers on weights (every step would all-gather them).
SAMPLING_RULES: Mapping[str, MeshAxes] = dict(TRAIN_RULES, embed=None)

_ACTIVE_RULES = contextvars.ContextVar("jdiff_rules", default=TRAIN_RULES)


@contextlib.contextmanager
def use_rules(rules: Mapping[str, MeshAxes]):
  """Selects the rules table used by :func:`constrain` and :func:`logical_spec` defaults."""
  token = _ACTIVE_RULES.set(rules)
  try:
    yield
  finally:
    _ACTIVE_RULES.reset(token)


def active_rules() -> Mapping[str, MeshAxes]:
  return _ACTIVE_RULES.get()


def _axis_size(mesh_shape: Mapping[str, int], axes: MeshAxes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh_shape.get(a, 1)
  return size


def logical_spec(
    names: Sequence[Optional[str]],
    shape: Optional[Sequence[int]] = None,
    mesh_shape: Optional[Mapping[str, int]] = None,
    rules: Optional[Mapping[str, MeshAxes]] = None,
) -> P:
  """PartitionSpec for an array whose dims carry the logical ``names``.

  With ``shape`` and ``mesh_shape`` given, dims not divisible by their mesh axes are
  replicated, and a mesh axis is used at most once per array.
  """
  rules = active_rules() if rules is None else rules
  used: set = set()
  out = []
  for i, name in enumerate(names):
    if name is not None and name not in rules:
      raise KeyError(f"logical axis {name!r} has no entry in the sharding rules {sorted(rules)}")
    axes = None if name is None else rules[name]
    if axes is not None:
      tup = (axes,) if isinstance(axes, str) else tuple(axes)
      if mesh_shape is not None:
        tup = tuple(a for a in tup if a in mesh_shape and mesh_shape[a] > 1)
      if any(a in used for a in tup):
        tup = ()
      if shape is not None and mesh_shape is not None and tup:
        if shape[i] % _axis_size(mesh_shape, tup):
          tup = ()
      used.update(tup)
      axes = None if not tup else (tup[0] if len(tup) == 1 else tup)
    out.append(axes)
  return P(*out)


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """``with_sharding_constraint`` by logical names; identity when no mesh is active."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  # Inside shard_map the manual axes are already split: only the automatic ones can be.
  manual = set(getattr(mesh, "manual_axes", ()))
  spec = logical_spec(names, x.shape, {a: s for a, s in mesh.shape.items() if a not in manual})
  return jax.lax.with_sharding_constraint(x, spec)


SAMPLING_LAYOUTS = {
    # Weights all-gathered over fsdp once per rollout: no gathers inside the step loop, but
    # every fsdp group holds a full copy (an 8B model in bf16 is 16 GB per device).
    "gathered": SAMPLING_RULES,
    # The training shards as they are: memory-lean, the compiler gathers weights per forward.
    "fsdp": TRAIN_RULES,
}


def sampling_rules(config):
  """The weight layout rollouts and evals use, from ``config.mesh.sampling_layout``."""
  layout = config.get("mesh", {}).get("sampling_layout", "gathered")
  if layout not in SAMPLING_LAYOUTS:
    raise ValueError(
        f"config.mesh.sampling_layout={layout!r}; expected one of " f"{sorted(SAMPLING_LAYOUTS)}"
    )
  return SAMPLING_LAYOUTS[layout]
