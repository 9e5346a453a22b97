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

Within a shard (or on one device), :func:`in_row_groups` runs the program on consecutive
groups of rows, one after another (``lax.map``), each group its own loop. Where the
hardware is compute-bound (a CPU) this saves the work of rows that idle: a loop runs until
its slowest row is done, and every row of it computes every step until then.

On one device, :func:`in_host_threads` calls the compiled program on consecutive groups of
rows from separate host threads at once, each call its own loop. A small model's step is a
chain of ops of a few microseconds each, which XLA's CPU runtime runs one after another on
one core (two independent loops in one program measured no faster than one); concurrent
calls keep every core busy, as one loop per device does on a mesh of CPU devices.
"""

from __future__ import annotations

import contextvars
import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
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


def on_row_shards(
    fn: Callable,
    axes: Tuple[str, ...],
    out_specs: Callable[[object], object],
    shared,
    rows,
    row_offset=0,
):
  """``fn(shared, rows, row_offset)``, run on every shard of ``rows`` split over ``axes``
  (from :func:`row_shard_axes`), or once on the whole batch when ``axes`` is empty.

  ``rows``: a tuple of batch-leading arrays; ``shared`` (weights, key, settings) is
  replicated to every shard. ``row_offset`` is the global index of a shard's first row: a
  row's random keys must not depend on the split (the argument is that of ``rows``' first
  row, non-zero when a host thread runs part of a batch). ``out_specs(batch)`` returns the
  output's ``PartitionSpec`` tree, with ``batch`` the mesh axes to put where the output has
  rows.
  """
  if not axes:
    return fn(shared, rows, row_offset)
  batch = axes if len(axes) > 1 else axes[0]

  def local(shared, rows):
    local_rows = jax.tree.leaves(rows)[0].shape[0]
    return fn(shared, rows, row_offset + jax.lax.axis_index(axes) * local_rows)

  return jax.shard_map(
      local,
      in_specs=(P(), P(batch)),
      out_specs=out_specs(batch),
      axis_names=set(axes),
      check_vma=False,
  )(shared, rows)


def check_rows_per_loop(
    rows_per_loop: Optional[int], n_rows: int, n_shards: int, owner: str, split: str = "data shards"
) -> None:
  """Raises ValueError naming ``owner`` (``"<Config>.rows_per_loop"``) unless
  ``rows_per_loop`` (None or a positive int, as the config validated) divides each of the
  ``n_shards`` groups' ``n_rows / n_shards`` rows or covers them all (one loop, as a smaller
  last batch of a dataset may need). ``split`` names the groups in the message."""
  if rows_per_loop is None:
    return
  local = n_rows // max(n_shards, 1)
  if rows_per_loop < local and local % rows_per_loop:
    where = (
        f"each of the {n_shards} {split}' {local} rows"
        if n_shards > 1
        else f"the batch of {n_rows} rows"
    )
    raise ValueError(f"{owner}={rows_per_loop!r}: must divide {where} (or be >= it)")


def shard_count(axes: Tuple[str, ...]) -> int:
  """How many shards :func:`on_row_shards` splits the batch into over ``axes``."""
  mesh_shape = dict(jax.sharding.get_abstract_mesh().shape) if axes else {}
  return math.prod(mesh_shape[a] for a in axes)


def in_row_groups(
    fn: Callable, rows_per_loop: Optional[int], out_specs: Callable, shared, rows, row_offset
):
  """``fn(shared, rows, row_offset)`` on consecutive groups of ``rows_per_loop`` rows, one
  group after another (a ``lax.map``, so ``fn`` is compiled once), outputs reassembled in
  row order; ``fn`` on all rows at once when ``rows_per_loop`` is None or covers them all.

  ``row_offset`` is the global index of the first row, so every group's rows keep their
  keys; ``out_specs`` is :func:`on_row_shards`'s (a leaf's rows sit where its spec names
  the batch).
  """
  n_rows = jax.tree.leaves(rows)[0].shape[0]
  if rows_per_loop is None or rows_per_loop >= n_rows:
    return fn(shared, rows, row_offset)
  groups = n_rows // rows_per_loop
  grouped = jax.tree.map(lambda a: a.reshape((groups, rows_per_loop) + a.shape[1:]), rows)
  starts = row_offset + rows_per_loop * jnp.arange(groups, dtype=jnp.int32)
  out = jax.lax.map(lambda a: fn(shared, a[1], a[0]), (starts, grouped))

  def merge(axis, leaf):  # the leaf's row axis comes after the leading group axis
    leaf = jnp.moveaxis(leaf, 0, axis)  # [.., groups, rows_per_loop, ..]
    return leaf.reshape(leaf.shape[:axis] + (n_rows,) + leaf.shape[axis + 2 :])

  return jax.tree.map(merge, _row_axes(out_specs), out)


def _row_axes(out_specs: Callable):
  """The row axis of every output leaf, from :func:`on_row_shards`'s ``out_specs``."""
  marker = "rows"
  return jax.tree.map(
      lambda spec: list(spec).index(marker), out_specs(marker), is_leaf=lambda x: isinstance(x, P)
  )


