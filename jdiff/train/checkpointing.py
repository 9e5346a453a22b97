"""Training checkpoints with Orbax: any pytrees of arrays + a JSON ``meta``, exact resume.

``Checkpointer(workdir)`` keeps steps under ``workdir/checkpoints/`` with one
``ocp.CheckpointManager``: per step one ``StandardSave`` item per entry of ``items`` (params,
optimizer state, value model, RNG keys, ...), a ``meta`` JSON item (data position, config,
metrics) and a ``jdiff_index`` JSON item (item names, PRNG-key leaves).

Storage form: each item is flattened with ``nnx.Variable`` as leaf and stored as a nested dict
of plain arrays keyed by the stringified tree path (an ``nnx.State`` lands in the
``nnx.to_pure_dict`` layout). Typed PRNG keys are stored as raw ``uint32`` ``key_data`` plus
their impl name and come back as identical typed keys. ``restore(targets=...)`` rebuilds each
target's own structure (``nnx.State``, ``flax.struct`` dataclasses, optax states) from its
treedef; an item without a target comes back as the nested dict (``nnx.replace_by_pure_dict``).

Shardings: a target leaf (concrete ``jax.Array`` or ``jax.ShapeDtypeStruct``, e.g. from
``jax.eval_shape``) with a sharding is read by Orbax straight into that sharding, each process
reading only its shards. Without a target, arrays go to the shardings recorded at save time
(same device topology needed).

Atomicity (checked in orbax-checkpoint 0.12.8, local filesystems). A save writes everything
into ``checkpoints/<step>.orbax-checkpoint-tmp``, then writes ``commit_success.txt`` and
``rename``s it to ``checkpoints/<step>`` (``AtomicRenameTemporaryPath``; GCS uses a commit
file instead). Step discovery only accepts finalised names (digits, no tmp suffix), so a
writer killed mid-save (tested with SIGKILL) leaves a tmp dir that is never listed and the
previous step stays the latest. Creating a (non read-only) ``Checkpointer`` deletes stale tmp
dirs synchronously (:func:`remove_stale_tmp_dirs`, process 0); Orbax also replaces a leftover
tmp dir of a step that is saved again. Readers of a directory a live trainer writes to (eval)
use ``read_only=True``, so they never delete its in-flight tmp dir.

Multi-process. Every process calls ``save`` / ``restore`` with the same arguments: Orbax
coordinates the write (each process writes its own shards; JSON items, the rename and the
commit file come from the primary process only). This wrapper writes no files of its own; its
only filesystem side effect, the stale-tmp cleanup, runs on process 0 only, and a writer's
constructor waits for it on every process (a barrier). A read-only reader may be opened by
one process alone (it has no barrier).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

META, INDEX = "meta", "jdiff_index"  # reserved item names
_SINGLE = "value"  # storage key of an item that is a single leaf (e.g. a step counter)
Path = Tuple[str, ...]


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _is_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _path_name(k) -> str:
  for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flatten(tree):
  """[(path of str, leaf)] with nnx Variables as leaves, and the treedef to rebuild ``tree``."""
  pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_var)
  return [(tuple(map(_path_name, p)) or (_SINGLE,), leaf) for p, leaf in pairs], treedef


def _value(leaf):
  return (leaf.get_value() if hasattr(leaf, "get_value") else leaf.value) if _is_var(leaf) else leaf


def _nest(pairs) -> Dict[str, Any]:
  root: Dict[str, Any] = {}
  for path, v in pairs:
    node = root
    for k in path[:-1]:
      node = node.setdefault(k, {})
    if not isinstance(node, dict) or path[-1] in node:
      raise ValueError(f"checkpoint path collision at {'/'.join(path)}")
    node[path[-1]] = v
  return root


def _lookup(tree, path: Path):
  for k in path:
    tree = tree[k]
  return tree


def _to_storage(tree):
  """Concrete pytree -> (nested dict of arrays, [[path, PRNG impl]] of its typed-key leaves,
  whether ``tree`` is a single leaf)."""
  pairs, keys = [], []
  flat, treedef = _flatten(tree)
  for path, leaf in flat:
    v = _value(leaf)
    if _is_key(v):
      keys.append([list(path), str(jax.random.key_impl(v))])
      v = jax.random.key_data(v)
    pairs.append((path, v))
  return _nest(pairs), keys, jax.tree_util.treedef_is_leaf(treedef)


def _abstract(v):
  """A restore target leaf: arrays become ShapeDtypeStructs keeping their sharding."""
  if _is_key(v):
    data = jax.eval_shape(jax.random.key_data, v)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(v, "sharding", None))
  if isinstance(v, jax.Array):
    return jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
  if isinstance(v, np.generic):
    return np.asarray(v)
  return v


def _from_storage(target, stored, keys: Mapping[Path, str]):
  """Rebuilds ``target``'s structure from the restored nested dict ``stored``."""
  pairs, treedef = _flatten(target)
  leaves = []
  for path, leaf in pairs:
    t, v = _value(leaf), _lookup(stored, path)
    impl = keys.get(path)
    if impl is not None:
      v = jax.random.wrap_key_data(v, impl=impl)
    if hasattr(t, "dtype") and hasattr(v, "dtype") and t.dtype != v.dtype:
      raise ValueError(f"checkpoint leaf {'/'.join(path)}: dtype {v.dtype}, target {t.dtype}")
    if isinstance(t, (bool, int, float, np.generic)):
      v = type(t)(v)
    elif isinstance(t, (jax.Array, jax.ShapeDtypeStruct)) and not isinstance(v, jax.Array):
      sharding = getattr(t, "sharding", None)  # e.g. a Python int saved, an array target
      v = jax.device_put(np.asarray(v), sharding) if sharding is not None else jnp.asarray(v)
    leaves.append(leaf.replace(v) if _is_var(leaf) else v)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _wrap_keys(stored, keys: Mapping[Path, str]):
  for path, impl in keys.items():
    node = _lookup(stored, path[:-1])
    node[path[-1]] = jax.random.wrap_key_data(node[path[-1]], impl=impl)
  return stored


