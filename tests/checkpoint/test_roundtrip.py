"""HF -> jdiff -> HF round trips, checked with transformers' own classes and safetensors.

Exported directories are read back by the stock Llama / Qwen2 / Qwen3 classes (LLaDA keys
renamed back to Llama names), and their logits compared with the original torch model.
"""

import functools
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

import hf_fixtures
import jdiff
from jdiff.checkpoint import export_hf, from_pretrained, import_hf, save_jdiff

# ----------------------------------------------------------------------------- helpers


def _hf_tensors(directory):
  """All tensors of an HF dir, read with the safetensors library (follows the index)."""
  return hf_fixtures.read_tensors(directory)


def _bits(t):
  """A torch tensor as a numpy array of its raw bits (exact comparisons, bf16 included)."""
  t = t.contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy()
  return t.numpy()


def _assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype, k
    assert tuple(a[k].shape) == tuple(b[k].shape), k
    assert np.array_equal(_bits(a[k]), _bits(b[k])), k


def _flat(model):
  return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def _assert_same_state(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
    assert np.array_equal(fa[k], fb[k]), k


def _jdiff_tensors(directory):
  reader = jdiff.checkpoint.CheckpointReader(directory)
  return {k: np.array(reader.get(k)) for k in reader.keys()}


def load_with_transformers(family, directory):
  """The exported dir loaded by transformers' own class (eager attention, float32)."""
  return hf_fixtures.load_exported(family, directory, attn_implementation="eager")


def _logits(torch_model, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, hf_fixtures.VOCAB, size=(2, 12))
  pos = np.tile(np.arange(12), (2, 1))
  return hf_fixtures.torch_logits(torch_model, ids, np.ones((2, 12, 12), bool), pos)


@pytest.fixture
def imported(hf_dir, tmp_path):
  out = str(tmp_path / "jdiff")
  config = import_hf(hf_dir.path, out)
  return hf_dir, out, config


# ----------------------------------------------------------------------------- tests


def test_export_loads_in_transformers_with_same_logits(imported, tmp_path):
  ckpt, jdir, config = imported
  assert config.family == ckpt.family and config.param_dtype == "float32"
  out = str(tmp_path / "hf_out")
  export_hf(jdir, out)
  # Names, shapes, dtypes and values equal the original file exactly.
  _assert_same_tensors(_hf_tensors(out), _hf_tensors(ckpt.path))
  reloaded = load_with_transformers(ckpt.family, out)
  a, b = _logits(reloaded), _logits(ckpt.torch_model)
  assert np.max(np.abs(a - b)) <= 1e-5
  with open(os.path.join(out, "config.json")) as f:
    cj = json.load(f)
  assert cj["mask_token_id"] == hf_fixtures.MASK_ID and cj["eos_token_id"] == hf_fixtures.EOS_ID
  if ckpt.family == "sdar":
    assert cj["block_size"] == 4
  # The exported dir imports again as the same family.
  assert jdiff.checkpoint.hf_config.detect_family(cj)[0] == ckpt.family


def test_exported_names_are_the_family_originals(imported, tmp_path):
  ckpt, jdir, _ = imported
  out = str(tmp_path / "hf_out")
  export_hf(jdir, out)
  names = set(_hf_tensors(out))
  if ckpt.family == "llada":
    assert "model.transformer.blocks.0.q_proj.weight" in names
    assert "model.transformer.wte.weight" in names
    assert "model.transformer.ff_out.weight" in names
    assert not any(n.startswith("model.layers.") for n in names)
  else:
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert "lm_head.weight" in names
    assert any(n.endswith("q_proj.bias") for n in names) == (ckpt.family == "dream")
    assert any(n.endswith("q_norm.weight") for n in names) == (ckpt.family == "sdar")
  assert names == set(safetensors.torch.load_file(os.path.join(ckpt.path, "model.safetensors")))


def test_import_export_import_is_bit_identical(imported, tmp_path):
  ckpt, jdir, _ = imported
  out = str(tmp_path / "hf_out")
  export_hf(jdir, out, max_shard_bytes=40_000)  # sharded output with an index
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  jdir2 = str(tmp_path / "jdiff2")
  import_hf(out, jdir2)
  a, b = _jdiff_tensors(jdir), _jdiff_tensors(jdir2)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  with (
      open(os.path.join(jdir, "jdiff_config.json")) as f1,
      open(os.path.join(jdir2, "jdiff_config.json")) as f2,
  ):
    assert json.load(f1)["config"] == json.load(f2)["config"]


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_bf16_roundtrip_is_bit_identical(family, hf_checkpoints, tmp_path):
  ckpt = hf_checkpoints(family)
  src = str(tmp_path / "bf16")
  os.makedirs(src)
  sd = {k: v.to(torch.bfloat16).contiguous() for k, v in _hf_tensors(ckpt.path).items()}
  safetensors.torch.save_file(sd, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(ckpt.path, "config.json")) as f:
    cj = json.load(f)
  cj["torch_dtype"] = "bfloat16"
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(cj, f)

  jdir = str(tmp_path / "jdiff")
  config = import_hf(src, jdir)
  assert config.param_dtype == "bfloat16"
  out = str(tmp_path / "hf_out")
  export_hf(jdir, out)
  _assert_same_tensors(_hf_tensors(out), sd)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  jdir2 = str(tmp_path / "jdiff2")
  import_hf(out, jdir2)
  a, b = _jdiff_tensors(jdir), _jdiff_tensors(jdir2)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype == np.dtype(ml_dtypes.bfloat16), k
    assert np.array_equal(a[k].view(np.int16), b[k].view(np.int16)), k
  # Loading for compute: float32 master weights hold the bf16 values exactly.
  model = from_pretrained(src, param_dtype="float32")
  assert model.config.dtype == "bfloat16"
  emb = np.asarray(model.backbone.embed[...])
  assert emb.dtype == np.float32
  np.testing.assert_array_equal(emb, _bits(sd[_embed_key(family)].float()))


def _embed_key(family):
  return "model.transformer.wte.weight" if family == "llada" else "model.embed_tokens.weight"


def test_sharded_input_loads_identically(hf_dir, tmp_path):
  tensors = _hf_tensors(hf_dir.path)
  names = sorted(tensors)
  src = str(tmp_path / "sharded")
  os.makedirs(src)
  shards = [names[0::3], names[1::3], names[2::3]]
  weight_map = {}
  for i, group in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-00003.safetensors"
    safetensors.torch.save_file(
        {n: tensors[n] for n in group}, os.path.join(src, fname), metadata={"format": "pt"}
    )
    weight_map.update({n: fname for n in group})
  with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
  with (
      open(os.path.join(hf_dir.path, "config.json")) as f,
      open(os.path.join(src, "config.json"), "w") as g,
  ):
    g.write(f.read())
  _assert_same_state(from_pretrained(src), from_pretrained(hf_dir.path))


def test_from_pretrained_jdiff_dir_and_export_of_model_object(imported, tmp_path):
  ckpt, jdir, _ = imported
  from_jdiff = from_pretrained(jdir)
  from_hf = from_pretrained(ckpt.path, dtype="float32")
  assert jdiff.checkpoint.is_jdiff_checkpoint(jdir)
  assert from_jdiff.config == from_hf.config
  _assert_same_state(from_jdiff, from_hf)
  out = str(tmp_path / "hf_from_object")
  export_hf(from_hf, out)  # dtype, names and config fields come from the source checkpoint
  _assert_same_tensors(_hf_tensors(out), _hf_tensors(ckpt.path))
  with open(os.path.join(ckpt.path, "config.json")) as f:
    original = json.load(f)
  with open(os.path.join(out, "config.json")) as f:
    exported = json.load(f)
  assert {k: v for k, v in exported.items() if k in original} == original


def test_save_jdiff_reproduces_model(hf_dir, jdiff_models, tmp_path):
  model = jdiff_models(hf_dir)
  out = str(tmp_path / "saved")
  save_jdiff(model, out, tokenizer_dir=hf_dir.path)
  again = from_pretrained(out)
  assert type(again) is type(model) and again.config == model.config
  _assert_same_state(again, model)


@functools.partial(jax.jit, static_argnums=0)
def _values(graphdef, state, tokens):
  return nnx.merge(graphdef, state)(tokens)[0]


def test_value_model_has_zero_head_and_policy_backbone(hf_dir, jdiff_models, tmp_path):
  policy = jdiff_models(hf_dir)
  value = from_pretrained(hf_dir.path, kind="value", dtype="float32")
  assert isinstance(value, jdiff.ValueModel)
  head = np.asarray(value.value_head[...])
  assert head.shape == (policy.config.hidden_size,) and not np.any(head)
  tokens = np.random.RandomState(0).randint(0, hf_fixtures.VOCAB, size=(2, 8))
  v = np.asarray(_values(*nnx.split(value), tokens))
  assert v.shape == (2, 8) and v.dtype == np.float32 and np.all(v == 0)
  _assert_same_state(value.backbone, policy.backbone)
  assert not hasattr(value, "lm_head")
  # ValueModel.from_policy is the same initialisation; a saved value model reloads as one.
  _assert_same_state(jdiff.ValueModel.from_policy(policy), value)
  out = str(tmp_path / "value")
  save_jdiff(value, out)
  again = from_pretrained(out)
  assert isinstance(again, jdiff.ValueModel)
  _assert_same_state(again, value)
  with pytest.raises(jdiff.checkpoint.CheckpointError, match="only language models"):
    export_hf(out, str(tmp_path / "nope"))
