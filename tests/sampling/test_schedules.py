"""Step-size and EOSER γ schedules at the worked examples of docs/methods.md §CJ-GRPO, EOSER and ASS."""

import numpy as np
import pytest

from jdiff.sampling import schedules


def test_uniform_plan_llada():
  # 16 tokens, 2 blocks of 8, 6 steps -> 3 steps per block: 8 = 3 + 3 + 2 (remainder first).
  plan = schedules.step_plan("uniform", 16, 2, 6)
  np.testing.assert_array_equal(plan.counts, [3, 3, 2, 3, 3, 2])
  np.testing.assert_array_equal(plan.block_start, [0, 0, 0, 8, 8, 8])
  np.testing.assert_array_equal(plan.block_end, [8, 8, 8, 16, 16, 16])
  np.testing.assert_array_equal(plan.first_in_block, [1, 0, 0, 1, 0, 0])
  assert plan.blocks == [(0, 8), (8, 16)]
  # d1 training rollouts: L=256, block 32, T=128 -> 2 tokens per step everywhere.
  plan = schedules.uniform_plan(256, 8, 128)
  assert plan.num_steps == 128 and set(plan.counts.tolist()) == {2}
  # More steps than tokens: the surplus steps commit nothing (as LLaDA does).
  np.testing.assert_array_equal(schedules.uniform_plan(4, 1, 6).counts, [1, 1, 1, 1, 0, 0])
  with pytest.raises(ValueError, match="steps"):
    schedules.uniform_plan(16, 2, 5)


def test_ass_step_sizes_single_block():
  # Spec §3.2: n_s = 2^s for s < S-1, n_{S-1} = L - 2^{S-1} + 1.
  np.testing.assert_array_equal(schedules.ass_step_sizes(256), [1, 2, 4, 8, 16, 32, 64, 129])
  np.testing.assert_array_equal(schedules.ass_step_sizes(128), [1, 2, 4, 8, 16, 32, 65])
  # Not a power of two: L = 100, S = 6, r = 36: last = 2^5 + 1 + 36 = 69.
  np.testing.assert_array_equal(schedules.ass_step_sizes(100), [1, 2, 4, 8, 16, 69])
  plan = schedules.ass_plan(128, 1, 7)
  assert plan.blocks == [(0, 128)]
  assert plan.counts.sum() == 128 and np.all(plan.block_end == 128)


def test_ass_multi_block_worked_example():
  # Spec §3.2: L=128, B=4 -> blocks 15 (steps 0-3), 16 (step 4), 32 (step 5), 65 (step 6).
  sizes = schedules.ass_block_sizes(128, 4)
  assert sizes == [(15, [0, 1, 2, 3]), (16, [4]), (32, [5]), (65, [6])]
  plan = schedules.ass_plan(128, 4, 7)
  np.testing.assert_array_equal(plan.counts, [1, 2, 4, 8, 16, 32, 65])
  np.testing.assert_array_equal(plan.block_start, [0, 0, 0, 0, 15, 31, 63])
  np.testing.assert_array_equal(plan.block_end, [15, 15, 15, 15, 31, 63, 128])
  assert plan.blocks == [(0, 15), (15, 31), (31, 63), (63, 128)]
  # L=256 with 2 blocks: last block 2^7 + 1 = 129 at step 7, first 127 = 2^7 - 1 in steps 0-6.
  assert schedules.ass_block_sizes(256, 2) == [(127, list(range(7))), (129, [7])]
  # L=100 (r=36) with 3 blocks: 15 (steps 0-3), 16 (step 4), 32 + 1 + 36 = 69 (step 5).
  assert schedules.ass_block_sizes(100, 3) == [(15, [0, 1, 2, 3]), (16, [4]), (69, [5])]
  # As many blocks as steps: one step per block, the first block is a single token.
  assert [s for s, _ in schedules.ass_block_sizes(16, 4)] == [1, 2, 4, 9]


def test_ass_errors():
  with pytest.raises(ValueError, match="steps=6"):
    schedules.ass_plan(128, 1, 6)
  with pytest.raises(ValueError, match="blocks"):
    schedules.ass_plan(128, 8, 7)


def test_eoser_linear_gamma():
  # Spec §3.1: γ(s) = γmin + (γmax - γmin) s / (S - 1); reference defaults 0.4 -> 1.0.
  g = schedules.gamma_schedule("linear", 64, 0.4, 1.0)
  assert g.shape == (64,)
  assert g[0] == pytest.approx(0.4) and g[-1] == pytest.approx(1.0)
  assert g[21] == pytest.approx(0.4 + 0.6 * 21 / 63)
  # With the training yaml's γmin = 0.01 over 8 steps: γ(3) = 0.01 + 0.99 * 3/7.
  assert schedules.linear_gamma(8, 0.01, 1.0)[3] == pytest.approx(0.01 + 0.99 * 3 / 7)
  np.testing.assert_allclose(schedules.linear_gamma(1, 0.4, 1.0), [1.0])  # S <= 1 -> γmax


def test_eoser_ass_gamma():
  # Spec §3.1: γ(s) = γmin + (γmax - γmin)(2^{s+1} - 1)/2^S; S = 7: γ(0) ≈ 0.0177, γ(6) ≈ 0.992.
  g = schedules.gamma_schedule("ass", 7, 0.01, 1.0)
  assert g[0] == pytest.approx(0.01 + 0.99 * 1 / 128)  # 0.017734375
  assert g[6] == pytest.approx(0.01 + 0.99 * 127 / 128)  # 0.992265625
  assert g[3] == pytest.approx(0.01 + 0.99 * 15 / 128)
  assert round(float(g[0]), 4) == 0.0177 and round(float(g[6]), 3) == 0.992
  assert np.all(np.diff(g) > 0)


def test_registries():
  assert set(schedules.STEP_SCHEDULES) == {"uniform", "ass"}
  assert set(schedules.GAMMA_SCHEDULES) == {"linear", "ass"}
  with pytest.raises(ValueError, match="unknown step schedule"):
    schedules.step_plan("cosine", 16, 1, 4)
  with pytest.raises(ValueError, match="unknown EOSER gamma"):
    schedules.gamma_schedule("cubic", 4, 0.1, 1.0)
