"""Chunked (flash-style) attention against the dense reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff.models import DiffusionLM, masks, preset
from jdiff.models.chunked_attention import chunked_attention, tile_table
from jdiff.models.layers import attention

B, H, KV, HD = 2, 4, 2, 8


def _close(actual, expected, rtol=1e-5):
  """rtol 1e-5 of each element, with the floor scaled to the array's magnitude."""
  expected = np.asarray(expected)
  scale = float(np.max(np.abs(expected)))
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=rtol * scale)


def _left_padded_valid(n):
  valid = np.ones((B, n), bool)
  valid[0, :3] = False  # row 0 left-padded by 3, row 1 full
  return valid


def _cases(n):
  """(name, spec, dense mask from the existing builders) for every mask kind."""
  rng = np.random.default_rng(1)
  pos = np.tile(np.arange(n), (B, 1))
  valid = _left_padded_valid(n)
  blocks = np.sort(rng.integers(0, 4, size=(B, n)), axis=1)
  noisy = rng.random((B, n)) < 0.5
  return [
      ("bidirectional", masks.spec_bidirectional(valid), masks.bidirectional(valid)),
      ("block_causal", masks.spec_block_causal(pos, 4, valid), masks.block_causal(pos, 4, valid)),
      (
          "xt_x0",
          masks.spec_xt_x0(pos[:, : n // 2], 4, valid[:, : n // 2]),
          masks.xt_x0(pos[:, : n // 2], 4, valid[:, : n // 2]),
      ),
      (
          "mixed",
          masks.spec_block_diffusion(blocks, noisy, valid),
          masks.block_diffusion(blocks, noisy, valid),
      ),
  ]


@pytest.mark.parametrize("kind", ["bidirectional", "block_causal", "xt_x0", "mixed"])
def test_spec_dense_equals_existing_builders(kind):
  spec, ref = {c[0]: c[1:] for c in _cases(18)}[kind]
  np.testing.assert_array_equal(np.asarray(masks.dense(spec)), np.asarray(ref))


def _qkvw(n, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  return f(B, n, H, HD), f(B, n, KV, HD), f(B, n, KV, HD), f(B, n, H, HD)


@pytest.mark.parametrize("chunks", [(6, 6), (5, 7), (18, 4), (32, 32)])
@pytest.mark.parametrize("kind", ["bidirectional", "block_causal", "xt_x0", "mixed"])
def test_chunked_equals_dense_values_and_gradients(kind, chunks):
  n = 18  # 6 divides it; 5, 7 and 4 do not; 32 is one tile larger than the sequence
  spec, dense_mask = {c[0]: c[1:] for c in _cases(n)}[kind]
  q, k, v, w = _qkvw(n)
  cq, ck = chunks

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

  dense = lambda q, k, v: attention(q, k, v, dense_mask)  # noqa: E731
  tiled = lambda q, k, v: chunked_attention(q, k, v, spec, cq, ck)  # noqa: E731
  _close(jax.jit(tiled)(q, k, v), dense(q, k, v))
  got = jax.jit(jax.grad(loss(tiled), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    _close(g, r)


def test_chunked_rejects_bad_shapes():
  q, k, v, _ = _qkvw(8)
  spec = masks.spec_bidirectional(np.ones((B, 6), bool))
  with pytest.raises(ValueError, match="self-attention"):
    chunked_attention(q, k, v, spec)
  with pytest.raises(ValueError, match="chunk sizes"):
    chunked_attention(q, k, v, masks.spec_bidirectional(np.ones((B, 8), bool)), 0, 4)


def test_backbone_chunked_equals_dense_on_training_layout():
  n = 10
  dense_cfg = preset("tiny_sdar")
  model = DiffusionLM(dense_cfg, rngs=nnx.Rngs(0))
  chunked = DiffusionLM(
      dense_cfg.replace(attention_impl="chunked", attention_chunk_q=6, attention_chunk_k=8),
      rngs=nnx.Rngs(0),
  )
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.integers(0, 128, size=(B, 2 * n)), jnp.int32)
  pos = np.tile(np.arange(n), (B, 1))
  valid = _left_padded_valid(n)
  spec = masks.spec_xt_x0(pos, dense_cfg.block_size, valid)
  positions = jnp.asarray(np.concatenate([pos, pos], -1), jnp.int32)
  want, _ = model(tokens, positions, masks.xt_x0(pos, dense_cfg.block_size, valid))
  got, _ = chunked(tokens, positions, spec)
  spec_dense, _ = model(tokens, positions, spec)  # a spec under the dense impl: same mask
  keep = np.concatenate([valid, valid], -1)
  _close(np.asarray(got)[keep], np.asarray(want)[keep])
  _close(np.asarray(spec_dense)[keep], np.asarray(want)[keep])
  # No mask at all: the family's native (block-causal) pattern on both paths.
  _close(chunked(tokens, positions)[0], model(tokens, positions)[0])


def test_backbone_rejects_spec_of_wrong_length():
  cfg = preset("tiny_sdar", attention_impl="chunked")
  model = DiffusionLM(cfg, rngs=nnx.Rngs(0))
  spec = masks.spec_bidirectional(np.ones((1, 5), bool))
  with pytest.raises(ValueError, match="mask spec"):
    model(jnp.zeros((1, 6), jnp.int32), None, spec)


def test_config_rejects_unknown_attention_impl():
  with pytest.raises(ValueError, match="attention_impl"):
    preset("tiny_sdar", attention_impl="flash")
  with pytest.raises(ValueError, match="attention_chunk_q"):
    preset("tiny_sdar", attention_chunk_q=0)


def _grad_fn(fn, w):
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))


def test_no_length_squared_intermediate_at_1024():
  """The gradient program of the chunked path holds no [L, L]-sized array at L = 1024."""
  n, chunk = 1024, 128
  pos = np.tile(np.arange(n // 2), (1, 1))
  spec = masks.spec_xt_x0(pos, 4)
  sds = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  q, k, v, w = sds(1, n, H, HD), sds(1, n, KV, HD), sds(1, n, KV, HD), sds(1, n, H, HD)
  tiled = _grad_fn(lambda q, k, v: chunked_attention(q, k, v, spec, chunk, chunk), w=1.0)
  jaxpr = jax.make_jaxpr(tiled)(q, k, v)

  def shapes(jx):
    for eqn in jx.eqns:
      for var in eqn.outvars:
        yield getattr(var.aval, "shape", ())
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr
          if hasattr(sub, "eqns"):
            yield from shapes(sub)

  biggest = max(int(np.prod(s)) for s in shapes(jaxpr.jaxpr))
  assert biggest < n * n, biggest  # an [L, L] score or mask would be >= n * n elements
  dense_mask = masks.xt_x0(pos, 4)
  dense = _grad_fn(lambda q, k, v: attention(q, k, v, dense_mask), w=1.0)
  mem = lambda f: f.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes  # noqa: E731
  t_tiled, t_dense = mem(tiled), mem(dense)
  print(f"L={n}: temp bytes dense {t_dense}, chunked {t_tiled}")
  assert t_tiled * 4 < t_dense


@pytest.mark.parametrize("chunks", [(6, 6), (5, 7)])
def test_tile_table_is_the_dense_mask_reduced_over_tiles(chunks):
  cq, ck = chunks
  for _, spec, dense_mask in _cases(18):
    m = np.asarray(dense_mask)
    nq, nk = -(-18 // cq), -(-18 // ck)
    want = np.array(
        [
            [m[:, i * cq : (i + 1) * cq, j * ck : (j + 1) * ck].any() for j in range(nk)]
            for i in range(nq)
        ]
    )
    np.testing.assert_array_equal(np.asarray(tile_table(spec, cq, ck)), want)


def test_tiles_marked_unneeded_are_skipped():
  """The kernel consults the table: a needed tile forced off changes the output."""
  n = 18
  spec = masks.spec_bidirectional(np.ones((B, n), bool))
  q, k, v, _ = _qkvw(n)
  table = np.array(tile_table(spec, 6, 6))
  assert table.all()
  table[0, 1] = False
  full = chunked_attention(q, k, v, spec, 6, 6)
  cut = chunked_attention(q, k, v, spec, 6, 6, jnp.asarray(table))
  np.testing.assert_array_equal(np.asarray(cut)[:, 6:], np.asarray(full)[:, 6:])
  assert float(jnp.max(jnp.abs(cut[:, :6] - full[:, :6]))) > 1e-3


def test_training_row_skips_about_half_the_tiles():
  """A TraceRL-sized x_t ⊕ x_0 row (2 x 2394 tokens) in 512-token tiles."""
  n = 2394
  pos = np.arange(n)[None]
  table = np.asarray(tile_table(masks.spec_xt_x0(pos, 4), 512, 512))
  frac = table.mean()
  print(f"L={2 * n}: {table.sum()} of {table.size} tiles computed ({frac:.2f})")
  assert 0.3 < frac < 0.7
