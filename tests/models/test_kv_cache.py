"""KV-cache decoding equals one full forward with the matching mask (torch reference).

SDAR: prefill whole blocks, then decode block by block (queries = one block, ``mask=None``
= the valid cache slots plus the native pattern among the new tokens), including a
left-padded batch whose pads are never written and a rollback with ``KVCache.keep``.
LLaDA/Dream: a prefix cache computed from the prefix alone reproduces a full forward in
which the prefix cannot see the suffix.
"""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

import hf_fixtures
import jdiff
from jdiff.models import masks

TOL = 1e-4
BS = 4  # SDAR block size of the fixture
NB = 3  # batch
S = 24  # cache slots = 6 blocks


@functools.partial(jax.jit, static_argnums=(0, 6))
def _call(graphdef, state, tokens, positions, mask, cache, store):
  """``model(...)`` with ``store`` a Python bool (static)."""
  return nnx.merge(graphdef, state)(tokens, positions, mask, cache, store=store)


@functools.partial(jax.jit, static_argnums=(0,))
def _call_write(graphdef, state, tokens, positions, mask, cache, write):
  """``model(...)`` with ``store`` a bool ``[B, Q]`` array (per-token writes)."""
  return nnx.merge(graphdef, state)(tokens, positions, mask, cache, store=write)


def _ids(shape, seed):
  rng = np.random.RandomState(seed)
  ids = rng.randint(4, hf_fixtures.MASK_ID, size=shape)
  ids[rng.rand(*shape) < 0.3] = hf_fixtures.MASK_ID
  return ids.astype(np.int32)


def _assert_valid(cache, n):
  """Exactly the slots of positions < n hold a token, in every row."""
  np.testing.assert_array_equal(np.asarray(cache.valid), np.broadcast_to(np.arange(S) < n, (NB, S)))


def _check(name, ours, ref, record):
  diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(ref))))
  record(name, diff)
  assert diff <= TOL, f"{name}: max abs diff {diff:.3e}"


@pytest.fixture(scope="module")
def sdar(hf_checkpoints, jdiff_models):
  ckpt = hf_checkpoints("sdar")
  model = jdiff_models(ckpt)
  assert model.config.block_size == BS
  graphdef, state = nnx.split(model)
  return ckpt, model, graphdef, state


def _decode(graphdef, state, cache, tokens, positions):
  return _call(graphdef, state, tokens, positions, None, cache, True)


