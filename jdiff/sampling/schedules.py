"""Step-size schedules (how many tokens each step commits, in which block) and EOSER γ schedules.

Everything here is host-side numpy and static: a sampler turns a schedule into constant
arrays indexed by the loop counter, so the schedule never causes a recompile per step.
References are to ``docs/methods.md``.

A *step plan* lists, for every global step ``s`` of a rollout, the completion-relative
block ``[block_start[s], block_end[s])`` whose masked positions are eligible and the number
of tokens ``counts[s]`` committed at that step.

Two step schedules (registry :data:`STEP_SCHEDULES`):
- ``uniform`` (§1, LLaDA's semi-AR decoding): equal blocks of ``gen_length / num_blocks``
  tokens, ``steps / num_blocks`` steps per block, each block's masks split evenly with the
  remainder on the early steps.
- ``ass`` (§3.2, Ascending Step-Size): step ``s`` commits ``2^s`` tokens, ``S = ⌊log₂ L⌋``
  steps, the last step also takes the remainder; with several blocks the blocks are built
  from the right so each block is exactly consumed by its steps.

Two EOSER γ schedules (registry :data:`GAMMA_SCHEDULES`, §3.1): ``linear`` and ``ass``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Tuple

import numpy as np

from jdiff.sampling.common import transfer_schedule


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """Per-step block bounds and commit counts of a whole rollout (all arrays ``[S]``)."""

  counts: np.ndarray  # int32: tokens committed at step s
  block_start: np.ndarray  # int32: completion-relative start of the eligible block
  block_end: np.ndarray  # int32: its end (exclusive)
  first_in_block: np.ndarray  # bool: step s is the first step of its block

  @property
  def num_steps(self) -> int:
    return int(self.counts.shape[0])

  @property
  def blocks(self) -> List[Tuple[int, int]]:
    """The distinct blocks ``(start, end)`` in decoding order."""
    out = []
    for s in range(self.num_steps):
      if self.first_in_block[s]:
        out.append((int(self.block_start[s]), int(self.block_end[s])))
    return out

  @property
  def max_block_size(self) -> int:
    return int(np.max(self.block_end - self.block_start))


def _plan(blocks: List[Tuple[int, int, np.ndarray]]) -> StepPlan:
  """Builds a plan from ``(start, end, per-step counts)`` per block."""
  counts, starts, ends, first = [], [], [], []
  for start, end, block_counts in blocks:
    if int(np.sum(block_counts)) != end - start:
      raise AssertionError(f"block [{start}, {end}) gets {int(np.sum(block_counts))} tokens")
    for i, n in enumerate(block_counts):
      counts.append(int(n))
      starts.append(start)
      ends.append(end)
      first.append(i == 0)
  return StepPlan(
      np.asarray(counts, np.int32),
      np.asarray(starts, np.int32),
      np.asarray(ends, np.int32),
      np.asarray(first, bool),
  )


# ----------------------------------------------------------------------------- uniform


def uniform_plan(gen_length: int, num_blocks: int, steps: int) -> StepPlan:
  """LLaDA's semi-autoregressive schedule (spec §1.1–2a).

  The completion is cut into ``num_blocks`` equal blocks decoded left to right, each in
  ``k = steps / num_blocks`` steps; a block's ``m`` masks are split as ``⌊m/k⌋`` per step with
  the first ``m mod k`` steps getting one more (:func:`common.transfer_schedule`). Steps may
  exceed the block length; the surplus steps then commit nothing, as in LLaDA.
  """
  if num_blocks <= 0 or gen_length % num_blocks:
    raise ValueError(f"gen_length={gen_length} is not divisible into {num_blocks} blocks")
  if steps <= 0 or steps % num_blocks:
    raise ValueError(f"steps={steps} is not divisible by the number of blocks {num_blocks}")
  size, per_block = gen_length // num_blocks, steps // num_blocks
  return _plan(
      [(b * size, (b + 1) * size, transfer_schedule(size, per_block)) for b in range(num_blocks)]
  )


# ----------------------------------------------------------------------------- ASS


def ass_num_steps(gen_length: int) -> int:
  """``S = ⌊log₂ L⌋``: the only step count ASS accepts (spec §3.2)."""
  if gen_length < 2:
    raise ValueError(f"ASS needs gen_length >= 2, got {gen_length}")
  return int(math.floor(math.log2(gen_length)))


def ass_step_sizes(gen_length: int) -> np.ndarray:
  """Tokens per step under ASS (spec §3.2, one block).

  ``n_s = 2^s`` for ``s < S−1`` and ``n_{S−1} = L − 2^{S−1} + 1`` (= ``2^{S−1} + 1 + r`` with
  ``r = L − 2^S``), so the counts sum to L. L=256: 1,2,4,8,16,32,64,129; L=128: …,32,65.
  """
  s_total = ass_num_steps(gen_length)
  sizes = [2**s for s in range(s_total - 1)] + [gen_length - 2 ** (s_total - 1) + 1]
  return np.asarray(sizes, np.int32)


def ass_block_sizes(gen_length: int, num_blocks: int) -> List[Tuple[int, List[int]]]:
  """ASS combined with ``num_blocks`` semi-AR blocks (spec §3.2), built from the right.

  Returns ``[(block size, [steps decoding it]), ...]`` left to right:
  - the last block has ``2^{S−1} + 1 + r`` tokens and is decoded alone at step S−1;
  - the middle blocks, moving leftwards, have ``2^{S−2}, 2^{S−3}, …`` tokens, one step each
    (the step whose count matches);
  - the first block takes the remainder ``2^{c+1} − 1`` with ``c = S − num_blocks`` and is
    decoded at steps ``0..c``.
  Example L=128, 4 blocks: sizes 15 (steps 0–3), 16 (step 4), 32 (step 5), 65 (step 6).
  ``num_blocks = 1`` is the single-block layout. Needs ``num_blocks <= S``.
  """
  s_total = ass_num_steps(gen_length)
  if not 1 <= num_blocks <= s_total:
    raise ValueError(
        f"ASS with gen_length={gen_length} has {s_total} steps and supports "
        f"1..{s_total} blocks, got {num_blocks}"
    )
  sizes = ass_step_sizes(gen_length)
  c = s_total - num_blocks  # the first block uses steps 0..c
  blocks = [(int(np.sum(sizes[: c + 1])), list(range(c + 1)))]
  blocks += [(int(sizes[s]), [s]) for s in range(c + 1, s_total)]
  return blocks


def ass_plan(gen_length: int, num_blocks: int, steps: int) -> StepPlan:
  """Ascending step sizes (spec §3.2) in the single- or multi-block layout.

  ``steps`` must equal ``⌊log₂ gen_length⌋`` (the reference code asserts the same). Within a
  block a step commits ``2^s`` tokens (the last step ``2^{S−1}+1+r``); only the current block
  (earlier blocks being complete) is eligible.
  """
  s_total = ass_num_steps(gen_length)
  if steps != s_total:
    raise ValueError(
        f"steps={steps}: the ASS schedule needs steps = floor(log2(gen_length)) = "
        f"{s_total} for gen_length={gen_length}"
    )
  sizes = ass_step_sizes(gen_length)
  blocks, start = [], 0
  for size, block_steps in ass_block_sizes(gen_length, num_blocks):
    blocks.append((start, start + size, sizes[block_steps]))
    start += size
  return _plan(blocks)


StepScheduleFn = Callable[[int, int, int], StepPlan]
STEP_SCHEDULES: Dict[str, StepScheduleFn] = {"uniform": uniform_plan, "ass": ass_plan}


def step_plan(name: str, gen_length: int, num_blocks: int, steps: int) -> StepPlan:
  """The plan of the step schedule registered as ``name``."""
  if name not in STEP_SCHEDULES:
    raise ValueError(f"unknown step schedule {name!r}; available: {sorted(STEP_SCHEDULES)}")
  return STEP_SCHEDULES[name](gen_length, num_blocks, steps)


# ----------------------------------------------------------------------------- EOSER γ


def linear_gamma(num_steps: int, gamma_min: float, gamma_max: float) -> np.ndarray:
  """EOSER's linear γ (spec §3.1): ``γ(s) = γ_min + (γ_max − γ_min)·s/(S−1)``, s in [0, S−1].

  ``S <= 1`` gives γ_max. The reference pairs it with uniform step sizes and γ_min = 0.4;
  at the first step EOS confidence is scaled by γ_min, at the last step it is unchanged.
  """
  if num_steps <= 1:
    return np.full((max(num_steps, 1),), gamma_max, np.float32)
  s = np.arange(num_steps, dtype=np.float64)
  return (gamma_min + (gamma_max - gamma_min) * s / (num_steps - 1)).astype(np.float32)


def ass_gamma(num_steps: int, gamma_min: float, gamma_max: float) -> np.ndarray:
  """EOSER's γ coupled with ASS (spec §3.1): ``γ(s) = γ_min + (γ_max − γ_min)·(2^{s+1} − 1)/2^S``.

  ``(2^{s+1}−1)/2^S`` is the fraction of tokens decoded by the end of step s. With γ_min =
  0.01, γ_max = 1 and S = 7: γ(0) ≈ 0.0177, γ(6) ≈ 0.992.
  """
  s = np.arange(num_steps, dtype=np.float64)
  frac = (2.0 ** (s + 1) - 1.0) / 2.0**num_steps
  return (gamma_min + (gamma_max - gamma_min) * frac).astype(np.float32)


GammaScheduleFn = Callable[[int, float, float], np.ndarray]
GAMMA_SCHEDULES: Dict[str, GammaScheduleFn] = {"linear": linear_gamma, "ass": ass_gamma}


def gamma_schedule(name: str, num_steps: int, gamma_min: float, gamma_max: float) -> np.ndarray:
  """γ per global step ``[num_steps]`` float32 of the EOSER schedule registered as ``name``."""
  if name not in GAMMA_SCHEDULES:
    raise ValueError(f"unknown EOSER gamma schedule {name!r}; available: {sorted(GAMMA_SCHEDULES)}")
  return GAMMA_SCHEDULES[name](num_steps, gamma_min, gamma_max)
