"""dTRPO's per-block estimators, checked EXACTLY by enumeration on tiny blocks: every decoding
order (random-order decoding on the step grid) and every step t, with a synthetic
context-dependent log-ratio δ(j | visible tokens) so no model is needed. The reference is the
trajectory log-ratio sum Σ_t Σ_{j unmasked at t} δ(j | state before t), written out here."""

import itertools

import numpy as np
import pytest

from jdiff.rl import dtrpo_draws as dd

RNG = np.random.default_rng(0)
A, C = RNG.normal(size=8), RNG.normal(size=(8, 8))


def delta(j, visible):
  """A log-ratio that depends on which other tokens are visible (nonlinearly)."""
  return A[j] + np.tanh(C[j, : len(visible)] @ visible.astype(float)) * (1.0 + 0.5 * j)


def trajectory_sum(steps):
  """Σ_t Σ_{j: steps_j = t} δ(j | tokens with steps < t visible)."""
  return sum(delta(j, steps < steps[j]) for j in range(len(steps)))


def orders(n):
  """Every permutation as the uniforms that :func:`dd.random_order_steps` sorts."""
  for perm in itertools.permutations(range(n)):
    u = np.empty(n)
    u[list(perm)] = (np.arange(n) + 0.5) / n
    yield u


def expected_estimate(n, grid, estimator, block_weight="inverse_t", order_grid=None):
  """E over (order, t) of the estimate, decoding on ``order_grid`` (default ``grid``) and the
  estimator drawing on ``grid``; also returns E[trajectory sum] under ``order_grid``."""
  order_grid = grid if order_grid is None else order_grid
  est, exact, count = 0.0, 0.0, 0
  for u in orders(n):
    true_steps = dd.random_order_steps(u, order_grid)
    exact += trajectory_sum(true_steps)
    num_t = len(dd.grid_schedule(n, grid))
    for t in range(1, num_t + 1):
      masked, weight, steps = dd.draw_block(u, (t - 0.5) / num_t, grid, estimator, block_weight)
      np.testing.assert_array_equal(masked, steps >= t)  # the state right before step t
      est += sum(weight[j] * delta(j, ~masked) for j in range(n) if weight[j] > 0) / num_t
    count += 1
  return est / count, exact / count


def test_grid_schedule():
  np.testing.assert_array_equal(dd.grid_schedule(4, 2), [2, 2])
  np.testing.assert_array_equal(dd.grid_schedule(5, 2), [3, 2])
  np.testing.assert_array_equal(dd.grid_schedule(5, 3), [2, 2, 1])
  np.testing.assert_array_equal(dd.grid_schedule(3, 0), [1, 1, 1])
  np.testing.assert_array_equal(dd.grid_schedule(2, 4), [1, 1])  # short block: n steps
  u = np.array([0.9, 0.1, 0.5, 0.3, 0.7])
  np.testing.assert_array_equal(dd.random_order_steps(u, 2), [2, 1, 1, 1, 2])


@pytest.mark.parametrize("n,grid", [(4, 0), (4, 4), (4, 2), (4, 3), (5, 2), (6, 3)])
@pytest.mark.parametrize("estimator", ["remasked", "newly_unmasked"])
def test_unbiased_on_the_grid(n, grid, estimator):
  est, exact = expected_estimate(n, grid, estimator)
  np.testing.assert_allclose(est, exact, rtol=1e-6)


@pytest.mark.parametrize("n,grid", [(4, 0), (4, 2)])
def test_unweighted_ablation_is_biased(n, grid):
  est, exact = expected_estimate(n, grid, "remasked", block_weight="one")
  assert abs(est - exact) > 0.1 * abs(exact)


def test_off_grid_draws_are_biased():
  """One token per step (continuous t) while decoding 2 tokens per step: the re-masked states
  are not the ones decoding visits, and the 1/t-weighted estimate misses the sum."""
  est, exact = expected_estimate(4, 0, "remasked", order_grid=2)
  assert abs(est - exact) > 1e-3 * abs(exact)
  on_grid, _ = expected_estimate(4, 2, "remasked")
  np.testing.assert_allclose(on_grid, exact, rtol=1e-6)


@pytest.mark.parametrize("recorded", [[7, 5, 5, 9], [3, 3, 3, 4, 2, 12], [1, 2, 3]])
def test_newly_unmasked_exact_for_a_recorded_order(recorded):
  """Any fixed order (e.g. the sampler's confidence order, uneven steps, global step
  numbers): E_t[T_B Σ_{I_t} δ] is that trajectory's sum, not just its mean over orders."""
  recorded = np.array(recorded)
  dense = dd.dense_steps(recorded)
  num_t = int(dense.max())
  est = 0.0
  for t in range(1, num_t + 1):
    masked, weight, steps = dd.draw_block(
        np.zeros(len(recorded)), (t - 0.5) / num_t, 0, "newly_unmasked", recorded=recorded
    )
    np.testing.assert_array_equal(steps, dense)
    np.testing.assert_array_equal(masked, dense >= t)
    np.testing.assert_array_equal(weight > 0, dense == t)
    est += sum(weight[j] * delta(j, ~masked) for j in range(len(recorded)) if weight[j]) / num_t
  np.testing.assert_allclose(est, trajectory_sum(dense), rtol=1e-6)


def test_incomplete_recorded_order_falls_back_to_the_grid():
  u = np.array([0.4, 0.3, 0.2, 0.1])
  _, _, steps = dd.draw_block(u, 0.0, 2, "newly_unmasked", recorded=np.array([3, 0, 4, 4]))
  np.testing.assert_array_equal(steps, [2, 2, 1, 1])


def test_time_uniform_maps_to_every_step():
  u = np.linspace(0, 1, 6)
  ts = set()
  for v in np.linspace(0, 1, 61)[:-1].tolist() + [np.nextafter(1.0, 0)]:
    masked, _, steps = dd.draw_block(u, v, 3, "newly_unmasked")
    ts.add(int(steps[masked].min()))
  assert ts == {1, 2, 3}
