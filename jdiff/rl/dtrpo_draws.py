"""dTRPO's per-block draws: a decoding order on the step grid, the sampled step t_b, and which
tokens are masked, scored and how they are weighted (pure numpy, no model).

A block of ``n`` response tokens decoded in ``T`` steps is described by ``steps`` ``[n]``: the
1-based step (1..T) at which each token was unmasked. The state right before step t shows the
tokens with ``steps < t`` and masks those with ``steps >= t``; step t unmasks
``I_t = {j : steps_j == t}``. The trajectory log-ratio of the block is
``S = Σ_t Σ_{j ∈ I_t} δ(j | state before t)`` (δ = log π_θ − log π_ref). With t ~ U{1..T}:

- ``newly_unmasked`` (the paper's estimator): score I_t, weight T. ``E_t[T Σ_{I_t} δ] = S``
  exactly, for ANY order (the sampler's recorded one or a random one).
- ``remasked`` (score every masked token), weight ``T k_t / m_t`` (k_t = |I_t|,
  m_t = #masked; ``n / m_t`` on an even grid, the ELBO's 1/t): under random-order decoding I_t
  is a uniform k_t-subset of the m_t masked tokens given the state, so
  ``E[Σ_{I_t} δ | state] = (k_t / m_t) Σ_{masked} δ`` and the estimator has the same
  expectation as the newly-unmasked one, i.e. the expected trajectory sum. Scoring all m_t
  masked tokens instead of k_t lowers its variance. Weight 1 (``block_weight="one"``) is a
  biased ablation: it estimates ``Σ_t (m_t / (T k_t)) E[Σ_{I_t} δ]``, about half of S.

The grid: ``T`` steps (``steps_per_block``, capped at n; 0 means n, one token per step) with
LLaDA's / SDAR's static schedule: ``n // T`` tokens per step, the first ``n % T`` steps one
more.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

ESTIMATORS = ("remasked", "newly_unmasked")
BLOCK_WEIGHTS = ("inverse_t", "one")


def grid_schedule(n: int, steps: int) -> np.ndarray:
  """Tokens unmasked at each step ``[T]`` for ``n`` tokens in ``steps`` (0: n) steps."""
  t = n if steps <= 0 else min(int(steps), n)
  return np.array([n // t + (i < n % t) for i in range(t)], np.int64)


def random_order_steps(u: np.ndarray, steps: int) -> np.ndarray:
  """Random-order decoding on the grid: the tokens sorted by ``u`` (uniforms ``[n]``) are
  unmasked in that order, ``grid_schedule(n, steps)`` per step; returns steps ``[n]``."""
  n = len(u)
  step_of_rank = np.repeat(np.arange(1, len(grid_schedule(n, steps)) + 1), grid_schedule(n, steps))
  out = np.empty(n, np.int64)
  out[np.argsort(u, kind="stable")] = step_of_rank
  return out


def dense_steps(recorded: np.ndarray) -> np.ndarray:
  """A recorded step map (global step numbers, any positive ints) -> 1..T_B in order."""
  _, inv = np.unique(recorded, return_inverse=True)
  return inv.reshape(-1) + 1


def step_terms(
    steps: np.ndarray, t: int, estimator: str, block_weight: str = "inverse_t"
) -> Tuple[np.ndarray, np.ndarray]:
  """For the state right before step ``t``: (masked ``[n]`` bool, weight ``[n]`` float32);
  weight > 0 marks the scored tokens."""
  num_steps = int(steps.max())
  masked = steps >= t
  new = steps == t
  if estimator == "newly_unmasked":
    return masked, np.where(new, float(num_steps), 0.0).astype(np.float32)
  if block_weight == "one":
    return masked, masked.astype(np.float32)
  w = num_steps * new.sum() / masked.sum()
  return masked, np.where(masked, w, 0.0).astype(np.float32)


def draw_block(
    u_order: np.ndarray,
    v_time: float,
    steps_per_block: int,
    estimator: str,
    block_weight: str = "inverse_t",
    recorded: Optional[np.ndarray] = None,
):
  """One block's draw: the order (``recorded`` when given and complete, else random from
  ``u_order`` on the grid), ``t = 1 + floor(v_time · T_B)``; returns
  ``(masked, weight, steps)``."""
  if recorded is not None and np.all(recorded > 0):
    steps = dense_steps(recorded)
  else:
    steps = random_order_steps(u_order, steps_per_block)
  t = 1 + min(int(v_time * steps.max()), int(steps.max()) - 1)
  masked, weight = step_terms(steps, t, estimator, block_weight)
  return masked, weight, steps
