"""Shared sampling pieces against plain-Python references."""

import numpy as np
import pytest

from jdiff.sampling import common


def _top_n_reference(conf, eligible, n):
  out = np.zeros(conf.shape, bool)
  for r in range(conf.shape[0]):
    cols = [j for j in range(conf.shape[1]) if eligible[r, j]]
    cols.sort(key=lambda j: (-conf[r, j], j))  # most confident first, ties -> leftmost
    out[r, cols[:n[r]]] = True
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
