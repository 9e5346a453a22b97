"""LoRA / QLoRA on the stacked layers: forward, reference policy, training filter, export."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hf_fixtures
import jdiff
from jdiff.checkpoint import export_hf, from_pretrained
from jdiff.models.lora import (
    TARGETS,
    LoraConfig,
    LoraParam,
    apply_lora,
    has_lora,
    lora_reference,
    merge_lora,
    merged_weight,
)
from jdiff.train.update import init_train_state, make_update_step

B, T = 2, 8


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, tokens, mask):
  return nnx.merge(graphdef, state)(tokens, None, mask)[0]


def logits(model, tokens):
  """Logits under full bidirectional attention (what the torch comparison uses too)."""
  b, t = tokens.shape
  return np.asarray(_logits(*nnx.split(model), tokens, np.ones((b, t, t), bool)))


def _tiny(seed=0):
  cfg = jdiff.preset("tiny_sdar")
  return jdiff.DiffusionLM(cfg, rngs=nnx.Rngs(seed))


def _tokens(cfg, seed=0):
  return np.random.RandomState(seed).randint(0, cfg.vocab_size, size=(B, T)).astype(np.int32)


def _randomise_b(model, seed=1, std=0.05):
  """Non-zero adapters (as after training) so the adapter visibly changes the output."""
  layers = model.backbone.layers
  for i, name in enumerate(sorted(TARGETS)):
    var = getattr(layers, name + "_lora_b", None)
    if var is not None:
      key = jax.random.fold_in(jax.random.key(seed), i)
      var[...] = std * jax.random.normal(key, var[...].shape, var[...].dtype)
  return model


def _by_hand_merged(model, cfg):
  """Per-layer W + (alpha/r) A B with numpy loops (independent of merge_lora's einsum)."""
  layers = model.backbone.layers
  out = {}
  for name in cfg.targets:
    w = np.asarray(getattr(layers, name)[...], np.float64)
    a = np.asarray(getattr(layers, name + "_lora_a")[...], np.float64)
    b = np.asarray(getattr(layers, name + "_lora_b")[...], np.float64)
    merged = np.empty_like(w)
    for layer in range(w.shape[0]):
      a2 = a[layer].reshape(-1, cfg.rank)
      b2 = b[layer].reshape(cfg.rank, -1)
      merged[layer] = w[layer] + (cfg.alpha / cfg.rank) * (a2 @ b2).reshape(w.shape[1:])
    out[name] = merged
  return out


def test_config_validation():
  assert not LoraConfig().enabled
  cfg = LoraConfig.from_section({"rank": 8, "alpha": 16.0, "targets": ["wq", "wv"]})
  assert cfg.targets == ("wq", "wv") and cfg.enabled
  for section, key in (
      ({"rank": -1}, "rank"),
      ({"rank": 4, "alpha": 0}, "alpha"),
      ({"rank": 4, "targets": ["q_proj"]}, "targets"),
      ({"rank": 4, "targets": "wq"}, "targets"),
      ({"rank": 4, "quantize_base": "int8"}, "quantize_base"),
      ({"rank": 4, "dropout": 0.05}, "dropout"),
      ({"rank": 4, "lr": 1e-4}, "lr"),
  ):
    with pytest.raises(ValueError, match=rf"config\.model\.lora\.{key}"):
      LoraConfig.from_section(section)


def test_zero_b_equals_base_and_reference_is_base():
  base = _tiny()
  tokens = _tokens(base.config)
  want = logits(base, tokens)
  cfg = LoraConfig(rank=4, alpha=8.0)
  model = apply_lora(_tiny(), cfg)
  assert has_lora(model)
  np.testing.assert_array_equal(logits(model, tokens), want)  # B = 0: exactly the base
  _randomise_b(model)
  with_adapter = logits(model, tokens)
  assert np.max(np.abs(with_adapter - want)) > 1e-3
  ref = lora_reference(model)
  np.testing.assert_array_equal(logits(ref, tokens), want)
  # The reference shares the base weights (no copy) and leaves the policy's adapter on.
  assert ref.backbone.layers.wq[...] is model.backbone.layers.wq[...]
  np.testing.assert_array_equal(logits(model, tokens), with_adapter)


def test_adapter_forward_equals_merged_weights():
  cfg = LoraConfig(rank=4, alpha=8.0, targets=("wq", "wo", "w_down"))
  model = _randomise_b(apply_lora(_tiny(), cfg))
  tokens = _tokens(model.config, 1)
  plain = _tiny()
  for name, w in _by_hand_merged(model, cfg).items():
    getattr(plain.backbone.layers, name)[...] = jnp.asarray(w, jnp.float32)
  want = logits(plain, tokens)
  np.testing.assert_allclose(logits(model, tokens), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  merged = merge_lora(model)
  assert not has_lora(merged)
  for name in cfg.targets:
    np.testing.assert_allclose(
        np.asarray(getattr(merged.backbone.layers, name)[...]),
        np.asarray(getattr(plain.backbone.layers, name)[...]),
        rtol=1e-5,
        atol=1e-7,
    )


def _loss(model, batch):
  lg = model(batch["tokens"])[0]
  return jnp.mean(jnp.square(lg - 1.0)), {}


def test_one_update_changes_only_adapters():
  model = apply_lora(_tiny(), LoraConfig(rank=4, alpha=8.0))
  before = {p: np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
  opt = optax.adamw(1e-2, weight_decay=0.5)
  graphdef, state = init_train_state(model, opt, trainable=LoraParam)
  names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(state.params)}
  assert names and all("_lora_" in n for n in names)
  update = make_update_step(graphdef, opt, _loss)
  state, metrics = update(state, {"tokens": _tokens(model.config)})
  assert float(metrics["skipped"]) == 0
  after = dict(nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state.params, state.rest))))
  changed = {
      ".".join(map(str, p))
      for p, v in after.items()
      if not np.array_equal(np.asarray(v[...]), before[p])
  }
  # Every B moves (its gradient is non-zero); A's gradient is 0 while B = 0, so only weight
  # decay would move it, and with decay on the adapters alone it does.
  assert changed == names
  # The default split is unchanged: every Param (adapters included) trains.
  _, full = init_train_state(model, opt)
  full_names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(full.params)}
  assert names < full_names and "backbone.layers.wq" in full_names