def check_row_threads(row_threads: int, n_rows: int, owner: str) -> int:
  """How many host threads :func:`in_host_threads` splits ``n_rows`` rows among:
  ``row_threads`` (a positive int, as the config validated), or one row each when it
  exceeds the batch. Raises ValueError naming ``owner`` unless the groups are equal, or
  under a mesh of several devices: there each data shard already runs its own loop, and
  an array placed on the mesh cannot be cut into per-thread batches of one device. A
  one-device mesh (a training loop's on a single CPU) is one device: its threads run
  outside the mesh context (which is thread-local), on that device."""
  threads = min(row_threads, n_rows)
  if threads <= 1:
    return 1
  if n_rows % threads:
    raise ValueError(
        f"{owner}={row_threads!r}: must divide the batch of {n_rows} rows (or " "be >= it)"
    )
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is not None and not mesh.empty and mesh.size > 1:
    raise ValueError(
        f"{owner}={row_threads!r}: host threads run on one device; under a "
        f"mesh of {mesh.size} devices every data shard already runs its own "
        "loop (use 1)"
    )
  return threads


def in_host_threads(call: Callable, threads: int, out_specs: Callable, rows):
  """``call(rows, row_offset)`` on ``threads`` equal consecutive groups of ``rows`` (a tuple
  of batch-leading arrays), each from its own host thread, all at once; outputs reassembled
  in row order along each leaf's row axis (``out_specs`` as in :func:`on_row_shards`).

  ``call`` runs a compiled program (one compilation serves every group: equal shapes, the
  offset traced), which releases the GIL while it computes. Each thread runs in a copy of
  the caller's context, so context variables (the active sharding rules) carry over. An
  exception in any group is raised here. The threads persist between calls (a pool that
  grows to the largest count asked for), and the outputs are joined by one compiled
  concatenation: at the tiny size a decoding run lasts ~30 ms, and starting threads and
  dispatching one concatenation per output field cost ~1 ms of it.
  """
  if threads <= 1:
    return call(rows, 0)
  size = jax.tree.leaves(rows)[0].shape[0] // threads
  groups = [jax.tree.map(lambda a, i=i: a[i * size : (i + 1) * size], rows) for i in range(threads)]
  pool = _pool(threads)
  futures = [
      pool.submit(contextvars.copy_context().run, _ready, call, group, np.int32(i * size))
      for i, group in enumerate(groups)
  ]
  outs = [f.result() for f in futures]
  axes = _row_axes(out_specs)  # static, as leaves + structure: a dict tree is not hashable
  return _concat_rows(outs, tuple(jax.tree.leaves(axes)), jax.tree.structure(axes))


def _ready(call, rows, row_offset):
  """``call``'s output once computed. Each thread waits for its own group: with the waits
  left to the joining thread (async dispatch), the tiny LLaDA prefix+thr run on 2 threads
  took 1.0-1.3 s instead of ~0.45 s in about one call of four."""
  return jax.block_until_ready(call(rows, row_offset))


_POOL: Optional[ThreadPoolExecutor] = None  # shared by every call, see _pool
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
  """The shared pool of at least ``threads`` workers (replaced by a larger one if needed)."""
  global _POOL, _POOL_SIZE
  with _POOL_LOCK:
    if _POOL_SIZE < threads:
      if _POOL is not None:
        _POOL.shutdown(wait=False)  # tasks it is running still finish
      _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jdiff-rows")
      _POOL_SIZE = threads
    return _POOL


@functools.partial(jax.jit, static_argnums=(1, 2))
def _concat_rows(outs, axes, treedef):
  """Every field of the groups' outputs joined along its row axis, in one program."""
  axes = jax.tree.unflatten(treedef, axes)
  return jax.tree.map(lambda axis, *leaves: jnp.concatenate(leaves, axis=axis), axes, *outs)
