"""TraceRL's training rows: a decoding trajectory -> the states the sampler saw.

Block models (docs/methods.md §TraceRL block rows, with the absolute-block decision of docs/design.md):
each row is ``[prompt (P) | clean response (G) | noisy window (B + G)]``. The noisy window
repeats the last B prompt slots and the response; only the prompt-tail tokens that share a
block with the first response tokens are valid there (they are in-block context at
inference), and they are never masked. Every block is processed in parallel: round r masks,
in each block, the tokens decoded at or after that block's r-th (shrunk) step group and
supervises that group. A response therefore gives exactly ``ceil(B / s)`` rows (empty
rounds carry no loss), which keeps shapes static.

Full-attention models (§6): row v is ``[prompt | response]`` with every token decoded at or
after the v-th step group masked; the group is supervised. ``ceil(max_steps / s)`` rows.

Both builders return numpy dicts with the same keys; the attention mask is built on device
from ``blocks``/``noisy``/``valid`` (block models) or ``valid`` (full attention).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np


def _groups(steps: np.ndarray, shrink: int):
  """Distinct positive step ids in ascending order, cut into consecutive groups of ``shrink``.

  Returns a list of (first_id, last_id) per group. "Aggregate s neighbouring steps": the
  group is predicted from the state just before its first step (§5.2).
  """
  ids = np.unique(steps[steps > 0])
  return [
      (int(ids[i]), int(ids[min(i + shrink, len(ids)) - 1])) for i in range(0, len(ids), shrink)
  ]


def _response_advantages(advantages, b: int, g: int):
  """Response b's advantage over its G tokens: a scalar broadcast, or its per-token row."""
  if advantages is None:
    return None
  return np.broadcast_to(np.asarray(advantages, np.float32)[b], (g,))


def _as_np(x):
  return None if x is None else np.asarray(x)


def _trained(toks: np.ndarray, kept: np.ndarray, pad_id: int, post_num: Optional[int]):
  """The positions that may be supervised: ``kept`` (up to and including the stop) minus the
  pad tokens beyond the first ``post_num`` (docs/methods.md §TraceRL block rows, step 6). With
  pad == EOS and ``post_num=0`` the stop token is context only, never trained. None: every
  kept position."""
  if post_num is None:
    return kept
  pads = kept & (toks == pad_id)
  return kept & ~(pads & (np.cumsum(pads) > post_num))


def _l1(lengths: np.ndarray, g: int, l1: str) -> float:
  """The block rows' normaliser: the canvas width ``G`` (the sampler's gen_length) or, as the
  reference pads responses to the step's longest one, the longest response capped at ``G``."""
  if l1 == "gen_length":
    return float(g)
  if l1 == "longest":
    return float(max(1, min(g, int(lengths.max()) if lengths.size else 1)))
  raise ValueError(f"l1={l1!r}; expected 'gen_length' or 'longest'")


def _trajectory_arrays(traj):
  tokens = _as_np(traj.raw_tokens if traj.raw_tokens is not None else traj.tokens)
  steps = _as_np(traj.raw_step_map if traj.raw_step_map is not None else traj.step_map)
  return (
      np.asarray(traj.prompt_ids),
      np.asarray(traj.prompt_mask, bool),
      tokens,
      steps.astype(np.int32),
      np.asarray(traj.lengths, np.int32),
  )