@pytest.mark.parametrize("qtype", ["nf4", "int4"])
def test_qlora_base_is_close_to_float_base(qtype):
  base = _tiny()
  tokens = _tokens(base.config, 2)
  want = logits(base, tokens)
  model = apply_lora(_tiny(), LoraConfig(rank=4, alpha=8.0, quantize_base=qtype))
  assert not hasattr(model.backbone.layers, "wq")
  assert hasattr(model.backbone.layers, "wq_q_" + qtype)
  # 4-bit blockwise quantisation of Gaussian weights: ~9-10% relative error per weight
  # (measured 0.093 nf4, 0.103 int4); it compounds over the layers into ~12-15% on the
  # logits, against ~140% between two random initialisations of this model.
  for name in TARGETS:
    w = np.asarray(getattr(base.backbone.layers, name)[...])
    wq = np.asarray(merged_weight(model.backbone.layers, name))
    assert 0 < np.linalg.norm(wq - w) / np.linalg.norm(w) < 0.15, name
  got = logits(model, tokens)
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert 0 < rel < 0.25, rel
  # Exactly the plain model on the dequantised weights (what merge_lora exports).
  merged = merge_lora(model)
  np.testing.assert_allclose(logits(merged, tokens), got, rtol=1e-5, atol=1e-6 * np.abs(got).max())


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_export_of_lora_model_loads_in_transformers(family, hf_checkpoints, tmp_path):
  ckpt = hf_checkpoints(family)
  model = from_pretrained(ckpt.path, dtype="float32")
  model = _randomise_b(apply_lora(model, LoraConfig(rank=4, alpha=8.0)))
  out = str(tmp_path / "hf")
  export_hf(model, out)
  with (
      open(os.path.join(ckpt.path, "config.json")) as f,
      open(os.path.join(out, "config.json")) as g,
  ):
    assert json.load(g) == json.load(f)
  torch_model = hf_fixtures.load_exported(family, out, attn_implementation="eager")
  ids = _tokens(model.config, 3)
  pos = np.tile(np.arange(T), (B, 1))
  want = hf_fixtures.torch_logits(torch_model, ids, np.ones((B, T, T), bool), pos)
  got = logits(merge_lora(model), ids)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  assert np.max(np.abs(logits(model, ids) - logits(lora_reference(model), ids))) > 1e-3


