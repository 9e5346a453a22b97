"""Shared sampling pieces against plain-Python references."""

import numpy as np
import pytest

from jdiff.sampling import common


def _top_n_reference(conf, eligible, n):
  out = np.zeros(conf.shape, bool)
  for r in range(conf.shape[0]):
    cols = [j for j in range(conf.shape[1]) if eligible[r, j]]
    cols.sort(key=lambda j: (-conf[r, j], j))  # most confident first, ties -> leftmost
    out[r, cols[: n[r]]] = True
  return out


@pytest.mark.parametrize("width", [5, 32, 300])  # 300: past the pairwise width, sorted ranks
def test_select_top_n_matches_python_sort(width):
  rng = np.random.RandomState(width)
  rows = 6
  # Few distinct values, so ties are frequent; -inf and 0 confidences included.
  conf = rng.choice(np.array([-np.inf, 0.0, 0.1, 0.5, 0.5, 0.9], np.float32), (rows, width))
  eligible = rng.rand(rows, width) < 0.6
  eligible[0] = False  # nothing to pick
  eligible[1] = True
  n = np.array([3, width + 4, 0, 1, 2, width // 2], np.int32)  # n past the eligible count
  got = np.asarray(common.select_top_n(conf, eligible, n))
  want = _top_n_reference(conf, eligible, n)
  np.testing.assert_array_equal(got, want)
  assert np.all(got.sum(-1) == np.minimum(n, eligible.sum(-1)))


def test_top_p_filter_with_a_traced_top_p_matches_the_static_one():
  """The block sampler runs the nucleus rule with a traced top_p; same result as the filter's
  static path, and the kept set is the smallest prefix whose mass reaches top_p."""
  import jax

  rng = np.random.RandomState(0)
  logits = rng.randn(3, 5, 40).astype(np.float32)
  for top_p in (0.3, 0.9, 0.999):
    static = np.asarray(common.filter_logits(logits, 1.0, 0, top_p))
    traced = np.asarray(jax.jit(common.top_p_filter)(logits, np.float32(top_p)))
    np.testing.assert_array_equal(traced, static)
    for row in logits.reshape(-1, 40):
      order = np.argsort(-row, kind="stable")
      p = np.exp(row[order] - row.max())
      p /= p.sum()
      keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)  # first prefix reaching top_p
      kept = np.isfinite(np.asarray(common.top_p_filter(row[None], top_p))[0])
      assert kept.sum() == keep and kept[order[:keep]].all()


def test_finish_truncates_after_the_first_stop():
  canvas = np.array([[5, 2, 7, 9], [4, 4, 4, 4], [3, 6, 6, 3]], np.int32)
  step_map = np.array([[1, 2, 3, 4], [1, 1, 2, 2], [4, 3, 2, 1]], np.int32)
  logprobs = -np.arange(12, dtype=np.float32).reshape(3, 4) - 1
  lengths = np.asarray(common.stop_lengths(canvas, (2, 3)))
  np.testing.assert_array_equal(lengths, [2, 4, 1])
  states = np.zeros((5, 3, 4), np.int32)
  num_steps = np.array([4, 2, 5], np.int32)
  for truncated in (False, True):
    tr = common.finish(
        np.zeros((3, 1)),
        np.ones((3, 1), bool),
        canvas,
        step_map,
        logprobs,
        lengths,
        num_steps,
        pad_id=0,
        states=states,
        tail_truncated=truncated,
    )
    for r in range(3):
      n = lengths[r]
      want = list(canvas[r, :n]) + [0] * (4 - n)
      np.testing.assert_array_equal(tr.tokens[r], want)
      np.testing.assert_array_equal(tr.step_map[r, n:], 0)
      np.testing.assert_array_equal(tr.logprobs[r, :n], logprobs[r, :n])
      np.testing.assert_array_equal(tr.states[: num_steps[r], r], 0)  # recorded steps kept
      tail = want if truncated else canvas[r]
      for k in range(num_steps[r], 5):
        np.testing.assert_array_equal(tr.states[k, r], tail)
    np.testing.assert_array_equal(tr.raw_tokens, canvas)
    np.testing.assert_array_equal(tr.raw_logprobs, logprobs)


def test_canvas_positions():
  valid = np.array([[False, False, True, True, True], [True, True, True, True, True]])
  np.testing.assert_array_equal(common.canvas_positions(valid), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
  np.testing.assert_array_equal(
      common.canvas_positions(valid, pad_position=1), [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
  )
  np.testing.assert_array_equal(
      common.canvas_positions(valid, padding_blind=True), [[0, 1, 2, 3, 4]] * 2
  )
