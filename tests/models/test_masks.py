"""Mask builders vs plain-Python loops written from the rules (docs/formats.md §Attention layouts)."""

import itertools

import numpy as np
import pytest

from jdiff.models import masks

BS = 3  # deliberately not dividing the lengths


def _add_self_edges(m):
  m = m.copy()
  for b, q in itertools.product(range(m.shape[0]), range(m.shape[1])):
    if not m[b, q].any():
      m[b, q, q] = True
  return m


def _case(n=10, seed=0):
  """Two rows: row 0 starts at position 0; row 1 is left-padded by 2 and starts at 2."""
  positions = np.stack([np.arange(n), np.arange(n) + 2])
  valid = np.ones((2, n), bool)
  valid[1, :2] = False
  return positions.astype(np.int32), valid


def test_block_ids_are_absolute():
  pos = np.array([[5, 6, 7, 8, 9, 12]])
  np.testing.assert_array_equal(np.asarray(masks.block_ids(pos, 4)), [[1, 1, 1, 2, 2, 3]])


def test_bidirectional_with_padding():
  _, valid = _case()
  ref = np.zeros((2, 10, 10), bool)
  for b, q, k in itertools.product(range(2), range(10), range(10)):
    ref[b, q, k] = valid[b, q] and valid[b, k]
  ref = _add_self_edges(ref)
  got = np.asarray(masks.bidirectional(valid))
  np.testing.assert_array_equal(got, ref)
  assert got[1, 0, 0] and not got[1, 0, 1] and not got[1, 5, 0]  # pad rows: self-edge only


def test_block_causal_absolute_positions():
  pos, valid = _case()
  for v in (None, valid):
    ref = np.zeros((2, 10, 10), bool)
    for b, q, k in itertools.product(range(2), range(10), range(10)):
      ok = pos[b, k] // BS <= pos[b, q] // BS
      if v is not None:
        ok = ok and v[b, q] and v[b, k]
      ref[b, q, k] = ok
    np.testing.assert_array_equal(np.asarray(masks.block_causal(pos, BS, v)), _add_self_edges(ref))
  got = np.asarray(masks.block_causal(pos, BS))
  # Row 1 starts at position 2: its first block (positions 0..2) holds only index 0.
  assert got[1, 0, :1].all() and not got[1, 0, 1:].any()
  assert got[1, 1, :4].all() and not got[1, 1, 4:].any()


def _xt_x0_loop(positions, block_size, valid=None):
  """The 2n x 2n rule set of §A3, written out literally."""
  b_, n = positions.shape
  out = np.zeros((b_, 2 * n, 2 * n), bool)
  for b in range(b_):

    def is_x0(i):
      return i >= n

    def blk(i):
      return positions[b, i - n * is_x0(i)] // block_size

    def ok(i):
      return True if valid is None else valid[b, i - n * is_x0(i)]

    for q, k in itertools.product(range(2 * n), range(2 * n)):
      m_bd = is_x0(q) == is_x0(k) and blk(q) == blk(k)
      m_obc = not is_x0(q) and is_x0(k) and blk(k) < blk(q)
      m_bc = is_x0(q) and is_x0(k) and blk(k) <= blk(q)
      out[b, q, k] = (m_bd or m_obc or m_bc) and ok(q) and ok(k)
  return _add_self_edges(out)


@pytest.mark.parametrize("padded", [False, True])
def test_xt_x0_matches_rules(padded):
  pos, valid = _case(n=8)
  v = valid if padded else None
  got = np.asarray(masks.xt_x0(pos, BS, v))
  np.testing.assert_array_equal(got, _xt_x0_loop(pos, BS, v))
  n = 8
  if not padded:
    xt_xt, xt_x0, x0_xt = got[:, :n, :n], got[:, :n, n:], got[:, n:, :n]
    assert not x0_xt.any()  # x_0 never sees x_t
    assert not np.any(np.diagonal(xt_x0, axis1=1, axis2=2))  # x_t never sees its clean copy
    blk = pos // BS
    # x_t never sees another noisy block
    assert not np.any(xt_xt & (blk[:, :, None] != blk[:, None, :]))


def test_block_diffusion_any_mix():
  rng = np.random.RandomState(0)
  blocks = np.sort(rng.randint(0, 4, size=(3, 12)), axis=1)
  noisy = rng.rand(3, 12) < 0.5
  valid = rng.rand(3, 12) < 0.8
  ref = np.zeros((3, 12, 12), bool)
  for b, q, k in itertools.product(range(3), range(12), range(12)):
    qb, kb, qn, kn = blocks[b, q], blocks[b, k], noisy[b, q], noisy[b, k]
    allowed = (
        (qn and kn and qb == kb) or (qn and not kn and kb < qb) or (not qn and not kn and kb <= qb)
    )
    ref[b, q, k] = allowed and valid[b, q] and valid[b, k]
  got = np.asarray(masks.block_diffusion(blocks, noisy, valid))
  np.testing.assert_array_equal(got, _add_self_edges(ref))


def test_self_edges_only_for_empty_rows():
  m = np.zeros((1, 3, 3), bool)
  m[0, 0, 2] = True
  got = np.asarray(masks.with_self_edges(m))
  np.testing.assert_array_equal(
      got[0], [[False, False, True], [False, True, False], [False, False, True]]
  )


def test_with_cache_and_native():
  cache_valid = np.array([[True, False, True], [False, False, False]])
  new = np.asarray(masks.block_causal(np.broadcast_to(np.arange(4), (2, 4)), 2))
  got = np.asarray(masks.with_cache(cache_valid, new))
  assert got.shape == (2, 4, 7)
  for b, q in itertools.product(range(2), range(4)):
    np.testing.assert_array_equal(got[b, q, :3], cache_valid[b])
    np.testing.assert_array_equal(got[b, q, 3:], new[b, q])
  per_query = np.ones((2, 4, 3), bool)
  np.testing.assert_array_equal(np.asarray(masks.with_cache(per_query, new))[:, :, :3], per_query)

  pos, valid = _case()
  np.testing.assert_array_equal(
      np.asarray(masks.native(BS, pos, valid)), np.asarray(masks.block_causal(pos, BS, valid))
  )
  np.testing.assert_array_equal(
      np.asarray(masks.native(None, pos, valid)), np.asarray(masks.bidirectional(valid))
  )
  assert np.asarray(masks.native(None, pos)).all()


def test_to_additive():
  m = np.array([[[True, False], [False, True]]])
  add = np.asarray(masks.to_additive(m))
  assert add.shape == (1, 1, 2, 2) and add.dtype == np.float32
  np.testing.assert_array_equal(
      add[0, 0], [[0, np.finfo(np.float32).min], [np.finfo(np.float32).min, 0]]
  )