def build_block_rows(
    traj,
    *,
    block_size: int,
    mask_id: int,
    pad_id: int,
    shrink: int = 1,
    advantages: Optional[np.ndarray] = None,
    post_num: Optional[int] = None,
    l1: str = "gen_length",
) -> Dict[str, np.ndarray]:
  """Rows for block models. ``advantages``: ``[B]`` per response (scalar) or ``[B, G]``.

  ``post_num``: pads supervised per response (see :func:`_trained`); ``l1``: the ``row_norm``
  of every row, "gen_length" (the canvas width) or "longest" (see :func:`_l1`)."""
  if shrink < 1:
    raise ValueError(f"shrink must be >= 1, got {shrink}")
  pids, pmask, toks, steps, lengths = _trajectory_arrays(traj)
  nb, p = pids.shape
  g = toks.shape[1]
  blk = block_size
  if p < blk:  # the noisy window reaches B slots back into the prompt
    extra = blk - p
    pids = np.concatenate([np.full((nb, extra), pad_id, pids.dtype), pids], 1)
    pmask = np.concatenate([np.zeros((nb, extra), bool), pmask], 1)
    p = blk
  rounds = math.ceil(blk / shrink)
  n = p + g + blk + g
  rows = nb * rounds
  out = dict(
      input_ids=np.full((rows, n), pad_id, np.int32),
      positions=np.zeros((rows, n), np.int32),
      noisy=np.zeros((rows, n), bool),
      valid=np.zeros((rows, n), bool),
      targets=np.full((rows, n), pad_id, np.int32),
      loss_mask=np.zeros((rows, n), bool),
      step_ids=np.zeros((rows, n), np.int32),
      advantages=np.zeros((rows, n), np.float32),
      response_index=np.repeat(np.arange(nb, dtype=np.int32), rounds),
      row_norm=np.full((rows,), _l1(lengths, g, l1), np.float32),
  )
  noisy_start = p + g
  for b in range(nb):
    plen = int(pmask[b].sum())
    ppos = np.maximum(np.cumsum(pmask[b]) - 1, 0)
    rpos = plen + np.arange(g)
    decoded = steps[b] > 0
    kept = np.arange(g) < lengths[b]
    trained = _trained(toks[b], kept, pad_id, post_num)
    tail_start = (plen // blk) * blk
    # Shared by every round: the clean prompt and response, the prompt-tail window slots.
    base_ids = np.concatenate([pids[b], toks[b], pids[b, p - blk :], toks[b]])
    base_pos = np.concatenate([ppos, rpos, ppos[p - blk :], rpos])
    tail_valid = pmask[b, p - blk :] & (ppos[p - blk :] >= tail_start)
    base_valid = np.concatenate([pmask[b], kept & decoded, tail_valid, decoded])
    resp_blocks = rpos // blk
    groups = {
        k: _groups(np.where(resp_blocks == k, steps[b], 0), shrink)
        for k in np.unique(resp_blocks[decoded])
    }
    adv = _response_advantages(advantages, b, g)
    for r in range(rounds):
      row = b * rounds + r
      masked = np.zeros(g, bool)
      supervised = np.zeros(g, bool)
      step_ids = np.zeros(g, np.int32)
      for k, gs in groups.items():
        in_k = (resp_blocks == k) & decoded
        if r < len(gs):
          first, last = gs[r]
          masked |= in_k & (steps[b] >= first)
          supervised |= in_k & (steps[b] >= first) & (steps[b] <= last)
          step_ids = np.where(in_k & (steps[b] >= first) & (steps[b] <= last), last, step_ids)
      ids = base_ids.copy()
      ids[noisy_start + blk :] = np.where(masked, mask_id, toks[b])
      out["input_ids"][row] = ids
      out["positions"][row] = base_pos
      out["noisy"][row, noisy_start:] = True
      out["valid"][row] = base_valid
      out["targets"][row, noisy_start + blk :] = toks[b]
      out["loss_mask"][row, noisy_start + blk :] = supervised & trained
      out["step_ids"][row, noisy_start + blk :] = step_ids
      if adv is not None:
        out["advantages"][row, noisy_start + blk :] = adv
  out["blocks"] = out["positions"] // blk
  return out


def build_full_attention_rows(
    traj,
    *,
    mask_id: int,
    pad_id: int,
    shrink: int = 8,
    max_steps: Optional[int] = None,
    advantages: Optional[np.ndarray] = None,
    post_num: Optional[int] = None,
) -> Dict[str, np.ndarray]:
  """Rows for full-attention models (Dream, LLaDA): one per group of ``shrink`` steps;
  ``post_num`` as in :func:`build_block_rows`."""
  if shrink < 1:
    raise ValueError(f"shrink must be >= 1, got {shrink}")
  pids, pmask, toks, steps, lengths = _trajectory_arrays(traj)
  nb, p = pids.shape
  g = toks.shape[1]
  if max_steps is None:
    max_steps = int(steps.max()) if steps.size else 1
  per = max(1, math.ceil(max_steps / shrink))
  rows, n = nb * per, p + g
  out = dict(
      input_ids=np.full((rows, n), pad_id, np.int32),
      positions=np.zeros((rows, n), np.int32),
      valid=np.zeros((rows, n), bool),
      targets=np.full((rows, n), pad_id, np.int32),
      loss_mask=np.zeros((rows, n), bool),
      step_ids=np.zeros((rows, n), np.int32),
      advantages=np.zeros((rows, n), np.float32),
      response_index=np.repeat(np.arange(nb, dtype=np.int32), per),
  )
  for b in range(nb):
    plen = int(pmask[b].sum())
    ppos = np.maximum(np.cumsum(pmask[b]) - 1, 0)
    kept = _trained(toks[b], np.arange(g) < lengths[b], pad_id, post_num)
    gs = _groups(steps[b], shrink)
    if len(gs) > per:
      raise ValueError(f"response {b} has {len(gs)} step groups, more than max_steps/shrink={per}")
    adv = _response_advantages(advantages, b, g)
    for v in range(per):
      row = b * per + v
      out["positions"][row] = np.concatenate([ppos, plen + np.arange(g)])
      out["valid"][row] = np.concatenate([pmask[b], np.ones(g, bool)])
      out["targets"][row, p:] = toks[b]
      if v >= len(gs):
        out["input_ids"][row] = np.concatenate([pids[b], toks[b]])
        continue
      first, last = gs[v]
      masked = (steps[b] >= first) | (steps[b] == 0)
      sup = (steps[b] >= first) & (steps[b] <= last) & kept
      out["input_ids"][row] = np.concatenate([pids[b], np.where(masked, mask_id, toks[b])])
      out["loss_mask"][row, p:] = sup
      out["step_ids"][row, p:] = np.where(sup, last, 0)
      if adv is not None:
        out["advantages"][row, p:] = adv
  return out
