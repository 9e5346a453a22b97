"""Sharded loading and forward on 8 fake CPU devices (XLA_FLAGS set in conftest.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import hf_fixtures
import jdiff
from jdiff.checkpoint import from_pretrained
from jdiff.sharding import (
    SAMPLING_RULES,
    TRAIN_RULES,
    logical_spec,
    make_mesh,
    shard_model,
    use_rules,
)

B, L = 4, 16


def _spec(arr):
  """The array's PartitionSpec padded with None to its rank (trailing Nones are implicit)."""
  spec = tuple(arr.sharding.spec)
  return spec + (None,) * (arr.ndim - len(spec))


def _ids():
  return np.random.RandomState(0).randint(0, hf_fixtures.VOCAB, size=(B, L)).astype(np.int32)


@pytest.fixture(scope="module")
def reference(hf_checkpoints, jdiff_models):
  """Single-device logits per family."""
  out = {}

  def get(family):
    if family not in out:
      model = jdiff_models(hf_checkpoints(family))
      out[family] = np.asarray(jdiff.forward(model, _ids()))
    return out[family]

  return get


def test_eight_fake_devices():
  assert jax.device_count() == 8 and jax.default_backend() == "cpu"


def test_make_mesh_shapes_and_errors():
  assert dict(make_mesh((2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(make_mesh((1, 2, 4)).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  assert dict(make_mesh((-1, 1, 2)).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert make_mesh((2, 2, 2)).axis_names == ("data", "fsdp", "tensor")
  with pytest.raises(ValueError, match="needs 16 devices"):
    make_mesh((4, 2, 2))
  with pytest.raises(ValueError, match="-1"):
    make_mesh((-1, -1, 2))
  with pytest.raises(ValueError, match="axis names"):
    make_mesh((8, 1))


# name -> (family, mesh shape, under jax.set_mesh)
CASES = {
    "sdar-2x2x2-set_mesh": ("sdar", (2, 2, 2), True),
    "sdar-2x2x2-no_mesh": ("sdar", (2, 2, 2), False),
    "sdar-1x2x4-set_mesh": ("sdar", (1, 2, 4), True),
    "sdar-8x1x1-set_mesh": ("sdar", (8, 1, 1), True),
    "dream-2x2x2-set_mesh": ("dream", (2, 2, 2), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_forward_matches_single_device(case, hf_checkpoints, reference):
  family, shape, set_mesh = CASES[case]
  mesh = make_mesh(shape)
  model = from_pretrained(hf_checkpoints(family).path, dtype="float32", mesh=mesh)
  data, fsdp, tensor = shape
  c = model.config
  wq = model.backbone.layers.wq[...]
  embed = model.backbone.embed[...]
  wk = model.backbone.layers.wk[...]
  # Rules table: embed dim over fsdp, heads / vocab over tensor; non-divisible -> replicated.
  f = "fsdp" if fsdp > 1 else None
  t = "tensor" if tensor > 1 else None
  assert _spec(wq) == (None, f, t, None)
  assert _spec(wk) == (None, f, t if c.num_kv_heads % tensor == 0 else None, None)
  assert _spec(embed) == (t, f)
  assert _spec(model.lm_head[...]) == (f, t)
  assert wq.sharding.mesh.shape == mesh.shape
  shard = wq.addressable_shards[0].data.shape
  assert shard == (c.num_layers, c.hidden_size // fsdp, c.num_heads // tensor, c.head_dim)
  if set_mesh:
    with jax.set_mesh(mesh):
      logits = jdiff.forward(model, _ids())
    # Activation constraints applied: logits are laid out batch x vocab on the mesh.
    batch_axes = tuple(a for a, n in (("data", data), ("fsdp", fsdp)) if n > 1)
    batch = (
        None
        if not batch_axes or B % int(np.prod([mesh.shape[a] for a in batch_axes]))
        else (batch_axes[0] if len(batch_axes) == 1 else batch_axes)
    )
    assert _spec(logits) == (batch, None, t)
  else:
    logits = jdiff.forward(model, _ids())
  diff = np.abs(np.asarray(logits) - reference(family)).max()
  assert diff <= 1e-5, f"{case}: sharded vs single-device max abs diff {diff:.3e}"


def test_shard_model_places_existing_model(hf_checkpoints, jdiff_models):
  mesh = make_mesh((1, 2, 4))
  base = jdiff_models(hf_checkpoints("llada"))
  model = from_pretrained(hf_checkpoints("llada").path, dtype="float32")
  before = np.asarray(model.backbone.layers.w_up[...])
  shard_model(model, mesh)
  w_up = model.backbone.layers.w_up[...]
  assert _spec(w_up) == (None, "fsdp", "tensor")  # [layers, embed, mlp]
  assert _spec(model.backbone.layers.wo[...]) == (None, "tensor", None, "fsdp")
  assert _spec(model.backbone.final_norm[...]) == (None,)
  np.testing.assert_array_equal(np.asarray(w_up), before)
  np.testing.assert_array_equal(np.asarray(base.backbone.layers.w_up[...]), before)


def test_sampling_rules_keep_embed_replicated(hf_checkpoints):
  mesh = make_mesh((2, 2, 2))
  model = from_pretrained(hf_checkpoints("sdar").path, mesh=mesh, rules=SAMPLING_RULES)
  assert _spec(model.backbone.layers.wq[...]) == (None, None, "tensor", None)
  assert _spec(model.backbone.embed[...]) == ("tensor", None)


def test_logical_spec():
  mesh_shape = {"data": 2, "fsdp": 2, "tensor": 4}
  # divisible dims shard; non-divisible ones are replicated
  assert logical_spec(("embed", "heads"), (64, 8), mesh_shape, TRAIN_RULES) == P("fsdp", "tensor")
  assert logical_spec(("embed", "heads"), (63, 6), mesh_shape, TRAIN_RULES) == P(None, None)
  # batch maps to two mesh axes; their product must divide
  assert logical_spec(("batch", "length"), (8, 5), mesh_shape, TRAIN_RULES) == P(
      ("data", "fsdp"), None
  )
  assert logical_spec(("batch", "length"), (6, 5), mesh_shape, TRAIN_RULES) == P(None, None)
  # a mesh axis is used at most once per array
  assert logical_spec(("batch", "embed"), (8, 64), mesh_shape, TRAIN_RULES) == P(
      ("data", "fsdp"), None
  )
  # size-1 mesh axes are dropped
  assert logical_spec(("embed",), (64,), {"data": 8, "fsdp": 1, "tensor": 1}, TRAIN_RULES) == P(
      None
  )
  # without shapes, the raw mapping; None names stay replicated
  assert logical_spec(("vocab", None, "layers"), rules=TRAIN_RULES) == P("tensor", None, None)
  with use_rules(SAMPLING_RULES):
    assert logical_spec(("embed", "mlp")) == P(None, "tensor")
  assert logical_spec(("embed", "mlp")) == P("fsdp", "tensor")
  with pytest.raises(KeyError, match="no_such_axis"):
    logical_spec(("embed", "no_such_axis"), (4, 4), mesh_shape)
