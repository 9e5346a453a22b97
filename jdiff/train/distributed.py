"""Moving the RL loop's host data to and from global arrays, the same code for 1 or N processes.

In a multi-process run (one process per host, ``jax.distributed.initialize``) a global array
sharded over the mesh's data axes has rows on other hosts: ``np.asarray`` of it fails, and
``jit`` rejects host numpy inputs whose shardings are not fully addressable. The loop therefore
keeps three kinds of data apart:

- prompts: every process knows the whole (deterministic) prompt list, but builds only the rows
  its own devices hold (:func:`local_rows`, :func:`rows_to_global`);
- per-row host results (decoded text, rewards): computed for the local rows only and
  combined on every process with :func:`gather_rows`, so advantages and batch building see
  the full batch, identically everywhere;
- device results (trajectories, log-probs): fetched whole with :func:`to_host` (an
  all-gather across processes), and host batches put back with :func:`to_global`.

With one process every row is local and these reduce to plain transfers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from jdiff.sharding.rules import MeshAxes, logical_spec


def row_sharding(mesh: Mesh, shape: Sequence[int], rules: Mapping[str, MeshAxes]) -> NamedSharding:
  """The leading dim split by the ``"batch"`` rule (replicated when it does not divide)."""
  names = ("batch",) + (None,) * (len(shape) - 1)
  return NamedSharding(mesh, logical_spec(names, tuple(shape), dict(mesh.shape), rules))


def local_rows(sharding: NamedSharding, shape: Sequence[int]) -> np.ndarray:
  """Sorted global indices of the leading-dim rows held by this process's devices."""
  n = int(shape[0])
  rows = set()
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    rows.update(range(*index[0].indices(n)))
  return np.asarray(sorted(rows), np.int64)


def rows_to_global(
    local: np.ndarray, rows: np.ndarray, shape: Sequence[int], sharding: NamedSharding
) -> jax.Array:
  """A global ``shape`` array from this process's rows only (``local[i]`` is row ``rows[i]``)."""
  position = {int(r): i for i, r in enumerate(rows)}
  local = np.asarray(local)

  def shard(index):
    take = [position[int(r)] for r in np.arange(shape[0])[index[0]]]
    return local[take][(slice(None),) + tuple(index[1:])]

  return jax.make_array_from_callback(tuple(shape), sharding, shard)


def to_global(tree: Any, shardings: Any) -> Any:
  """Host arrays, identical on every process, as global arrays; each process materialises
  only the shards its devices hold."""

  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
  """Every leaf as a full numpy array on every process (an all-gather where rows live on
  other processes)."""

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def gather_rows(local: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
  """Per-row host values of the local ``rows`` -> all ``n`` rows, on every process.

  Each process sends a full-size buffer with an ownership mask (processes may hold different
  numbers of rows, or the same rows when the batch is replicated); a row takes the value of
  its first owner.
  """
  local = np.asarray(local)
  full = np.zeros((n,) + local.shape[1:], local.dtype)
  owned = np.zeros((n,), bool)
  full[rows], owned[rows] = local, True
  if jax.process_count() == 1:
    missing = np.flatnonzero(~owned)
    if missing.size:
      raise ValueError(f"rows {missing[:8].tolist()} are held by no device")
    return full
  # Sent as raw bytes: JAX (without x64) would turn float64 rewards into float32.
  raw = np.ascontiguousarray(full).view(np.uint8).reshape(n, -1)
  all_raw = np.asarray(multihost_utils.process_allgather(raw))  # [P, n, bytes per row]
  all_full = all_raw.reshape(all_raw.shape[:2] + (-1,)).view(full.dtype).reshape((-1,) + full.shape)
  all_owned = np.asarray(multihost_utils.process_allgather(owned.astype(np.uint8))) > 0
  if not all_owned.any(0).all():
    raise ValueError(f"rows {np.flatnonzero(~all_owned.any(0))[:8].tolist()} have no owner")
  first = np.argmax(all_owned, axis=0)
  return all_full[first, np.arange(n)]


def barrier(name: str) -> None:
  """All processes wait here (no-op in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  return jax.process_index() == 0


__all__ = [
    "barrier",
    "gather_rows",
    "is_primary",
    "local_rows",
    "row_sharding",
    "rows_to_global",
    "to_global",
    "to_host",
]