def test_sdar_block_decode_equals_full_forward(sdar, record_diff):
  ckpt, model, graphdef, state = sdar
  ids = _ids((NB, S), 0)
  pos = np.broadcast_to(np.arange(S, dtype=np.int32), (NB, S)).copy()
  causal = np.array(masks.block_causal(pos, BS))
  ref = hf_fixtures.torch_logits(ckpt.torch_model, ids, causal, pos)

  k = 2  # prefill two whole blocks with store=True
  cache = jdiff.KVCache.init(model.config, NB, S)
  logits, cache = _call(graphdef, state, ids[:, : k * BS], pos[:, : k * BS], None, cache, True)
  _check("sdar/kv_prefill", logits, ref[:, : k * BS], record_diff)
  _assert_valid(cache, k * BS)
  for j in range(k, S // BS):
    sl = slice(j * BS, (j + 1) * BS)
    logits, cache = _decode(graphdef, state, cache, ids[:, sl], pos[:, sl])
    _check("sdar/kv_decode", logits, ref[:, sl], record_diff)
  assert bool(np.all(cache.valid))

  # Roll back to three blocks and decode block 3 again with different tokens.
  kept = cache.keep(np.broadcast_to(np.arange(S) < 3 * BS, (NB, S)))
  _assert_valid(kept, 3 * BS)
  ids2 = ids.copy()
  ids2[:, 3 * BS :] = _ids((NB, S - 3 * BS), 1)
  ref2 = hf_fixtures.torch_logits(ckpt.torch_model, ids2, causal, pos)
  sl = slice(3 * BS, 4 * BS)
  assert np.abs(ref2[:, sl] - ref[:, sl]).max() > 1e-3  # the new tokens change the block
  logits, _ = _decode(graphdef, state, kept, ids2[:, sl], pos[:, sl])
  _check("sdar/kv_after_keep", logits, ref2[:, sl], record_diff)
  # Without the rollback the stale slots of blocks 3..5 stay visible: results differ.
  stale, _ = _decode(graphdef, state, cache, ids2[:, sl], pos[:, sl])
  assert np.abs(np.asarray(stale) - ref2[:, sl]).max() > 1e-3


def test_sdar_left_padded_batch(sdar, record_diff):
  ckpt, model, graphdef, state = sdar
  pads = np.array([0, 3, 5])
  length = S + pads.max()  # every row has at least S real tokens
  valid = np.arange(length)[None, :] >= pads[:, None]
  ids = np.where(valid, _ids((NB, length), 2), hf_fixtures.EOS_ID).astype(np.int32)
  # Pads get a position that collides with a real slot decoded later: if a pad were
  # written, that slot would turn valid too early and change the logits.
  pos = np.where(valid, np.cumsum(valid, axis=1) - 1, S - 1).astype(np.int32)
  full_mask = np.array(masks.block_causal(pos, BS, valid))
  ref = hf_fixtures.torch_logits(ckpt.torch_model, ids, full_mask, pos)

  k = 2
  lp = pads.max() + k * BS  # physical prefill length covering k blocks in every row
  write = valid[:, :lp] & (pos[:, :lp] < k * BS)
  cache = jdiff.KVCache.init(model.config, NB, S)
  logits, cache = _call_write(
      graphdef, state, ids[:, :lp], pos[:, :lp], valid[:, :lp], cache, write
  )
  _assert_valid(cache, k * BS)
  rows = write
  _check("sdar/kv_padded_prefill", np.asarray(logits)[rows], ref[:, :lp][rows], record_diff)

  for j in range(k, S // BS):
    idx = pads[:, None] + j * BS + np.arange(BS)[None, :]  # physical offsets differ per row
    tok = np.take_along_axis(ids, idx, axis=1)
    p = np.take_along_axis(pos, idx, axis=1)
    np.testing.assert_array_equal(p, np.broadcast_to(j * BS + np.arange(BS), (NB, BS)))
    logits, cache = _decode(graphdef, state, cache, tok, p)
    ref_rows = np.take_along_axis(ref, idx[:, :, None], axis=1)
    _check("sdar/kv_padded_decode", logits, ref_rows, record_diff)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_cache_full_attention(family, hf_checkpoints, jdiff_models, record_diff):
  ckpt = hf_checkpoints(family)
  model = jdiff_models(ckpt)
  graphdef, state = nnx.split(model)
  n_prefix, n_suffix = 8, 8
  n = n_prefix + n_suffix
  ids = _ids((NB, n), 3)
  pos = np.broadcast_to(np.arange(n, dtype=np.int32), (NB, n)).copy()
  # Two-block structure: the prefix sees only itself, the suffix sees everything.
  mask = np.ones((NB, n, n), bool)
  mask[:, :n_prefix, n_prefix:] = False
  ref = hf_fixtures.torch_logits(ckpt.torch_model, ids, mask, pos)

  cache = jdiff.KVCache.init(model.config, NB, n)
  # K/V of the prefix from a forward of the prefix alone (native = bidirectional).
  logits, cache = _call(graphdef, state, ids[:, :n_prefix], pos[:, :n_prefix], None, cache, True)
  _check(f"{family}/prefix_cache_prefix", logits, ref[:, :n_prefix], record_diff)
  logits, _ = _call(graphdef, state, ids[:, n_prefix:], pos[:, n_prefix:], None, cache, True)
  _check(f"{family}/prefix_cache_suffix", logits, ref[:, n_prefix:], record_diff)
  # Sanity: with a bidirectional full forward the prefix would differ.
  bidir = hf_fixtures.torch_logits(ckpt.torch_model, ids, np.ones((NB, n, n), bool), pos)
  assert np.abs(bidir[:, :n_prefix] - ref[:, :n_prefix]).max() > 1e-3


def test_slots_and_concat_cut_a_range_out():
  """``slots(a, b)`` keeps slots [a, b) of k, v and valid; ``concat`` appends another cache:
  cutting [4, 7) out of a 10-slot cache leaves slots 0-3 then 7-9, in order."""
  from jdiff.models.kv_cache import KVCache

  rng = np.random.RandomState(0)
  k, v = (rng.randn(2, NB, 2, 3, 10).astype(np.float32) for _ in range(2))
  valid = rng.rand(NB, 10) < 0.5
  cache = KVCache(k=k, v=v, valid=valid)
  cut = cache.slots(0, 4).concat(cache.slots(7, 10))
  kept = np.r_[0:4, 7:10]
  assert cut.size == 7
  np.testing.assert_array_equal(np.asarray(cut.k), k[..., kept])
  np.testing.assert_array_equal(np.asarray(cut.v), v[..., kept])
  np.testing.assert_array_equal(np.asarray(cut.valid), valid[:, kept])
