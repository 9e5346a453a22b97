"""Model-level checks: compute dtypes, remat policies, config validation, presets, sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hf_fixtures
import jdiff
from jdiff.models import PRESETS, ModelConfig, preset

B, L = 3, 16


def _ids(seed=0):
  return np.random.RandomState(seed).randint(0, hf_fixtures.VOCAB, size=(B, L)).astype(np.int32)


def test_bf16_compute_close_to_f32(hf_checkpoints, jdiff_models):
  ckpt = hf_checkpoints("sdar")
  f32 = jdiff_models(ckpt)
  bf16 = jdiff.from_pretrained(ckpt.path, dtype="bfloat16")
  assert bf16.config.dtype == "bfloat16" and bf16.config.param_dtype == "float32"
  a = np.asarray(jdiff.forward(f32, _ids()))
  b = jdiff.forward(bf16, _ids())
  assert b.dtype == jnp.float32  # logits stay float32 whatever the compute dtype
  b = np.asarray(b)
  assert np.all(np.isfinite(b))
  scale = np.abs(a).max()
  err = np.abs(a - b).max()
  assert err < 0.05 * scale, (err, scale)
  assert err > 0  # bf16 compute really happened
  # Predictions agree almost everywhere.
  assert np.mean(a.argmax(-1) == b.argmax(-1)) > 0.9


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grad(graphdef, state, tokens, weights):
  def loss_fn(state):
    logits, _ = nnx.merge(graphdef, state)(tokens)
    return jnp.sum(jax.nn.log_softmax(logits) * weights), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
  return loss, logits, grads


@pytest.fixture(scope="module")
def remat_results():
  config = preset("tiny_sdar")
  tokens = np.random.RandomState(0).randint(0, config.vocab_size, size=(2, 12))
  weights = np.random.RandomState(1).randn(2, 12, config.vocab_size).astype(np.float32)
  out = {}
  for policy in ("none", "full", "dots"):
    model = jdiff.DiffusionLM(config.replace(remat=policy), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    out[policy] = jax.device_get(_loss_and_grad(graphdef, state, tokens, weights))
  return out


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_match_none(policy, remat_results):
  loss0, logits0, grads0 = remat_results["none"]
  loss, logits, grads = remat_results[policy]
  np.testing.assert_allclose(logits, logits0, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  flat0, flat = dict(nnx.to_flat_state(grads0)), dict(nnx.to_flat_state(grads))
  assert flat0.keys() == flat.keys()
  for k in flat0:
    g0, g = np.asarray(flat0[k][...]), np.asarray(flat[k][...])
    assert np.abs(g0).max() > 0, k  # every parameter gets a gradient
    # Same function; float32 sums may be reassociated differently under remat.
    assert np.abs(g - g0).max() <= 1e-4 * np.abs(g0).max(), k


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(family="gpt"), "family"),
        (dict(num_heads=4, num_kv_heads=3), "num_heads"),
        (dict(family="sdar", block_size=None), "block_size"),
        (dict(family="sdar", block_size=0), "block_size"),
        (dict(remat="sometimes"), "remat"),
        (dict(dtype="float8"), "dtype"),
        (dict(param_dtype="int8"), "param_dtype"),
        (dict(head_dim=15), "head_dim"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_config_validation_names_field(changes, field):
  with pytest.raises(ValueError, match=rf"ModelConfig\.{field}\b"):
    preset("tiny_sdar").replace(**changes)


def test_presets():
  expected = {
      "llada_8b",
      "dream_7b",
      "sdar_1p7b",
      "sdar_4b",
      "sdar_8b",
      "trado_4b",
      "trado_8b",
      "tiny_llada",
      "tiny_dream",
      "tiny_sdar",
  }
  assert expected <= set(PRESETS)
  for name in PRESETS:
    c = preset(name)
    assert isinstance(c, ModelConfig)
    stem = (
        name.split("_")[1] if name.startswith(("tiny_", "small_", "mini_")) else name.split("_")[0]
    )
    assert c.family == {"trado": "sdar"}.get(stem, stem), name
    assert c.mask_token_id is not None and c.eos_token_id is not None
    assert c.shift_logits == (c.family == "dream") and c.block_causal == (c.family == "sdar")
  assert preset("trado_8b") == preset("sdar_8b")
  assert preset("llada_8b").mask_token_id == 126336
  assert preset("dream_7b").mask_token_id == 151666 and preset("dream_7b").qkv_bias
  assert preset("sdar_8b").qk_norm and preset("sdar_8b").block_size == 4
  assert 7.9e9 < preset("llada_8b").num_params() < 8.1e9
  assert 7.5e9 < preset("dream_7b").num_params() < 7.7e9
  assert preset("tiny_sdar", dtype="bfloat16").dtype == "bfloat16"
  with pytest.raises(KeyError, match="tiny_sdar"):
    preset("no_such_model")


def _count(model):
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return sum(int(np.prod(v.get_value().shape)) for _, v in params)


@pytest.mark.parametrize("name", ["tiny_llada", "tiny_dream", "tiny_sdar"])
def test_num_params_equals_built_model(name):
  config = preset(name)
  assert _count(jdiff.DiffusionLM(config, rngs=nnx.Rngs(0))) == config.num_params()
  for c in (config.replace(tie_word_embeddings=True), config.replace(num_kv_heads=4)):
    abstract = nnx.eval_shape(lambda c=c: jdiff.DiffusionLM(c, rngs=nnx.Rngs(0)))
    assert _count(abstract) == c.num_params()
  assert config.flops_per_token(L) > 2 * (
      config.num_params() - config.vocab_size * config.hidden_size
  )


def test_tied_head_uses_embedding():
  config = preset("tiny_llada", tie_word_embeddings=True)
  model = jdiff.DiffusionLM(config, rngs=nnx.Rngs(0))
  assert not hasattr(model, "lm_head")
  np.testing.assert_array_equal(
      np.asarray(model.head_weight()), np.asarray(model.backbone.embed[...]).T
  )


def test_forward_argument_errors(hf_checkpoints, jdiff_models):
  model = jdiff_models(hf_checkpoints("llada"))
  with pytest.raises(ValueError, match="input_ids"):
    jdiff.forward(model, np.zeros((L,), np.int32))
  with pytest.raises(ValueError, match="positions"):
    jdiff.forward(model, _ids(), positions=np.zeros((B, L + 1), np.int32))
  with pytest.raises(ValueError, match="attention_mask"):
    jdiff.forward(model, _ids(), attention_mask=np.ones((B, L, L + 1), bool))


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_window_equals_slice_of_full_call(family, hf_checkpoints, jdiff_models):
  """``backbone(..., window=(start, width))`` (last layer on the window's queries only) gives
  the full call's hidden states at those rows, with a traced start, and stores the same
  cache (every layer's keys and values still cover all tokens)."""
  from jdiff.models import masks
  from jdiff.models.kv_cache import KVCache

  model = jdiff_models(hf_checkpoints(family))
  ids = _ids(1)
  pos = np.broadcast_to(np.arange(L, dtype=np.int32) + 2, (B, L))  # offset: rope uses positions
  valid = np.ones((B, L), bool)
  valid[0, :3] = False  # a left-padded row
  mask = (
      masks.block_causal(jnp.asarray(pos), model.config.block_size, jnp.asarray(valid))
      if model.config.block_causal
      else masks.bidirectional(jnp.asarray(valid))
  )
  cache = KVCache.init(model.config, B, L + 2)

  @functools.partial(jax.jit, static_argnames="width")
  def run(start, width):
    win = None if width is None else (start, width)
    return model.backbone(ids, pos, mask, cache, store=jnp.asarray(valid), window=win)

  full, full_cache = run(0, None)
  for start, width in [(0, 5), (7, 6), (L - 4, 4), (0, L)]:
    got, got_cache = run(start, width)
    assert got.shape == (B, width, model.config.hidden_size)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(full[:, start : start + width]), rtol=1e-5, atol=2e-5
    )  # float reassociation only
    for a, b in [(got_cache.k, full_cache.k), (got_cache.v, full_cache.v)]:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-5)
  for bad in [L + 1, 0, 2.0, True, jnp.int32(3)]:  # out of range, not an int, an array
    with pytest.raises(ValueError, match="window width"):
      model.backbone(ids, pos, mask, window=(0, bad))
  h_np, _ = model.backbone(ids, pos, mask, window=(np.int64(7), np.int64(6)))  # numpy ints
  np.testing.assert_allclose(np.asarray(h_np), np.asarray(full[:, 7:13]), rtol=1e-5, atol=2e-5)


def test_store_without_cache_holds_tokens_in_order(hf_checkpoints, jdiff_models):
  """``store`` with no cache returns a fresh one, slot i = input token i: with positions
  0..T-1 it equals storing into an empty cache by position; unstored tokens are invalid."""
  from jdiff.models.kv_cache import KVCache

  model = jdiff_models(hf_checkpoints("llada"))
  ids = _ids(2)
  write = np.ones((B, L), bool)
  write[1, :4] = False
  h, fresh = model.backbone(ids, store=write)
  h_ref, by_pos = model.backbone(ids, cache=KVCache.init(model.config, B, L), store=write)
  np.testing.assert_array_equal(np.asarray(fresh.valid), write)
  np.testing.assert_array_equal(np.asarray(fresh.valid), np.asarray(by_pos.valid))
  for a, b in [(fresh.k, by_pos.k), (fresh.v, by_pos.v)]:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a[..., 4:], b[..., 4:], rtol=1e-5, atol=1e-5)  # stored slots
  np.testing.assert_allclose(np.asarray(h), np.asarray(h_ref), rtol=1e-5, atol=1e-5)
