"""The FLOP counts behind benchmarks/sampler.py's GFLOP/s and ``work`` columns, against a
count written out here from the architecture (a per-token tally of every matmul)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
sampler_bench = pytest.importorskip("sampler")  # the benchmark module (imports torch too)

from jdiff.models.config import ModelConfig  # noqa: E402

D, F, H, KV, HD, V, LAYERS = 64, 96, 4, 2, 16, 160, 2
P, G, BLOCK = 30, 96, 32
N = P + G
CFG = ModelConfig(
    family="llada",
    vocab_size=V,
    hidden_size=D,
    intermediate_size=F,
    num_layers=LAYERS,
    num_heads=H,
    num_kv_heads=KV,
    head_dim=HD,
    rope_theta=1e4,
    rms_norm_eps=1e-5,
)


def _query_token(keys):
  """One query token through one layer: projections, attention over ``keys``, MLP."""
  return 2 * (D * H * HD + 2 * D * KV * HD + H * HD * D + 3 * D * F) + 4 * H * HD * keys


KV_ONLY = 2 * 2 * D * KV * HD  # a token whose keys/values alone are computed
HEAD = 2 * D * V
# ModelConfig.flops_per_token also counts the norm weights as multiply-adds (0.3% here); a
# wrong step, suffix or layer count is off by several percent.
RTOL = 1e-2


def _pass(queries, keys, window):
  """A forward of ``queries`` tokens over ``keys``: every layer but the last on all of them,
  the last on the ``window`` tokens (keys/values still for all), the head on the window."""
  return (
      (LAYERS - 1) * queries * _query_token(keys)
      + window * _query_token(keys)
      + (queries - window) * KV_ONLY
      + window * HEAD
  )


def test_exact_step_flops_match_the_tally():
  got = sampler_bench.llada_flops(CFG, 3, N, 5, last_layer_window=True)
  np.testing.assert_allclose(got, 3 * 5 * _pass(N, N, BLOCK), rtol=RTOL)
  full = sampler_bench.llada_flops(CFG, 1, N, 1)  # the reference: every layer on the canvas
  np.testing.assert_allclose(full, N * LAYERS * _query_token(N) + BLOCK * HEAD, rtol=RTOL)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_fast_flops_count_each_rows_steps_per_block(mode):
  # Row 0 takes 32, 5, 1 steps in its three blocks, row 1 takes 2, 3, 4.
  steps = [[32, 5, 1], [2, 3, 4]]
  step_map = np.zeros((2, G), np.int32)
  for r, per_block in enumerate(steps):
    t = 0
    for k, n in enumerate(per_block):
      step_map[r, k * BLOCK : (k + 1) * BLOCK] = t + 1 + np.arange(BLOCK) % n
      t += n
  want = 0.0
  for per_block in steps:
    for k, n in enumerate(per_block):
      suffix = G - k * BLOCK if mode == "prefix" else BLOCK
      want += _pass(N, N, BLOCK) + (n - 1) * _pass(suffix, N, BLOCK)
  got = sampler_bench.fast_flops(CFG, mode, step_map, P)
  np.testing.assert_allclose(got, want, rtol=RTOL)
