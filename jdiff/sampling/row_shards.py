"""Running a sampler program independently on each data shard of its prompt batch.

A sampler's rows never interact: each has its own canvas, cache slots, random keys and
``done`` flag. Partitioned as one global program over a data-parallel mesh, its
``lax.while_loop`` still has a global trip condition (``all(done)``) and global per-step
``lax.cond`` predicates ("does any row commit a block"), so every step pays cross-device
reductions and every device waits for the slowest at every step. Under ``jax.shard_map``
over the batch's mesh axes each shard runs its own loop on its own rows instead: nothing is
communicated inside the loop, and a shard whose rows finish early stops early.

This applies when the batch's axes (``SAMPLING_RULES['batch']``) are the whole mesh and the
weights are not split over them. A mesh with ``tensor`` > 1 keeps the one global program:
its tensor-parallel collectives sit inside the loop, and shards running different trip
counts would never meet at them. So do FSDP-sharded weights (``sampling_layout="fsdp"``),
which the global program gathers layer by layer instead of whole.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
from jax.sharding import PartitionSpec as P

from jdiff.sharding.rules import SAMPLING_RULES, logical_spec


def row_shard_axes(n_rows: int, weights=None) -> Tuple[str, ...]:
  """The active mesh's axes that split a batch of ``n_rows`` into independent shards, or
  ``()``: no mesh, batch axes of size 1 only, another axis of size > 1, a batch that does
  not divide evenly, or ``weights`` (a pytree of arrays) with a leaf split over one of those
  axes (FSDP-sharded weights: a shard would have to gather a full copy, which is what
  sampling from the FSDP layout avoids). Call it outside ``jit``: it reads the weights'
  placement."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return ()
  mesh_shape = dict(mesh.shape)
  # The split the rows are placed with (block._place_batch uses the same rule).
  axes = _names(logical_spec(("batch",), (n_rows,), mesh_shape, SAMPLING_RULES)[0])
  if not axes or any(s > 1 and a not in axes for a, s in mesh_shape.items()):
    return ()
  if weights is not None and _split_over(weights, axes):
    return ()
  return axes


def _names(entry) -> Tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _split_over(tree, axes) -> bool:
  for leaf in jax.tree.leaves(tree):
    spec = getattr(getattr(leaf, "sharding", None), "spec", None)
    if any(a in axes for entry in spec or () for a in _names(entry)):
      return True
  return False


def on_row_shards(fn: Callable, axes: Tuple[str, ...], out_specs: Callable[[object], object],
                  shared, rows):
  """``fn(shared, rows, row_offset)``, run on every shard of ``rows`` split over ``axes``
  (from :func:`row_shard_axes`), or once on the whole batch (``row_offset`` 0) when
  ``axes`` is empty.

  ``rows``: a tuple of batch-leading arrays; ``shared`` (weights, key, settings) is
  replicated to every shard. ``row_offset`` is the global index of a shard's first row: a
  row's random keys must not depend on the split. ``out_specs(batch)`` returns the output's
  ``PartitionSpec`` tree, with ``batch`` the mesh axes to put where the output has rows.
  """
  if not axes:
    return fn(shared, rows, 0)
  batch = axes if len(axes) > 1 else axes[0]

  def local(shared, rows):
    local_rows = jax.tree.leaves(rows)[0].shape[0]
    return fn(shared, rows, jax.lax.axis_index(axes) * local_rows)

  return jax.shard_map(local, in_specs=(P(), P(batch)), out_specs=out_specs(batch),
                       axis_names=set(axes), check_vma=False)(shared, rows)
