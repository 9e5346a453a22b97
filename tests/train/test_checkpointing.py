"""jdiff.train.checkpointing: bit-exact round trips, pruning, sharded restore, kill -9 mid-save."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import jdiff  # noqa: E402
from jdiff.sharding import make_mesh, shard_state  # noqa: E402
from jdiff.train.checkpointing import Checkpointer  # noqa: E402

TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _is_var(x):
  return isinstance(x, nnx.Variable)


def _random_like(tree, seed):
  """Fills every array leaf (abstract or concrete) with random bits of its dtype."""
  rng = np.random.default_rng(seed)

  def one(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.asarray(rng.standard_normal(x.shape), dtype=x.dtype)
    return jnp.asarray(rng.integers(0, 1000, x.shape), dtype=x.dtype)

  return jax.tree.map(one, tree)


@pytest.fixture(scope="module")
def model_state():
  """A tiny SDAR DiffusionLM's nnx.State (structure + logical axes from the real module; the
  values are random, filled from the abstract state: eager init is slow on a shared CPU)."""
  abstract = nnx.state(
      nnx.eval_shape(lambda: jdiff.DiffusionLM(jdiff.preset("tiny_sdar"), rngs=nnx.Rngs(0)))
  )
  return _random_like(abstract, 0)


def _assert_bit_exact(got, want):
  assert jax.tree.structure(got, is_leaf=_is_var) == jax.tree.structure(want, is_leaf=_is_var)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if hasattr(w, "dtype") and jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
      assert g.dtype == w.dtype
      g, w = jax.random.key_data(g), jax.random.key_data(w)
    assert type(g) is type(w) or isinstance(g, jax.Array) and isinstance(w, jax.Array)
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(g.reshape(-1).view(np.uint8), w.reshape(-1).view(np.uint8))


def _train_items(state):
  params = state.filter(nnx.Param)
  opt_state = _random_like(optax.adamw(1e-3).init(params), 1)  # non-zero mu / nu / count
  return {
      "state": state,
      "opt": opt_state,
      "step": 7,
      "step_arr": jnp.int32(7),
      "rng": jax.random.split(jax.random.key(3), 2),
      "raw_key": jax.random.PRNGKey(11),
  }


def test_round_trip_bit_exact(tmp_path, model_state):
  items = _train_items(model_state)
  meta = {
      "data_position": 1234,
      "rng": jax.random.key_data(jax.random.key(5)),
      "config": {"lr": 1e-3, "name": "tiny", "blocks": [4, 8]},
      "metrics": {"loss": np.float32(0.25)},
  }
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_step() is None
  assert ckpt.save(3, items, meta)
  assert os.path.isdir(tmp_path / "checkpoints" / "3")

  # Restore into abstract targets: every leaf and the containers' types come back exactly.
  targets = {**jax.eval_shape(lambda: items), "step": 0}  # a Python int target stays an int
  got, got_meta = Checkpointer(tmp_path).restore(targets=targets)
  assert set(got) == set(items)
  _assert_bit_exact(got, items)
  as_array, _ = ckpt.restore(targets={"step": jax.ShapeDtypeStruct((), jnp.int32)})
  assert isinstance(as_array["step"], jax.Array) and as_array["step"] == 7
  assert isinstance(got["state"], nnx.State) and got["step"] == 7 and type(got["step"]) is int
  assert got_meta == {
      "data_position": 1234,
      "rng": [0, 5],
      "config": {"lr": 1e-3, "name": "tiny", "blocks": [4, 8]},
      "metrics": {"loss": 0.25},
  }
  rng = jax.random.wrap_key_data(jnp.asarray(got_meta["rng"], jnp.uint32))
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(5)))

  # Without targets: pure dicts (nnx.replace_by_pure_dict-compatible), keys still typed.
  raw, _ = ckpt.restore(3)
  state = nnx.eval_shape(lambda: jdiff.DiffusionLM(jdiff.preset("tiny_sdar"), rngs=nnx.Rngs(0)))
  state = nnx.state(state)
  nnx.replace_by_pure_dict(state, raw["state"])
  _assert_bit_exact(state, model_state)
  _assert_bit_exact(raw["rng"], items["rng"])
  assert raw["step"] == 7
  np.testing.assert_array_equal(raw["raw_key"], items["raw_key"])


def test_max_to_keep_latest_and_specific_step(tmp_path):
  ckpt = Checkpointer(tmp_path, max_to_keep=2)
  for step in (1, 2, 3):
    assert ckpt.save(step, {"x": jnp.full((4,), step, jnp.float32)}, {"step": step})
  assert ckpt.steps() == [2, 3] and ckpt.latest_step() == 3
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  items, meta = ckpt.restore()
  assert meta == {"step": 3} and np.all(np.asarray(items["x"]) == 3)
  items, meta = Checkpointer(tmp_path, read_only=True).restore(2)
  assert meta == {"step": 2} and np.all(np.asarray(items["x"]) == 2)
  with pytest.raises(KeyError):
    ckpt.restore(3, targets={"nope": {}})
  with pytest.raises(ValueError):
    ckpt.save(4, {"meta": jnp.zeros(1)})

  with Checkpointer(tmp_path / "async", async_save=True) as background:
    assert background.save(5, {"x": jnp.arange(3)}, {"a": 1})
    background.wait()
    assert background.latest_step() == 5
  assert np.array_equal(Checkpointer(tmp_path / "async").restore()[0]["x"], np.arange(3))

  sparse = Checkpointer(tmp_path / "sparse", save_interval_steps=2)
  assert sparse.save(2, {"x": jnp.zeros(1)}) and not sparse.save(3, {"x": jnp.zeros(1)})
  assert sparse.save(3, {"x": jnp.zeros(1)}, force=True) and sparse.steps() == [2, 3]


def test_sharded_restore(tmp_path, model_state):
  mesh = make_mesh((2, 2, 2))
  sharded = shard_state(model_state, mesh)
  specs = {s.sharding.spec for s in jax.tree.leaves(sharded)}
  assert any(any(a is not None for a in spec) for spec in specs), specs  # really sharded
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, {"state": model_state, "rng": jax.random.key(1)})  # saved unsharded

  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), sharded
  )
  key_sharding = jax.sharding.NamedSharding(mesh, jax.P())
  targets = {
      "state": abstract,
      "rng": jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=key_sharding),
  }
  for tgt in (targets, {"state": sharded}):  # abstract and concrete targets
    got, _ = ckpt.restore(targets=tgt)
    _assert_bit_exact(got["state"], model_state)
    for g, want in zip(jax.tree.leaves(got["state"]), jax.tree.leaves(sharded)):
      assert g.sharding == want.sharding, (g.sharding, want.sharding)
  assert got["rng"].dtype == jax.random.key(0).dtype  # untargeted typed key still comes back


_CHILD = r"""
import sys
import numpy as np
from jdiff.train.checkpointing import Checkpointer
big = np.random.default_rng(0).standard_normal((2, 10_000_000), dtype=np.float32)  # 80 MB
Checkpointer(sys.argv[1]).save(2, {"big": {"a": big[0], "b": big[1]}}, {"step": 2})
"""


def _tmp_bytes(tmp):
  try:
    return sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
  except FileNotFoundError:  # renamed (finalised) while we looked
    return 0


def _killed_save(workdir, min_bytes):
  """Starts a child saving step 2 (80 MB) and SIGKILLs it once its tmp dir holds
  ``min_bytes``. Returns the bytes left in the tmp dir if the kill landed mid-save, else None."""
  ckdir = workdir / "checkpoints"
  tmp = ckdir / ("2" + TMP_SUFFIX)
  proc = subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(workdir)],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
      if tmp.exists() and _tmp_bytes(tmp) >= min_bytes:
        break
      time.sleep(0.002)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  if tmp.exists() and not (ckdir / "2").exists():  # killed between tmp-create and rename
    return _tmp_bytes(tmp)
  return None


def test_kill_9_mid_save(tmp_path):
  prev = {
      "w": jnp.asarray(np.random.default_rng(1).standard_normal((256, 64)), jnp.float32),
      "rng": jax.random.key(42),
      "step": 1,
  }
  landed = []
  # Kill once 20 MB / 60 MB of the ~74 MB are on disk (mid data write), else right after the
  # tmp dir appears (before any data) if neither landed.
  for i, min_bytes in enumerate((20 << 20, 60 << 20, 1)):
    workdir = tmp_path / f"run{i}"
    Checkpointer(workdir).save(1, prev, {"data_position": 10})
    partial = _killed_save(workdir, min_bytes)
    if partial is None:
      continue  # the save finished before the kill: not a crash case
    landed.append(partial)
    ckdir = workdir / "checkpoints"
    # A reader ignores the partial step (and leaves the writer's tmp dir alone).
    assert Checkpointer(workdir, read_only=True).latest_step() == 1
    assert (ckdir / ("2" + TMP_SUFFIX)).exists()
    # A writer removes the stale tmp dir; the previous checkpoint restores bit-exactly.
    ckpt = Checkpointer(workdir)
    assert sorted(os.listdir(ckdir)) == ["1"]
    assert ckpt.latest_step() == 1 and ckpt.steps() == [1]
    got, meta = ckpt.restore(targets={**jax.eval_shape(lambda: prev), "step": 0})
    _assert_bit_exact(got, prev)
    assert meta == {"data_position": 10}
    # Re-saving the interrupted step works.
    assert ckpt.save(2, {"w": prev["w"] + 1}, {"data_position": 20})
    assert ckpt.latest_step() == 2
    got, meta = Checkpointer(workdir).restore()
    np.testing.assert_array_equal(got["w"], prev["w"] + 1)
    assert meta == {"data_position": 20}
    if len(landed) == 2:
      break
  assert landed, "no SIGKILL landed during the write"
