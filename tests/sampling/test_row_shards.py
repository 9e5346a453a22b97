"""Which meshes split a sampler's batch into independently looping shards."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jdiff
from jdiff.sampling.row_shards import on_row_shards, row_shard_axes
from jdiff.sharding.rules import SAMPLING_RULES, TRAIN_RULES, use_rules

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


@pytest.mark.parametrize(
    "shape, rows, expected",
    [
        ((8, 1, 1), 8, ("data",)),
        ((2, 4, 1), 16, ("data", "fsdp")),
        ((1, 8, 1), 8, ("fsdp",)),
        ((2, 2, 2), 8, ()),  # tensor > 1: one global program
        ((8, 1, 1), 4, ()),  # the batch does not divide
        ((1, 1, 8), 8, ()),
    ],
)
def test_row_shard_axes(shape, rows, expected):
  mesh = jdiff.sharding.make_mesh(shape)
  with jax.set_mesh(mesh):
    assert row_shard_axes(rows) == expected


@pytest.mark.parametrize("rules, expected", [(SAMPLING_RULES, ("fsdp",)), (TRAIN_RULES, ())])
def test_fsdp_sharded_weights_keep_the_global_program(rules, expected):
  """Weights split over a batch axis (the "fsdp" sampling layout) would be gathered whole
  into every shard: those keep the one global program."""
  model = jdiff.DiffusionLM(jdiff.preset("tiny_sdar"), rngs=nnx.Rngs(0))
  mesh = jdiff.sharding.make_mesh((1, 4, 1))
  jdiff.sharding.shard_model(model, mesh, rules=rules)
  with jax.set_mesh(mesh):
    assert row_shard_axes(8) == ("fsdp",)
    assert row_shard_axes(8, nnx.state(model)) == expected


def test_no_mesh_no_shards():
  assert row_shard_axes(8) == ()


def test_each_shard_sees_its_rows_and_global_offset():
  """fn runs once per shard on its rows; row_offset is the global index of its first row."""
  mesh = jdiff.sharding.make_mesh((4, 1, 1))
  x = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)

  def fn(shared, rows, row_offset):
    (local,) = rows
    first_global = row_offset + jax.numpy.zeros((local.shape[0],), jax.numpy.int32)
    return local * shared, first_global, jax.numpy.full((local.shape[0],), local.shape[0])

  @jax.jit
  def go(x):
    with use_rules(SAMPLING_RULES):
      return on_row_shards(fn, ("data",), lambda b: (P(b), P(b), P(b)), np.int32(2), (x,))

  with jax.set_mesh(mesh):
    scaled, offsets, local_rows = jax.tree.map(np.asarray, go(x))
  np.testing.assert_array_equal(scaled, 2 * x)
  np.testing.assert_array_equal(offsets, np.repeat(np.arange(0, 8, 2), 2))
  np.testing.assert_array_equal(local_rows, np.full(8, 2))