def _jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if _is_key(x):
    x = jax.random.key_data(x)
  if isinstance(x, (jax.Array, np.ndarray, np.generic)):
    return np.asarray(x).tolist()
  return x


def remove_stale_tmp_dirs(directory: str) -> None:
  """Deletes unfinalised ``<step>.orbax-checkpoint-tmp`` dirs (left by a killed writer).

  Synchronous and on process 0 only: Orbax's own ``cleanup_tmp_directories`` runs in a
  background thread that is only awaited by the next ``save``. Other processes never create
  step directories themselves (process 0 does, after a barrier), so they cannot race this.
  """
  if jax.process_index() == 0 and os.path.isdir(directory):
    for tmp in ocp.path.step.all_temporary_paths(directory):
      shutil.rmtree(os.fspath(tmp.get()), ignore_errors=True)


class Checkpointer:
  """Orbax ``CheckpointManager`` under ``directory/checkpoints`` (see the module docstring)."""

  def __init__(
      self,
      directory: str,
      max_to_keep: Optional[int] = 3,
      save_interval_steps: int = 1,
      async_save: bool = False,
      read_only: bool = False,
  ):
    self.directory = os.path.join(os.path.abspath(os.fspath(directory)), "checkpoints")
    self.read_only = read_only
    if not read_only:  # every process of a run opens its writer here, so all reach the barrier
      remove_stale_tmp_dirs(self.directory)
      if jax.process_count() > 1:  # no process may start writing before the cleanup is done
        multihost_utils.sync_global_devices("jdiff_checkpointer_cleanup")
    options = ocp.CheckpointManagerOptions(  # read-only: no pruning, no saves
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else save_interval_steps,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def save(
      self,
      step: int,
      items: Mapping[str, Any],
      meta: Optional[Mapping[str, Any]] = None,
      force: bool = False,
  ) -> bool:
    """Saves ``items`` (name -> pytree) and JSON ``meta`` as ``step``; every process calls it.

    Returns False when ``save_interval_steps`` skips the step (``force=True`` saves anyway).
    With ``async_save`` the write finishes in the background: call ``wait()`` before exit.
    """
    if self.read_only:
      raise RuntimeError(f"Checkpointer({self.directory!r}) is read-only")
    bad = {META, INDEX} & set(items)
    if bad:
      raise ValueError(f"item names {sorted(bad)} are reserved")
    args, index = {}, {"items": sorted(items), "prng_keys": {}, "empty": [], "single": []}
    for name, tree in items.items():
      stored, index["prng_keys"][name], single = _to_storage(tree)
      if single:
        index["single"].append(name)
      if stored:
        args[name] = ocp.args.StandardSave(stored)
      else:  # no array leaves (e.g. optax EmptyState): nothing to write
        index["empty"].append(name)
    args[META] = ocp.args.JsonSave(_jsonable(dict(meta or {})))
    args[INDEX] = ocp.args.JsonSave(index)
    return self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force)

  def restore(
      self, step: Optional[int] = None, targets: Optional[Mapping[str, Any]] = None
  ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Returns ``(items, meta)`` of ``step`` (default: the latest finalised one).

    ``targets`` (name -> concrete or abstract pytree, leaves optionally sharded) fixes the
    structure, dtypes and shardings of the matching items; other items come back as nested
    dicts of arrays on their saved shardings.
    """
    self._mngr.wait_until_finished()  # an async save of this process must be finalised first
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"no finalised checkpoint under {self.directory}")
    targets = {k: v for k, v in (targets or {}).items() if v is not None}
    index = self._mngr.restore(step, args=ocp.args.Composite(**{INDEX: ocp.args.JsonRestore()}))
    index = index[INDEX]
    missing = set(targets) - set(index["items"])
    if missing:
      raise KeyError(f"step {step} has no items {sorted(missing)} (has {index['items']})")
    args = {META: ocp.args.JsonRestore()}
    for name in index["items"]:
      if name in index["empty"]:
        continue
      abstract = None
      if name in targets:
        abstract = _nest([(p, _abstract(_value(x))) for p, x in _flatten(targets[name])[0]])
      args[name] = ocp.args.StandardRestore(abstract)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    items = {}
    for name in index["items"]:
      stored = {} if name in index["empty"] else restored[name]
      keys = {tuple(p): impl for p, impl in index["prng_keys"].get(name, [])}
      if name in targets:
        items[name] = _from_storage(targets[name], stored, keys)
      else:
        items[name] = _wrap_keys(dict(stored), keys) if stored else stored
        if name in index["single"]:
          items[name] = items[name][_SINGLE]
    return items, dict(restored.get(META) or {})

  def latest_step(self) -> Optional[int]:
    """The newest finalised step (tmp / partially written steps are never listed), or None."""
    steps = self.steps()
    return steps[-1] if steps else None

  def steps(self) -> List[int]:
    """All finalised steps, oldest first."""
    if self.read_only:
      self._mngr.reload()  # a reader sees steps written since it opened the directory
    return sorted(self._mngr.all_steps())

  def wait(self) -> None:
    """Blocks until an in-flight async save is finalised."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