def test_load_policy_reads_model_lora():
  import ml_collections

  from jdiff.models.lora import trainable_filter
  from jdiff.train.setup import load_policy

  mc = ml_collections.ConfigDict(
      dict(
          preset="tiny_sdar",
          lora=dict(rank=4, alpha=8.0, targets=["wq", "w_up"], quantize_base="nf4"),
      )
  )
  model, _ = load_policy(mc, seed=0)
  assert has_lora(model) and trainable_filter(model) is LoraParam
  assert hasattr(model.backbone.layers, "wq_lora_a") and not hasattr(
      model.backbone.layers, "wk_lora_a"
  )
  assert hasattr(model.backbone.layers, "w_up_q_nf4")
  plain, _ = load_policy(ml_collections.ConfigDict(dict(preset="tiny_sdar")), seed=0)
  assert not has_lora(plain) and trainable_filter(plain) is nnx.Param
  mc = ml_collections.ConfigDict(dict(preset="tiny_sdar", lora=dict(rank="8")))
  with pytest.raises(ValueError, match=r"config\.model\.lora\.rank"):
    load_policy(mc, seed=0)


def test_4bit_packing_round_trips_every_code():
  from jdiff.models.lora import pack_4bit, unpack_4bit

  codes = np.arange(16).reshape(2, 8)
  for qtype, values in (
      ("nf4", jnp.asarray(codes, jnp.uint4)),
      ("int4", jnp.asarray(codes - 8, jnp.int4)),
  ):
    packed = pack_4bit(values)
    assert packed.dtype == jnp.uint8 and packed.shape == (2, 4)
    back = unpack_4bit(packed, qtype)
    assert back.dtype == values.dtype
    np.testing.assert_array_equal(
        np.asarray(back.astype(jnp.int32)), np.asarray(values.astype(jnp.int32))
    )


def test_qlora_train_state_checkpoints(tmp_path):
  """Orbax cannot store 4-bit dtypes: the packed base must survive a save / restore."""
  from jdiff.train.checkpointing import Checkpointer

  model = apply_lora(_tiny(), LoraConfig(rank=4, alpha=8.0, quantize_base="int4"))
  _, state = init_train_state(model, optax.adamw(1e-3), trainable=LoraParam)
  ck = Checkpointer(str(tmp_path))
  ck.save(1, {"state": state}, force=True)
  items, _ = ck.restore(1, targets={"state": jax.eval_shape(lambda s: s, state)})
  want = dict(nnx.to_flat_state(state.rest))
  got = dict(nnx.to_flat_state(items["state"].rest))
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k][...]), np.asarray(want[k][...]))


def test_adapters_are_float32_on_a_bf16_base():
  base = jdiff.DiffusionLM(
      jdiff.preset("tiny_sdar", param_dtype="bfloat16", dtype="bfloat16"), rngs=nnx.Rngs(0)
  )
  model = apply_lora(base, LoraConfig(rank=4, alpha=8.0, targets=("wq",)))
  assert model.backbone.layers.wq[...].dtype == jnp.bfloat16
  assert model.backbone.layers.wq_lora_a[...].dtype == jnp.float32
  assert model.backbone.layers.wq_lora_b[...].dtype == jnp.float32
  out = logits(_randomise_b(model), _tokens(model.config))
  assert out.dtype == np.float32 and np.all(np.isfinite(out))
  assert merge_lora(model).backbone.layers.wq[...].dtype == jnp.bfloat16
